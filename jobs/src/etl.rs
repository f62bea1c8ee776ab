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
//! (`recsys_bucket`) and sorted by id inside each file: the same input gives the same files.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use datafusion::prelude::DataFrame;
use recsys_core::Store;
use recsys_core::manifest::{EtlManifest, TableFiles};
use recsys_core::schema::{CATALOG_SONGS_DIR, CATALOG_USERS_DIR};
use recsys_core::time::MICROS_PER_DAY;

use crate::cluster::checked_write;
use crate::source::{ListenSource, register_sorted};
use crate::udf::BUCKET;
use crate::write::{run_writes, shuffle_write_plan};
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
    let ctx = cluster.planner()?;
    source.register(&ctx, lake, "source").await?;
    register_sorted(&ctx, lake, "listens").await?;
    let plays = match source {
        ListenSource::Events => {
            "SELECT user_id, track_id, artist_id, ts, \
                    CASE WHEN total_duration_s > 0 THEN total_duration_s END AS total \
             FROM source WHERE action IN ('listen', 'complete')"
        }
        _ => "SELECT user_id, track_id, artist_id, ts, CAST(NULL AS DOUBLE) AS total FROM source",
    };
    ctx.register_table("plays", ctx.sql(plays).await?.into_view())?;

    let (count, anchor) = {
        let df = ctx
            .sql("SELECT count(*) AS n, max(ts) AS anchor FROM plays")
            .await?;
        let batches = cluster.run_df(df).await?;
        let b = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| JobError::NoInput("the play count returned nothing".into()))?;
        let n = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
        let max = b.column(1).as_primitive::<TimestampMicrosecondType>();
        if max.is_null(0) {
            return Err(JobError::NoInput(format!(
                "no plays in {} (run the clean and sort steps, or stream events, first)",
                lake.url("sorted/listens/ or events/")
            )));
        }
        (n.value(0) as u64, max.value(0))
    };
    let since = (anchor.div_euclid(MICROS_PER_DAY) - 6) * MICROS_PER_DAY;
    tracing::debug!(elapsed = ?started.elapsed(), plays = count, "etl: planned");

    let songs = ctx
        .sql(&format!(
            "WITH per_user AS (
                SELECT track_id, user_id, count(*) AS n,
                       sum(CASE WHEN ts >= to_timestamp_micros({since}) THEN 1 ELSE 0 END) AS n7,
                       min(ts) AS first_played, max(ts) AS last_played, max(total) AS total
                FROM plays GROUP BY track_id, user_id),
             stats AS (
                SELECT track_id, sum(n) AS plays, sum(n7) AS plays_7d, count(*) AS listeners,
                       min(first_played) AS first_played, max(last_played) AS last_played,
                       max(total) AS duration_s
                FROM per_user GROUP BY track_id),
             spellings AS (
                SELECT track_id, track_name, artist_name, artist_id, count(*) AS n
                FROM listens GROUP BY track_id, track_name, artist_name, artist_id),
             names AS (
                SELECT track_id,
                  first_value(track_name ORDER BY n DESC, track_name, artist_name, artist_id) AS track_name,
                  first_value(artist_name ORDER BY n DESC, track_name, artist_name, artist_id) AS artist_name,
                  first_value(artist_id ORDER BY n DESC, track_name, artist_name, artist_id) AS artist_id
                FROM spellings GROUP BY track_id)
             SELECT COALESCE(s.track_id, m.track_id) AS track_id,
                    COALESCE(m.track_name, '') AS track_name,
                    COALESCE(m.artist_name, '') AS artist_name,
                    COALESCE(m.artist_id, '') AS artist_id,
                    CAST(COALESCE(s.plays, 0) AS BIGINT) AS plays,
                    CAST(COALESCE(s.plays_7d, 0) AS BIGINT) AS plays_7d,
                    CAST(COALESCE(s.listeners, 0) AS BIGINT) AS listeners,
                    s.first_played, s.last_played, s.duration_s,
                    {BUCKET}(COALESCE(s.track_id, m.track_id), {files}) AS bucket
             FROM stats s FULL OUTER JOIN names m ON s.track_id = m.track_id"
        ))
        .await?;
    // One aggregate per distinct count, joined: measured faster than `count(DISTINCT …)` three
    // times in one aggregate. Days are whole UTC days since the epoch (timestamps are ≥ 1990, so
    // integer division is the floor).
    let users = ctx
        .sql(&format!(
            "WITH a AS (
                SELECT user_id, count(*) AS plays, min(ts) AS first_seen, max(ts) AS last_seen,
                       count(DISTINCT CAST(ts AS BIGINT) / {MICROS_PER_DAY}) AS active_days
                FROM plays GROUP BY user_id),
             t AS (SELECT user_id, count(*) AS n
                   FROM (SELECT user_id, track_id FROM plays GROUP BY user_id, track_id)
                   GROUP BY user_id),
             r AS (SELECT user_id, count(*) AS n
                   FROM (SELECT user_id, artist_id FROM plays GROUP BY user_id, artist_id)
                   GROUP BY user_id)
             SELECT a.user_id, a.plays, t.n AS distinct_tracks, r.n AS distinct_artists,
                    a.first_seen, a.last_seen, a.active_days,
                    {BUCKET}(a.user_id, {files}) AS bucket
             FROM a JOIN t ON a.user_id = t.user_id JOIN r ON a.user_id = r.user_id"
        ))
        .await?;

    // A reader must never pair the old manifest with new files.
    EtlManifest::remove(lake).await?;
    // Both tables in one job: their stages run side by side. Every play counts once in each
    // table, so both must sum to the play count.
    let written = checked_write("the catalog tables", || async {
        let t = Instant::now();
        let plan = UnionExec::try_new(vec![
            table_plan(lake, songs.clone(), "track_id", CATALOG_SONGS_DIR, files).await?,
            table_plan(lake, users.clone(), "user_id", CATALOG_USERS_DIR, files).await?,
        ])?;
        let written = run_writes(cluster, plan).await?;
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

/// The plan writing `df` to `dir` (cleared first), spread over `files` files by `bucket`.
async fn table_plan(
    lake: &Store,
    df: DataFrame,
    id: &str,
    dir: &str,
    files: usize,
) -> Result<Arc<dyn ExecutionPlan>, JobError> {
    crate::lake::clear(lake.object_store().as_ref(), &lake.path(dir)).await?;
    let names: BTreeMap<i64, String> = (0..files as i64)
        .map(|b| (b, format!("part-{b:05}.parquet")))
        .collect();
    shuffle_write_plan(lake, df, "bucket", &[id], dir, names).await
}

/// A run id: wall-clock nanoseconds, unique enough for one lake.
fn run_id() -> String {
    format!("etl-{}", recsys_core::time::now_nanos())
}
