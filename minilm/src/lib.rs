//! all-MiniLM-L6-v2 sentence embeddings in burn: the model ([`model`]) with our attention and
//! GELU kernels ([`kernels`]), its tokenizer ([`tokenize`]), batching by length ([`Embedder`])
//! and where the weights are on disk ([`model_dir`]).
//!
//! It is the one piece the lyrics step (`recsys-embed`, which picks the songs and writes the
//! vector store) and the embedding job's executors (`recsys-jobs`) share, so it depends on no
//! recsys crate: it must not depend on the lake, the catalog, the vector store or the jobs.

pub mod embedder;
pub mod kernels;
pub mod model;
pub mod model_dir;
pub mod tokenize;

pub use embedder::Embedder;
pub use model::{DIM, MiniLm};
pub use tokenize::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model {path}: {reason}")]
    Model { path: String, reason: String },
    #[error("{0}")]
    Input(String),
}
