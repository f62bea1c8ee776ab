//! Shared foundations of recsys: object storage, Arrow schemas, stable identifiers and time.
//!
//! Everything here is used by more than one step of the pipeline: the lake's layout and schemas
//! ([`schema`]), the [`Store`] every step reads and writes through (a folder or S3), track and
//! artist ids ([`ids`]), UTC time parsing ([`time`]), the SIMD kernels ALS and vector search
//! share ([`linalg`]). It must not depend on any other recsys crate, nor on an engine or a
//! server's client (DataFusion, Ballista, Kafka, MongoDB, Qdrant, burn): every crate depends on
//! it, so what it pulls in, everything builds.

pub mod encoding;
pub mod event_files;
pub mod foldin;
pub mod ids;
pub mod linalg;
pub mod manifest;
pub mod models;
pub mod reader;
pub mod schema;
pub mod store;
pub mod time;

pub use store::{S3Options, Store, StoreError};
