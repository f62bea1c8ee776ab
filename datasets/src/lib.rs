//! Getting listening data: the seeded generator (offline default) and the real Last.fm-1K
//! download.
//!
//! The first step of the data flow (raw → clean → sorted → events → catalog/model/vectors →
//! serving): it writes `raw/` and nothing else, and depends only on `recsys-core`. It must not
//! depend on the jobs, the stores or serving.

pub mod fetch;
pub mod generate;
pub mod lyrics;
mod names;
mod rng;

pub use generate::{GenerateConfig, Manifest, generate, read_manifest};
pub use lyrics::{LYRICS_FILE, LyricsRecord};

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("object store `{location}`: {source}")]
    Store {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("generator: {0}")]
    Generator(String),
    #[error(
        "cannot download {url}: {reason}. Without internet access, run `recsys data generate` instead."
    )]
    Download { url: String, reason: String },
    #[error("the archive from {url} is not a valid Last.fm-1K archive: {reason}")]
    Verify { url: String, reason: String },
}

impl DatasetError {
    pub(crate) fn store(store: &recsys_core::Store, source: object_store::Error) -> DatasetError {
        DatasetError::Store {
            location: store.location().to_string(),
            source,
        }
    }
}
