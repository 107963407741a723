//! kube-lockdown collector: stores the fleet's events (SQLite by default, PostgreSQL for
//! several replicas) and serves them to readers. Built with the event stream (issue 4).
