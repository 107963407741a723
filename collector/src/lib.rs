//! kube-lockdown collector: stores the fleet's events (SQLite by default) and serves them to
//! readers.

pub mod store;
