//! recsys batch jobs: DataFusion physical plans that run on a Ballista cluster (remote or
//! embedded), plus the one registry of functions and codecs every process installs.
//!
//! Clean, sort, the catalog ETL, ALS (prepare, iterate, evaluate, store) and the lyrics
//! embeddings ([`embed`]: shards in, vectors out) read and write the lake only; the [`registry`]
//! is what the client, `recsys-scheduler` and `recsys-executor` install so that a plan built on
//! one side decodes and runs on the other. Among our crates it depends only on `recsys-core`
//! and the model, `recsys-minilm`: it must not depend on the event log, the catalog, the vector
//! store, the lyrics step or serving (those are downstream of what the jobs write, and
//! executors should not link them).

pub mod als;
pub mod clean;
pub mod cluster;
pub mod codec;
mod dict_chunk;
pub mod embed;
pub mod etl;
mod intern;
pub mod lake;
mod parquet_file;
pub mod registry;
pub mod runs;
pub mod sort;
pub mod source;
pub mod tables;
pub mod udf;
pub mod worklist;
pub mod write;

pub use cluster::{Cluster, ProcessCluster};

/// Errors of a batch job. Every variant says what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("Ballista: {0}")]
    Ballista(#[from] ballista_core::error::BallistaError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error(transparent)]
    Store(#[from] recsys_core::StoreError),
    #[error("Arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("{0}")]
    Cluster(String),
    /// A Ballista job that failed on every attempt; `source` is the last attempt's error.
    #[error("a Ballista job failed on {scheduler} after {attempts} attempt(s): {source}")]
    Job {
        scheduler: String,
        attempts: usize,
        source: Box<JobError>,
    },
    #[error("no input: {0}")]
    NoInput(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("invariant broken: {0}")]
    Invariant(String),
}
