//! kube-lockdown agent library.
//!
//! The pure core ([`manifest`], [`rules`], [`baseline`], [`redact`]) takes values and returns
//! values; [`check`], [`integrity`], [`spool`], [`watch`] and [`daemon`] are the IO around it.
//! See DESIGN.md at the repository root for the whole picture.

pub mod baseline;
pub mod check;
pub mod config;
pub mod daemon;
pub mod event;
pub mod exercise;
pub mod fix;
pub mod integrity;
pub mod io;
pub mod kubeconfig;
pub mod live;
pub mod manifest;
pub mod metrics;
pub mod node;
pub mod redact;
pub mod report;
pub mod rules;
pub mod scan;
pub mod ship;
pub mod spool;
pub mod status;
pub mod tls;
pub mod watch;
