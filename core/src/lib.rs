//! Shared foundations of recsys: object storage, Arrow schemas, stable identifiers and time.

pub mod encoding;
pub mod ids;
pub mod linalg;
pub mod manifest;
pub mod models;
pub mod reader;
pub mod schema;
pub mod store;
pub mod time;

pub use store::{S3Options, Store, StoreError};
