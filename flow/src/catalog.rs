//! Master data: the ETL job (songs and users tables in the lake), then their load into the
//! catalog with the current model's user vectors.

use std::time::{Duration, Instant};

use recsys_catalog::Catalog;
use recsys_catalog::load::{LoadReport, UserVectors, checkpoint_key, load};
use recsys_core::Store;
use recsys_core::manifest::EtlManifest;
use recsys_jobs::Cluster;
use recsys_jobs::etl::{EtlSummary, run_etl};
use recsys_jobs::source::ListenSource;

use crate::FlowError;
use crate::progress::{Progress, rate, spinning};

/// Runs the ETL job: plays from `source` into `files` Parquet files per catalog table.
pub async fn etl(
    cluster: &Cluster,
    lake: &Store,
    source: ListenSource,
    files: usize,
    progress: &dyn Progress,
) -> Result<EtlSummary, FlowError> {
    let what = format!("etl on {}", cluster.describe());
    let summary = spinning(progress, &what, run_etl(cluster, lake, source, files)).await?;
    let m = &summary.manifest;
    tracing::info!(
        plays = m.plays,
        songs = m.songs.rows,
        users = m.users.rows,
        source = m.source,
        secs = format!("{:.2}", summary.elapsed.as_secs_f64()),
        plays_per_sec = format!("{:.0}", rate(m.plays, summary.elapsed)),
        "etl written"
    );
    Ok(summary)
}

/// The current ALS model's user vectors, if a model exists.
async fn current_vectors(lake: &Store) -> Result<Option<UserVectors>, FlowError> {
    let Some(version) = recsys_jobs::als::model::current(lake).await? else {
        return Ok(None);
    };
    let path = format!("{}/{version}/users.parquet", recsys_jobs::als::MODELS_DIR);
    let (batches, _) =
        recsys_jobs::lake::read_parquet(lake.object_store().as_ref(), &lake.path(&path)).await?;
    Ok(Some(UserVectors::from_batches(&version, &batches)?))
}

/// Loads the latest ETL output into `catalog`, `batch` documents per write (and checkpoint),
/// resuming a load that stopped unless `reload`.
pub async fn load_catalog(
    catalog: &dyn Catalog,
    lake: &Store,
    batch: usize,
    reload: bool,
    progress: &dyn Progress,
) -> Result<(LoadReport, Duration), FlowError> {
    let Some(manifest) = EtlManifest::read(lake).await? else {
        return Err(FlowError::NoEtl {
            lake: lake.location().to_string(),
        });
    };
    if reload {
        for table in ["songs", "users"] {
            catalog.set_checkpoint(&checkpoint_key(table), None).await?;
        }
    }
    let vectors = current_vectors(lake).await?;
    let total = manifest.songs.rows + manifest.users.rows;
    let bar = progress.bar("catalog", total, "docs");
    let started = Instant::now();
    let mut last_log = Instant::now();
    let songs_total = manifest.songs.rows;
    let report = load(
        catalog,
        lake,
        &manifest,
        vectors.as_ref(),
        batch,
        &mut |p| {
            let done = if p.table == "songs" {
                p.rows
            } else {
                songs_total + p.rows
            };
            bar.set_position(done);
            if last_log.elapsed() > Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(
                    table = p.table,
                    rows = p.rows,
                    total = p.total,
                    "catalog load"
                );
            }
            Ok(())
        },
    )
    .await;
    drop(bar);
    let report = report?;
    let elapsed = started.elapsed();
    let loaded = report.songs.loaded + report.users.loaded;
    tracing::info!(
        catalog = catalog.describe(),
        songs = report.songs.loaded,
        users = report.users.loaded,
        skipped = report.songs.skipped + report.users.skipped,
        vectors = vectors
            .as_ref()
            .map_or("none".to_string(), |v| v.model_version.clone()),
        docs_per_sec = format!("{:.0}", rate(loaded, elapsed)),
        "catalog loaded"
    );
    Ok((report, elapsed))
}
