//! The master-data ETL: songs and users of the catalog, from the listening history, written to
//! `catalog/songs/` and `catalog/users/` (the lake's source of truth for the catalog) and
//! described by `catalog/MANIFEST.json` ([`EtlManifest`]), which is written last: a loader never
//! sees half an ETL.
//!
//! Plays come from the streamed events when there are any (actions `listen` and `complete`;
//! skips are not plays), else from the sorted listens (every row a play). Titles and artists
//! come from the sorted listens: when one track id was listened to under several spellings, the
//! most frequent (title, artist, artist id) wins, ties broken by the smallest value, so every run
//! picks the same. `plays_7d` counts plays of the 7 UTC days ending with the anchor's day (the
//! anchor is the latest play, not the wall clock: the data may be years old), the window the
//! orchestrator's counts job keeps (`recsys_ingest::counts`).
//!
//! Both tables are spread over a fixed number of files by a stable hash of their id
//! ([`id_hash`] modulo the file count) and sorted by id inside each file: the same input gives
//! the same files.
//!
//! The job is three stages of our own operators, not SQL (five scans of the plays and twelve
//! stages of hash aggregates were about half DuckDB's speed). Stage one (`fold.rs`) reads groups
//! of files with strings kept as the Parquet dictionaries they are stored as, so each distinct
//! string is hashed once per column chunk, and turns every play into a row of 64-bit ids; the
//! first row of each id in a task also carries its string. Stage two (`by_user.rs`), shuffled by
//! user, counts everything a user needs and everything a track needs over those users; stage
//! three (`write.rs`), shuffled by output file, adds up the tracks' partial rows
//! (`partial.rs`), picks the titles from the spellings stage one counted in the sorted listens,
//! and writes both tables. The play count and the anchor come first: from the footers of the
//! sorted listens (every row a play), or from a small query over the events.

mod by_user;
pub(crate) mod fold;
mod partial;
mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::TimestampMicrosecondType;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::metrics::BaselineMetrics;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::union::InterleaveExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use recsys_core::Store;
use recsys_core::manifest::{EtlManifest, TableFiles};
use recsys_core::schema::{CATALOG_SONGS_DIR, CATALOG_USERS_DIR};
use recsys_core::time::MICROS_PER_DAY;

pub use by_user::{UserMerge, UserMergeExec};
pub use fold::{FileRef, PlayFold, PlayFoldExec, SpellFold, SpellFoldExec};
pub use write::{CatalogWrite, CatalogWriteExec};

use crate::cluster::checked_write;
use crate::source::{ListenSource, event_files, footer_stats, sorted_files};
use crate::worklist::work_list;
use crate::write::{run_writes, spread};
use crate::{Cluster, JobError};

/// Files per table when the caller does not choose.
pub const DEFAULT_FILES: usize = 4;

#[derive(Debug, Clone)]
pub struct EtlSummary {
    pub manifest: EtlManifest,
    pub elapsed: Duration,
}

/// Runs the ETL on `cluster`, replacing `catalog/` tables in `lake`.
pub async fn run_etl(
    cluster: &Cluster,
    lake: &Store,
    source: ListenSource,
    files: usize,
) -> Result<EtlSummary, JobError> {
    cluster.check_lake(lake)?;
    let started = Instant::now();
    let files = files.clamp(1, 256);
    let source = source.resolve(lake).await?;
    let play_files = match source {
        ListenSource::Events => event_files(lake).await?,
        _ => sorted_files(lake).await?,
    };
    // Every row of the sorted listens is a play: their footers tell the count and the latest
    // play. The events' plays (some rows are skips) take a query.
    let footers = match source {
        ListenSource::Events => None,
        _ => footer_stats(lake, &play_files).await?,
    };
    let (count, anchor) = match footers {
        Some((count, Some(latest))) => (count, latest),
        Some((_, None)) => return Err(no_plays(lake)),
        None => count_plays(cluster, lake, source).await?,
    };
    let since = (anchor.div_euclid(MICROS_PER_DAY) - 6) * MICROS_PER_DAY;
    tracing::debug!(elapsed = ?started.elapsed(), plays = count, "etl: planned");

    // Three stages (see the module's text): fold the plays, merge them by user, merge the
    // partial rows and the spellings by output file and write.
    let parallelism = cluster.parallelism().max(1);
    let store_url = lake.base_url().to_string();
    let plays = Arc::new(PlayFoldExec::new(
        work_list(&units(play_files.clone(), 2 * parallelism))?,
        PlayFold {
            store_url: store_url.clone(),
            events: source == ListenSource::Events,
        },
    ));
    let user = Arc::new(Column::new_with_schema("user_h", &fold::play_schema())?);
    let by_user: Arc<dyn ExecutionPlan> = Arc::new(UserMergeExec::new(
        Arc::new(RepartitionExec::try_new(
            plays,
            Partitioning::Hash(vec![user], 2 * parallelism),
        )?),
        UserMerge { since, files },
    ));
    // Shuffled by output file. The spellings' stage depends on nothing: it runs beside the
    // plays' stages; the last stage reads both shuffles partition by partition.
    let bucket = Arc::new(Column::new_with_schema("bucket", &partial::schema())?);
    let by_file = |plan: Arc<dyn ExecutionPlan>| -> Result<Arc<dyn ExecutionPlan>, JobError> {
        Ok(Arc::new(RepartitionExec::try_new(
            plan,
            spread(bucket.clone(), files)?,
        )?))
    };
    let spell_files = match source {
        ListenSource::Events => sorted_files(lake).await?,
        _ => play_files.clone(),
    };
    let partials = if spell_files.is_empty() {
        by_file(by_user)?
    } else {
        let spellings = Arc::new(SpellFoldExec::new(
            work_list(&units(spell_files, 2 * parallelism))?,
            SpellFold {
                store_url: store_url.clone(),
                files,
            },
        ));
        Arc::new(InterleaveExec::try_new(vec![
            by_file(by_user)?,
            by_file(spellings)?,
        ])?)
    };
    let plan: Arc<dyn ExecutionPlan> = Arc::new(CatalogWriteExec::new(
        partials,
        CatalogWrite {
            store_url,
            songs_dir: lake.path(CATALOG_SONGS_DIR).to_string(),
            users_dir: lake.path(CATALOG_USERS_DIR).to_string(),
        },
    ));

    // A reader must never pair the old manifest with new files.
    EtlManifest::remove(lake).await?;
    // Both tables in one job: their stages run side by side. Every play counts once in each
    // table, so both must sum to the play count.
    let written = checked_write("the catalog tables", || async {
        let t = Instant::now();
        for dir in [CATALOG_SONGS_DIR, CATALOG_USERS_DIR] {
            crate::lake::clear(lake.object_store().as_ref(), &lake.path(dir)).await?;
        }
        let written = run_writes(cluster, plan.clone()).await?;
        tracing::debug!(elapsed = ?t.elapsed(), "etl: tables written");
        let (by_songs, by_users) = written_plays(cluster, lake).await?;
        Ok(if (by_songs, by_users) == (count, count) {
            Ok(written)
        } else {
            Err(format!(
                "the songs table counts {by_songs} and the users table {by_users} plays of {count}"
            ))
        })
    })
    .await?;
    let table = |dir: &str| {
        let prefix = format!("{dir}/");
        let files: Vec<(String, u64)> = written
            .iter()
            .map(|(f, n)| (lake.relative(f), *n))
            .filter(|(f, _)| f.starts_with(&prefix))
            .collect();
        TableFiles {
            rows: files.iter().map(|f| f.1).sum(),
            files: files.into_iter().map(|f| f.0).collect(),
        }
    };
    let (songs, users) = (table(CATALOG_SONGS_DIR), table(CATALOG_USERS_DIR));
    let manifest = EtlManifest {
        run_id: run_id(),
        source: format!("{source:?}").to_lowercase(),
        anchor_us: anchor,
        plays: count,
        songs,
        users,
    };
    manifest.write(lake).await?;
    Ok(EtlSummary {
        manifest,
        elapsed: started.elapsed(),
    })
}

/// The play count and the latest play of `source` in `lake` (its plays are `listen` and
/// `complete` events, or every sorted listen), by a query.
async fn count_plays(
    cluster: &Cluster,
    lake: &Store,
    source: ListenSource,
) -> Result<(u64, i64), JobError> {
    let ctx = cluster.planner()?;
    source.register(&ctx, lake, "source").await?;
    let plays = match source {
        ListenSource::Events => "source WHERE action IN ('listen', 'complete')",
        _ => "source",
    };
    let df = ctx
        .sql(&format!(
            "SELECT count(*) AS n, max(ts) AS anchor FROM {plays}"
        ))
        .await?;
    let batches = cluster.run_df(df).await?;
    let b = batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .ok_or_else(|| JobError::NoInput("the play count returned nothing".into()))?;
    let n = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
    let max = b.column(1).as_primitive::<TimestampMicrosecondType>();
    if max.is_null(0) {
        return Err(no_plays(lake));
    }
    Ok((n.value(0) as u64, max.value(0)))
}

fn no_plays(lake: &Store) -> JobError {
    JobError::NoInput(format!(
        "no plays in {} (run the clean and sort steps, or stream events, first)",
        lake.url("sorted/listens/ or events/")
    ))
}

/// The plays the written songs and users tables count (each should count every play once).
async fn written_plays(cluster: &Cluster, lake: &Store) -> Result<(u64, u64), JobError> {
    let ctx = cluster.planner()?;
    for (name, dir) in [("s", CATALOG_SONGS_DIR), ("u", CATALOG_USERS_DIR)] {
        ctx.register_parquet(
            name,
            lake.url(&format!("{dir}/")),
            datafusion::prelude::ParquetReadOptions::default(),
        )
        .await?;
    }
    let df = ctx
        .sql(
            "SELECT 0 AS t, CAST(sum(plays) AS BIGINT) AS n FROM s \
             UNION ALL SELECT 1 AS t, CAST(sum(plays) AS BIGINT) AS n FROM u",
        )
        .await?;
    let mut sums = [0u64; 2];
    for b in cluster.run_df(df).await? {
        let table = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        let n = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        for r in 0..b.num_rows() {
            sums[table.value(r).clamp(0, 1) as usize] +=
                if n.is_valid(r) { n.value(r) as u64 } else { 0 };
        }
    }
    Ok((sums[0], sums[1]))
}

/// `files` in at most `n` groups of about equal bytes (largest first, each to the lightest
/// group), every group in name order.
pub(crate) fn units(mut files: Vec<ObjectMeta>, n: usize) -> Vec<Vec<FileRef>> {
    files.sort_by(|a, b| b.size.cmp(&a.size).then(a.location.cmp(&b.location)));
    let mut groups: Vec<(u64, Vec<ObjectMeta>)> =
        vec![(0, Vec::new()); n.clamp(1, files.len().max(1))];
    for file in files {
        let lightest = groups
            .iter_mut()
            .min_by_key(|g| g.0)
            .expect("at least one group");
        lightest.0 += file.size;
        lightest.1.push(file);
    }
    groups
        .into_iter()
        .filter(|g| !g.1.is_empty())
        .map(|(_, mut group)| {
            group.sort_by(|a, b| a.location.cmp(&b.location));
            group.iter().map(FileRef::from).collect()
        })
        .collect()
}

/// Records the string an id hash stands for in `slot`, or fails if another string had the same
/// hash (`what`: user, track or artist).
pub(crate) fn same_id(
    slot: &mut Option<String>,
    value: &str,
    what: &str,
) -> datafusion::error::Result<()> {
    match slot {
        None => *slot = Some(value.to_string()),
        Some(known) if known == value => {}
        Some(known) => {
            return datafusion::common::exec_err!(
                "the {what} ids `{known}` and `{value}` have the same 64-bit hash; recsys \
                 cannot tell them apart"
            );
        }
    }
    Ok(())
}

/// The output of an operator that emits only once its work is done: `batches` runs when the
/// stream is first polled, and its rows are recorded as the operator's output.
pub(crate) fn emit_when_done(
    metrics: BaselineMetrics,
    batches: impl Future<Output = datafusion::error::Result<Vec<RecordBatch>>> + Send + 'static,
) -> BoxStream<'static, datafusion::error::Result<RecordBatch>> {
    futures::stream::once(async move {
        let out = batches.await?;
        metrics.record_output(out.iter().map(|b| b.num_rows()).sum());
        Ok::<_, datafusion::error::DataFusionError>(futures::stream::iter(out.into_iter().map(Ok)))
    })
    .try_flatten()
    .boxed()
}

/// The 64-bit id the ETL gives a string (FNV-1a: stable across processes, versions and
/// platforms, unlike std's hashers). Ids also pick output files (`id % files`). Two strings with
/// one id fail the job rather than merge.
pub fn id_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A run id: wall-clock nanoseconds, unique enough for one lake.
fn run_id() -> String {
    format!("etl-{}", recsys_core::time::now_nanos())
}
