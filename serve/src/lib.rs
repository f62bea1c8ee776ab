//! Hybrid recommendation serving over gRPC (`recsys.v1.RecommendService`) and JSON (`/api/v1`),
//! with a web player for listeners.
//!
//! The last step of the data flow: it reads the model (lake), the catalog and the vector store,
//! and logs events into the event log. It depends on `recsys-core`, `recsys-proto`,
//! `recsys-catalog`, `recsys-vectors` and `recsys-ingest`; it must not depend on the batch jobs
//! (no DataFusion or Ballista in a serving process) or on embedding (no burn, no model weights).
//!
//! The I/O-free logic every RPC uses is unit-tested exactly: score fusion and min-max
//! normalisation ([`rank`]), popularity sampling, session vectors and the short-term update
//! ([`vectors`]), the per-user queues with caps and TTLs ([`session`]) and real-time fold-in of
//! new users (`recsys_core::foldin`, shared with the retrain's carry-over). [`model`] loads an ALS model version from the lake, [`recommender`]
//! holds the serving state over the configured stores, [`service`] is the gRPC front (with
//! health, reflection and model hot reload), [`http`] the JSON API and the web player on the
//! same listener, [`status`] what the operator page shows, and [`verify`] checks a live server
//! end to end.

pub mod http;
pub mod model;
pub mod rank;
pub mod recommender;
pub mod service;
pub mod session;
pub mod status;
pub mod vectors;
pub mod verify;

pub use recommender::{Options, Recommender, Stores};

/// Errors of serving. Each maps to one gRPC status (see [`service`]).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A request field is invalid: `INVALID_ARGUMENT`.
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// The request names a song or user nobody knows: `NOT_FOUND`.
    #[error("{what} `{id}` not found")]
    NotFound { what: &'static str, id: String },
    #[error(transparent)]
    Catalog(#[from] recsys_catalog::CatalogError),
    #[error(transparent)]
    Vectors(#[from] recsys_vectors::VectorError),
    #[error(transparent)]
    Store(#[from] recsys_core::StoreError),
    #[error("a serving task failed: {0}")]
    Task(String),
    #[error("{url}: unreadable Parquet: {reason}")]
    Parquet { url: String, reason: String },
    #[error("ALS model {url}: {reason}")]
    Model { url: String, reason: String },
}

pub fn invalid(field: &'static str, reason: impl Into<String>) -> ServeError {
    ServeError::Invalid {
        field,
        reason: reason.into(),
    }
}
