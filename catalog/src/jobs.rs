//! The orchestrator's job records in `job_metadata`: `recsys orchestrate` writes one per job
//! under `job:<name>` after every run; `recsys status` and the serving status page read them.

use serde::{Deserialize, Serialize};

use crate::{Catalog, CatalogError};

/// The orchestrator's jobs, by name.
pub const JOBS: [&str; 6] = [
    "counts",
    "window-roll",
    "compact",
    "retrain",
    "enrich",
    "supervise",
];

/// A job's record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub last_start_ms: i64,
    pub last_end_ms: i64,
    pub duration_ms: i64,
    /// `ok` or `failed`.
    pub outcome: String,
    pub detail: String,
    pub last_success_ms: Option<i64>,
}

fn key(job: &str) -> String {
    format!("job:{job}")
}

/// The record of `job`, if it ever ran.
pub async fn record(catalog: &dyn Catalog, job: &str) -> Result<Option<JobRecord>, CatalogError> {
    match catalog.checkpoint(&key(job)).await? {
        Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            CatalogError::Invalid(format!("the record of job {job} in job_metadata: {e}"))
        }),
        None => Ok(None),
    }
}

/// Replaces the record of `job`.
pub async fn set_record(
    catalog: &dyn Catalog,
    job: &str,
    record: &JobRecord,
) -> Result<(), CatalogError> {
    let text = serde_json::to_string(record).expect("a job record serialises");
    catalog.set_checkpoint(&key(job), Some(&text)).await
}
