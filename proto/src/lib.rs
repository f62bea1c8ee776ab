//! Protocol buffers of every recsys gRPC service and the tonic code built from them.
//!
//! The wire contract between processes: ingest (`recsys.v1.IngestService`) and serving
//! (`recsys.v1.RecommendService`). It must not depend on any other recsys crate: every crate
//! that speaks gRPC depends on this one, never the other way round.

pub mod v1 {
    tonic::include_proto!("recsys.v1");
}

/// Encoded file descriptors of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("recsys_descriptor");
