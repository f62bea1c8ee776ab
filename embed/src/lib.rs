//! Lyrics: the LRCLIB client and the generator's offline lyrics file behind one
//! [`lyrics::LyricsApi`] interface, enrichment into the catalog ([`enrich`]), clean & sync
//! ([`clean`]), and the embedding step ([`job`]): which songs to embed, their shards in the lake,
//! and the vectors into the vector store. The shards are embedded by whatever runs them (the
//! batch jobs' `EmbedExec` on the cluster), with the model of `recsys-minilm`, re-exported here.
//!
//! It writes lyrics into the catalog and vectors into the vector store, so it depends on
//! `recsys-catalog`, `recsys-vectors`, `recsys-datasets` (the offline lyrics file's format),
//! `recsys-minilm` and `recsys-core`. It must not depend on the batch jobs, the event log or
//! serving: serving reads what this crate wrote and never embeds.

pub mod clean;
pub mod enrich;
pub mod job;
pub mod lyrics;

pub use job::prepare_lyrics;
pub use recsys_minilm::{DIM, EmbedError, Embedder, MiniLm, Tokenizer, model_dir};
