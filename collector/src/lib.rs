//! kube-lockdown collector: stores the fleet's events (SQLite by default, PostgreSQL for several
//! replicas) and serves them to
//! readers over gRPC (lockdown.v1), with mTLS.

pub mod ack;
pub mod admit;
pub mod certs;
pub mod client;
pub mod config;
pub mod de;
pub mod feed;
pub mod fnv;
pub mod metrics;
pub mod posture;
pub mod server;
pub mod sink;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
