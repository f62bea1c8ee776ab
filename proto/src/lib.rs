//! Protocol buffers of every recsys gRPC service and the tonic code built from them.

pub mod v1 {
    tonic::include_proto!("recsys.v1");
}

/// Encoded file descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("recsys_descriptor");
