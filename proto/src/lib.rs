//! lockdown.v1: the gRPC API between agents, the collector and readers.
//!
//! The event stream (issue 4) adds the .proto files here, compiled in build.rs with protox.
//! Until then this crate only reserves its place in the workspace.
