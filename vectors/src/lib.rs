//! The lyrics vector store that embedding writes and serving searches.
//!
//! It depends on `recsys-core` only: it must not depend on the catalog, embedding, the jobs or
//! serving (both sides of it depend on this crate).
//!
//! One trait, [`VectorStore`], two implementations with the same semantics (cosine similarity,
//! point key = track id, upsert replaces, search can exclude ids):
//! - [`QdrantStore`]: a Qdrant server over gRPC (collection `lyrics`, HNSW m=16,
//!   ef_construct=200, point id = UUIDv5 of the track id, payload track id / title / artist);
//! - [`EmbeddedStore`]: the default, an exact search over an in-memory matrix of normalised
//!   vectors with SIMD dot products, persisted in a crash-safe redb file.
//!
//! The behavioural suite in `tests/suite.rs` runs against both.

pub mod embedded;
pub mod qdrant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedStore;
pub use qdrant::{QdrantOptions, QdrantStore};

/// Qdrant's collection name, and the embedded store's table.
pub const COLLECTION: &str = "lyrics";

/// What is stored beside each vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub track_id: String,
    pub title: String,
    pub artist: String,
}

/// One stored vector, keyed by its payload's track id.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub payload: Payload,
    pub vector: Vec<f32>,
}

/// A search result: the cosine similarity to the query, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub payload: Payload,
    pub score: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("embedded vector store {path}: {source}")]
    Embedded {
        path: String,
        #[source]
        source: redb::Error,
    },
    #[error("Qdrant {url}: {reason}")]
    Qdrant { url: String, reason: String },
    #[error("vector store {store}: {reason}")]
    Invalid { store: String, reason: String },
}

/// The vector store every later step uses.
#[async_trait]
pub trait VectorStore: Send + Sync {
    /// Where the store is, for messages (never with credentials).
    fn describe(&self) -> String;

    /// The vectors' dimension.
    fn dim(&self) -> usize;

    /// Inserts or replaces points by track id.
    async fn upsert(&self, points: &[Point]) -> Result<(), VectorError>;

    /// Removes these track ids (absent ones are ignored).
    async fn delete(&self, track_ids: &[String]) -> Result<(), VectorError>;

    /// The stored (normalised) vector of a track.
    async fn vector(&self, track_id: &str) -> Result<Option<Vec<f32>>, VectorError>;

    /// The `limit` points most similar to `vector`, best first, without the `exclude` ids.
    async fn search(
        &self,
        vector: &[f32],
        limit: usize,
        exclude: &[String],
    ) -> Result<Vec<Hit>, VectorError>;

    /// Number of stored points.
    async fn count(&self) -> Result<u64, VectorError>;
}

/// Opens the store the configuration selects: Qdrant when `qdrant` is set, else the embedded
/// store at `path`.
pub async fn open(
    qdrant: Option<&QdrantOptions>,
    path: &std::path::Path,
    dim: usize,
) -> Result<Box<dyn VectorStore>, VectorError> {
    Ok(match qdrant {
        Some(options) => Box::new(QdrantStore::connect(options, dim).await?),
        None => Box::new(EmbeddedStore::open(path, dim)?),
    })
}

/// `v` scaled to unit length (zero stays zero), as cosine similarity needs.
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = recsys_core::linalg::dot(v, v).sqrt();
    if norm > 0.0 {
        v.iter().map(|x| x / norm).collect()
    } else {
        v.to_vec()
    }
}

fn check_dim(store: &dyn VectorStore, len: usize) -> Result<(), VectorError> {
    if len == store.dim() {
        Ok(())
    } else {
        Err(VectorError::Invalid {
            store: store.describe(),
            reason: format!("vector of dimension {len}, the store holds {}", store.dim()),
        })
    }
}
