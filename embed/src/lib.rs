//! Lyrics: the LRCLIB client and the generator's offline lyrics file behind one
//! [`lyrics::LyricsApi`] interface, enrichment into the catalog ([`enrich`]), clean & sync
//! ([`clean`]), all-MiniLM-L6-v2 sentence embeddings in burn ([`model`], [`tokenize`],
//! [`kernels`], [`Embedder`]) and the embedding job ([`job`]).
//!
//! It writes lyrics into the catalog and vectors into the vector store, so it depends on
//! `recsys-catalog`, `recsys-vectors`, `recsys-datasets` (the offline lyrics file's format) and
//! `recsys-core`. It must not depend on the batch jobs, the event log or serving: serving reads
//! what this crate wrote and never embeds.

pub mod clean;
pub mod embedder;
pub mod enrich;
pub mod job;
pub mod kernels;
pub mod lyrics;
pub mod model;
pub mod model_dir;
pub mod tokenize;

pub use embedder::{Embedder, prepare_lyrics};
pub use model::{DIM, MiniLm};
pub use tokenize::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model {path}: {reason}")]
    Model { path: String, reason: String },
    #[error("{0}")]
    Input(String),
}
