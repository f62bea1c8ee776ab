//! The workflow: recsys's steps in their order and with their arguments, as the one-shot
//! `recsys pipeline` and the long-running `recsys orchestrate` both run them. Data flows one
//! way: raw → clean → sorted → events → counts/model/catalog/vectors → serving. The `recsys`
//! command keeps flag parsing and printing; progress reaches it through [`Progress`].

pub mod als;
pub mod catalog;
pub mod cluster;
pub mod lyrics;
pub mod orchestrate;
pub mod pipeline;
pub mod progress;

pub use cluster::ClusterConfig;
pub use progress::{Bar, Progress, Silent};

/// `file` in a local lake's folder, else in the working directory (the embedded stores are
/// files beside the lake).
pub fn beside_lake(lake: &recsys_core::Store, file: &str) -> std::path::PathBuf {
    let location = lake.location();
    if location.contains("://") {
        std::path::PathBuf::from(file)
    } else {
        std::path::PathBuf::from(location).join(file)
    }
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(transparent)]
    Store(#[from] recsys_core::StoreError),
    #[error(transparent)]
    Job(#[from] recsys_jobs::JobError),
    #[error(transparent)]
    Catalog(#[from] recsys_catalog::CatalogError),
    #[error(transparent)]
    Vectors(#[from] recsys_vectors::VectorError),
    #[error(transparent)]
    Lyrics(#[from] recsys_embed::lyrics::FetchError),
    #[error(transparent)]
    CleanSync(#[from] recsys_embed::clean::CleanError),
    #[error(transparent)]
    Embed(#[from] recsys_embed::job::EmbedJobError),
    #[error(transparent)]
    Model(#[from] recsys_embed::EmbedError),
    #[error(transparent)]
    Counts(#[from] recsys_ingest::counts::CountsError),
    #[error(transparent)]
    Sink(#[from] recsys_ingest::SinkError),
    #[error(transparent)]
    Consume(#[from] recsys_ingest::consume::ConsumeError),
    #[error("the lyrics file {file}: {source}")]
    LyricsFile {
        file: String,
        source: Box<recsys_core::StoreError>,
    },
    #[error("{lake} has no ETL output (catalog/MANIFEST.json): run `recsys submit etl` first")]
    NoEtl { lake: String },
    #[error("{0}: expected a time of day, HH:MM (UTC)")]
    TimeOfDay(String),
    #[error(
        "the sink is behind: {detail}; is `recsys sink` (or `recsys orchestrate --sink`) running \
         against {events}?"
    )]
    SinkBehind { detail: String, events: String },
    #[error("the stream step: {0}")]
    Stream(Box<dyn std::error::Error + Send + Sync>),
    #[error("the in-process sink needs Kafka (--kafka)")]
    SinkWithoutKafka,
    #[error(
        "job {job} is running in another process, {owner} (its lease runs until {}); not run here",
        recsys_core::time::utc_string(*until_ms)
    )]
    Busy {
        job: &'static str,
        owner: String,
        until_ms: i64,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    IngestServer(#[from] recsys_ingest::server::ServeError),
    #[error("job {job} stopped: {reason}")]
    LeaseLost { job: &'static str, reason: String },
}
