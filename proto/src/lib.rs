//! The `lockdown.v1` gRPC API: generated messages, clients and servers, and the file
//! descriptor set for server reflection.

#![allow(missing_docs, clippy::all, clippy::pedantic)] // generated code

/// `lockdown.v1`.
pub mod v1 {
    tonic::include_proto!("lockdown.v1");

    /// The encoded file descriptor set of `lockdown.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("lockdown_v1_descriptor");
}
