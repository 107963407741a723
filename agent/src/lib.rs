//! kube-lockdown agent library.
//!
//! The pure core ([`manifest`], [`rules`]) takes values and returns values; [`check`] is the
//! thin IO layer around it. See DESIGN.md at the repository root for the whole picture.

pub mod check;
pub mod config;
pub mod manifest;
pub mod report;
pub mod rules;
