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

/// Who runs a job, until when: `lease:<job>` in `job_metadata`. Orchestrators sharing a catalog
/// (two replicas, or `recsys orchestrate --once` from cron beside the long-running one) take
/// it before running the job and renew it while it runs; one that finds another's unexpired
/// lease does not run the job. A crashed holder's lease runs out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub until_ms: i64,
}

/// What [`acquire_lease`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leased {
    /// `owner` holds the lease now (taken, or renewed).
    Acquired,
    /// Another owner holds it.
    HeldBy(Lease),
}

fn lease_key(job: &str) -> String {
    format!("lease:{job}")
}

/// Takes (or renews) `job`'s lease for `owner` until `until_ms`, unless another owner holds
/// one that has not run out at `now_ms` and that `dead` does not know to be dead (a crashed
/// process on this host). Atomic between processes ([`Catalog::swap_checkpoint`]).
pub async fn acquire_lease(
    catalog: &dyn Catalog,
    job: &str,
    owner: &str,
    (now_ms, until_ms): (i64, i64),
    dead: &(dyn Fn(&Lease) -> bool + Sync),
) -> Result<Leased, CatalogError> {
    let key = lease_key(job);
    let mine = serde_json::to_string(&Lease {
        owner: owner.into(),
        until_ms,
    })
    .expect("a lease serialises");
    // Each lost race means another process changed the lease in between: read it again.
    for _ in 0..8 {
        let text = catalog.checkpoint(&key).await?;
        // An unreadable lease protects nothing: it is taken over like an expired one.
        let held = text
            .as_deref()
            .and_then(|t| serde_json::from_str::<Lease>(t).ok());
        if let Some(lease) = held.filter(|l| l.owner != owner && l.until_ms > now_ms && !dead(l)) {
            return Ok(Leased::HeldBy(lease));
        }
        if catalog
            .swap_checkpoint(&key, text.as_deref(), Some(&mine))
            .await?
        {
            return Ok(Leased::Acquired);
        }
    }
    Err(CatalogError::Invalid(format!(
        "the lease of job {job} in job_metadata changed 8 times while {owner} tried to take it"
    )))
}

/// Gives up `owner`'s lease of `job` (a lease another owner took over is left alone); whether
/// there was one to give up.
pub async fn release_lease(
    catalog: &dyn Catalog,
    job: &str,
    owner: &str,
) -> Result<bool, CatalogError> {
    let key = lease_key(job);
    let Some(text) = catalog.checkpoint(&key).await? else {
        return Ok(false);
    };
    match serde_json::from_str::<Lease>(&text) {
        Ok(lease) if lease.owner == owner => catalog.swap_checkpoint(&key, Some(&text), None).await,
        _ => Ok(false),
    }
}
