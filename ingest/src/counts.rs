//! Play counts from the event log, exact and incremental: the orchestrator's `counts` job.
//!
//! * New event files are found by their offset-range names (see [`crate::sink`]): per partition,
//!   the chain of files that follows the last counted offset. Each run aggregates them into one
//!   file per partition, `counts/daily/<topic>-p<partition>-<first>-<last>.parquet`, holding
//!   plays (actions `listen` and `complete`, as the ETL counts them) per (UTC day, track). The
//!   aggregate files are the checkpoint: an offset is counted exactly when an aggregate file's
//!   range holds it, and each is written with one atomic `put`, so a kill at any point neither
//!   loses nor doubles an event.
//! * [`totals`] sums the aggregates per track: all of them (`plays`), and those of the 7 UTC
//!   days ending with the anchor's day (`plays_7d`, the ETL's definition). The anchor is the
//!   wall clock (production) or the newest event's day (replayed historical data).
//! * `counts/published.parquet` is what was last written to the catalog; the caller writes only
//!   the tracks whose numbers changed (songs that left the window drop to 0), then replaces it.
//!   Writes set values, never increment: repeating a run repeats the same writes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{AsArray, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use recsys_core::Store;
use recsys_core::schema::{CATALOG_SONGS_DIR, col};
use recsys_core::time::MICROS_PER_DAY;

use recsys_core::event_files::{chains, file_name, parse_file_name};

use crate::sink::{SinkError, topic_files};

/// Folder of the per-day per-track aggregates.
pub const DAILY_DIR: &str = "counts/daily";
/// What the catalog was last given.
pub const PUBLISHED: &str = "counts/published.parquet";
/// Days in the `plays_7d` window.
pub const WINDOW_DAYS: i64 = 7;

/// Errors of the counts and compaction jobs; each names the file or folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum CountsError {
    #[error(transparent)]
    List(#[from] SinkError),
    #[error("reading `{location}`: {reason}")]
    Read { location: String, reason: String },
    #[error("the users of partition {partition}'s new events: {reason}")]
    UsersSeen { partition: i32, reason: String },
    #[error("writing `{location}`: {reason}")]
    Write { location: String, reason: String },
    #[error(
        "{location} counts partition {partition} up to offset {counted}, but events/ holds only \
         up to {held}: the event log was replaced; delete counts/ to count it afresh"
    )]
    Ahead {
        location: String,
        partition: i32,
        counted: i64,
        held: i64,
    },
}

/// Which clock ends the 7-day window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// Today (UTC): a live system.
    WallClock,
    /// The day of the newest counted play: replayed historical data.
    NewestEvent,
}

/// What one aggregation run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aggregated {
    /// Event files read.
    pub files: usize,
    /// Events in them.
    pub events: u64,
    /// Plays among them.
    pub plays: u64,
    /// Distinct users in them (per partition: a user in two partitions counts twice).
    pub users: usize,
    /// (partition, first, last) of each aggregate file written.
    pub ranges: Vec<(i32, i64, i64)>,
}

/// Play counts of one track.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub plays: i64,
    pub plays_7d: i64,
}

/// Totals per track, and the window they were computed for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub tracks: BTreeMap<String, Counts>,
    /// The last day of the window (days since 1970-01-01), `None` with nothing counted.
    pub window_end: Option<i64>,
}

fn daily_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("day", DataType::Int32, false),
        Field::new(col::TRACK_ID, DataType::Utf8, false),
        Field::new("plays", DataType::Int64, false),
    ]))
}

fn published_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::TRACK_ID, DataType::Utf8, false),
        Field::new("plays", DataType::Int64, false),
        Field::new("plays_7d", DataType::Int64, false),
    ]))
}

pub(crate) async fn read(
    store: &Store,
    path: &Path,
    columns: &[&str],
) -> Result<Vec<RecordBatch>, CountsError> {
    let err = |reason: String| CountsError::Read {
        location: store.url(&store.relative(path.as_ref())),
        reason,
    };
    let bytes = store
        .object_store()
        .get(path)
        .await
        .map_err(|e| err(e.to_string()))?
        .bytes()
        .await
        .map_err(|e| err(e.to_string()))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| err(e.to_string()))?;
    let schema = builder.parquet_schema();
    let indices: Vec<usize> = columns
        .iter()
        .map(|c| {
            (0..schema.num_columns())
                .find(|&i| schema.column(i).name() == *c)
                .ok_or_else(|| err(format!("no column `{c}`")))
        })
        .collect::<Result<_, _>>()?;
    let mask = ProjectionMask::leaves(schema, indices);
    builder
        .with_projection(mask)
        .build()
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))
}

/// Reads `paths` (8 at a time), in any order.
fn read_all(
    store: &Store,
    paths: Vec<Path>,
    columns: &'static [&'static str],
) -> impl futures::Stream<Item = Result<Vec<RecordBatch>, CountsError>> + Send + use<> {
    let store = store.clone();
    futures::stream::iter(paths)
        .map(move |path| {
            let store = store.clone();
            async move { read(&store, &path, columns).await }
        })
        .buffer_unordered(8)
}

async fn write(store: &Store, rel: &str, batch: RecordBatch) -> Result<(), CountsError> {
    let err = |reason: String| CountsError::Write {
        location: store.url(rel),
        reason,
    };
    let mut out = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut out, batch.schema(), None).map_err(|e| err(e.to_string()))?;
    writer.write(&batch).map_err(|e| err(e.to_string()))?;
    writer.close().map_err(|e| err(e.to_string()))?;
    store
        .object_store()
        .put(&store.path(rel), PutPayload::from(Bytes::from(out)))
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// The objects under the lake's folder `rel`.
async fn list(store: &Store, rel: &str) -> Result<Vec<object_store::ObjectMeta>, CountsError> {
    store
        .object_store()
        .list(Some(&store.path(rel)))
        .try_collect()
        .await
        .map_err(|e| CountsError::Read {
            location: store.url(rel),
            reason: e.to_string(),
        })
}

async fn aggregate_files(
    store: &Store,
    topic: &str,
) -> Result<Vec<(Path, (i32, i64, i64))>, CountsError> {
    Ok(list(store, DAILY_DIR)
        .await?
        .into_iter()
        .filter_map(|o| {
            let range = parse_file_name(topic, o.location.filename()?)?;
            Some((o.location, range))
        })
        .collect())
}

/// A user seen in a run's new events: the first and last of their events' times (µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub first_us: i64,
    pub last_us: i64,
}

/// Aggregates the event files of `topic` not counted yet. Any unreadable file fails the run
/// with its name, and nothing of that partition is written: the next run tries it again.
pub async fn aggregate(store: &Store, topic: &str) -> Result<Aggregated, CountsError> {
    aggregate_with_users(store, topic, |_| async { Ok(()) }).await
}

/// [`aggregate`], and `users_seen` is given each partition's users before its aggregate file is
/// written (the checkpoint), so what it does with them (catalog entries for new users) is done
/// at least once for every event, also across a kill; it must be idempotent.
pub async fn aggregate_with_users<F, Fut>(
    store: &Store,
    topic: &str,
    mut users_seen: F,
) -> Result<Aggregated, CountsError>
where
    F: FnMut(BTreeMap<String, Seen>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let counted: BTreeMap<i32, i64> = chains(aggregate_files(store, topic).await?)
        .into_iter()
        .map(|(p, chain)| (p, chain.end))
        .collect();
    let events = chains(topic_files(store, topic).await?);
    let mut done = Aggregated::default();
    for (partition, chain) in events {
        let (held, files) = (chain.end, chain.files);
        let from = counted.get(&partition).copied().unwrap_or(-1);
        if from > held {
            return Err(CountsError::Ahead {
                location: store.url(DAILY_DIR),
                partition,
                counted: from,
                held,
            });
        }
        // A compacted file may hold offsets counted already (before compaction) and new ones:
        // it is read, and its rows at or below `from` are left out.
        let new: Vec<_> = files
            .into_iter()
            .filter(|(_, (_, last))| *last > from)
            .collect();
        let (Some((_, (first, _))), Some((_, (_, last)))) = (new.first(), new.last()) else {
            continue;
        };
        let (first, last) = ((*first).max(from + 1), *last);
        // Parallel reads; per (day, track) sums; users with their first and last event.
        let mut per: HashMap<(i32, String), i64> = HashMap::new();
        let mut users: HashMap<String, Seen> = HashMap::new();
        let paths: Vec<Path> = new.iter().map(|(path, _)| path.clone()).collect();
        let columns = &[
            col::USER_ID,
            col::TRACK_ID,
            col::TS,
            col::ACTION,
            col::LOG_OFFSET,
        ];
        let mut reads = read_all(store, paths, columns);
        while let Some(batches) = reads.next().await {
            done.files += 1;
            for b in batches? {
                let user = b.column(0).as_string::<i32>();
                let tracks = b.column(1).as_string::<i32>();
                let ts = b
                    .column(2)
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
                let action = b.column(3).as_string::<i32>();
                let offset = b.column(4).as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    if offset.value(i) <= from {
                        continue;
                    }
                    done.events += 1;
                    let t = ts.value(i);
                    match users.get_mut(user.value(i)) {
                        Some(seen) => {
                            seen.first_us = seen.first_us.min(t);
                            seen.last_us = seen.last_us.max(t);
                        }
                        None => {
                            let seen = Seen {
                                first_us: t,
                                last_us: t,
                            };
                            users.insert(user.value(i).to_string(), seen);
                        }
                    }
                    if !matches!(action.value(i), "listen" | "complete") {
                        continue;
                    }
                    done.plays += 1;
                    let day = ts.value(i).div_euclid(MICROS_PER_DAY) as i32;
                    *per.entry((day, tracks.value(i).to_string())).or_insert(0) += 1;
                }
            }
        }
        let batch = daily_batch(per);
        done.users += users.len();
        users_seen(users.into_iter().collect())
            .await
            .map_err(|reason| CountsError::UsersSeen { partition, reason })?;
        let rel = format!("{DAILY_DIR}/{}", file_name(topic, partition, first, last));
        write(store, &rel, batch).await?;
        done.ranges.push((partition, first, last));
    }
    Ok(done)
}

/// An aggregate file's rows: plays per (UTC day, track), sorted.
fn daily_batch(per: HashMap<(i32, String), i64>) -> RecordBatch {
    let mut rows: Vec<_> = per.into_iter().collect();
    rows.sort_unstable();
    RecordBatch::try_new(
        daily_schema(),
        vec![
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|((d, _), _)| *d),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|((_, t), _)| t),
            )),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|(_, n)| *n))),
        ],
    )
    .expect("columns match the schema")
}

/// A partition's aggregate files are merged once it has this many (each counts run adds one).
pub const MERGE_AGGREGATES_AT: usize = 16;

/// Merges each partition's aggregate files into one once there are `at_least` of them (the
/// sums per (day, track), named with the whole offset range), so that [`totals`] reads a few
/// files rather than one per run ever made. Crash-safe as event compaction is: the merged file
/// is written with one `put` before its inputs are deleted, and from then on every reader
/// leaves the files it covers out; those left by a kill are deleted by the next call. Returns
/// how many files were merged away.
pub async fn merge_aggregates(
    store: &Store,
    topic: &str,
    at_least: usize,
) -> Result<usize, CountsError> {
    let mut merged = 0;
    for (partition, chain) in chains(aggregate_files(store, topic).await?) {
        for path in &chain.covered {
            crate::compact::delete(store, path).await?;
        }
        let (Some((_, (first, _))), Some((_, (_, last)))) =
            (chain.files.first(), chain.files.last())
        else {
            continue;
        };
        if chain.files.len() < at_least.max(2) {
            continue;
        }
        let rel = format!("{DAILY_DIR}/{}", file_name(topic, partition, *first, *last));
        let paths: Vec<Path> = chain.files.iter().map(|(path, _)| path.clone()).collect();
        let mut per: HashMap<(i32, String), i64> = HashMap::new();
        let mut reads = read_all(store, paths, &["day", col::TRACK_ID, "plays"]);
        while let Some(batches) = reads.next().await {
            for b in batches? {
                let days = b.column(0).as_primitive::<Int32Type>();
                let ids = b.column(1).as_string::<i32>();
                let plays = b.column(2).as_primitive::<Int64Type>();
                for i in 0..b.num_rows() {
                    *per.entry((days.value(i), ids.value(i).to_string()))
                        .or_insert(0) += plays.value(i);
                }
            }
        }
        write(store, &rel, daily_batch(per)).await?;
        for (path, _) in &chain.files {
            crate::compact::delete(store, path).await?;
        }
        tracing::info!(partition, files = chain.files.len(), into = %rel, "counts: aggregates merged");
        merged += chain.files.len();
    }
    Ok(merged)
}

/// Events counted so far (the offsets the aggregate files hold).
pub async fn counted(store: &Store, topic: &str) -> Result<i64, CountsError> {
    Ok(chains(aggregate_files(store, topic).await?)
        .into_values()
        .flat_map(|chain| chain.files)
        .map(|(_, (first, last))| last - first + 1)
        .sum())
}

/// Sums the aggregates per track; `today` is the wall clock's day (for [`Anchor::WallClock`]).
pub async fn totals(
    store: &Store,
    topic: &str,
    anchor: Anchor,
    today: i64,
) -> Result<Totals, CountsError> {
    let files: Vec<_> = chains(aggregate_files(store, topic).await?)
        .into_values()
        .flat_map(|chain| chain.files)
        .collect();
    let paths: Vec<Path> = files.into_iter().map(|(path, _)| path).collect();
    let batches: Vec<Vec<RecordBatch>> = read_all(store, paths, &["day", col::TRACK_ID, "plays"])
        .try_collect()
        .await?;
    let batches: Vec<RecordBatch> = batches.into_iter().flatten().collect();
    let newest = batches
        .iter()
        .filter_map(|b| arrow::compute::max(b.column(0).as_primitive::<Int32Type>()))
        .max()
        .map(i64::from);
    let window_end = match anchor {
        Anchor::WallClock => Some(today),
        Anchor::NewestEvent => newest,
    };
    let since = window_end.map_or(i64::MAX, |end| end - WINDOW_DAYS + 1);
    let mut tracks: BTreeMap<String, Counts> = BTreeMap::new();
    for b in &batches {
        let days = b.column(0).as_primitive::<Int32Type>();
        let ids = b.column(1).as_string::<i32>();
        let plays = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let c = tracks.entry(ids.value(i).to_string()).or_default();
            c.plays += plays.value(i);
            let day = i64::from(days.value(i));
            if day >= since && window_end.is_some_and(|end| day <= end) {
                c.plays_7d += plays.value(i);
            }
        }
    }
    Ok(Totals { tracks, window_end })
}

/// Track ids of the ETL's song table (`catalog/songs/`) with their plays: the songs the catalog
/// was loaded with (the counts job creates catalog entries only for tracks beyond them).
pub async fn etl_tracks(store: &Store) -> Result<HashMap<String, i64>, CountsError> {
    let objects = list(store, CATALOG_SONGS_DIR).await?;
    let mut out = HashMap::new();
    for o in objects
        .iter()
        .filter(|o| o.location.as_ref().ends_with(".parquet"))
    {
        for b in read(store, &o.location, &[col::TRACK_ID, "plays"]).await? {
            let ids = b.column(0).as_string::<i32>();
            let plays = b.column(1).as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                out.insert(ids.value(i).to_string(), plays.value(i));
            }
        }
    }
    Ok(out)
}

/// What the catalog was last given (empty before the first publication).
pub async fn published(store: &Store) -> Result<BTreeMap<String, Counts>, CountsError> {
    let path = store.path(PUBLISHED);
    if let Err(object_store::Error::NotFound { .. }) = store.object_store().head(&path).await {
        return Ok(BTreeMap::new());
    }
    let mut out = BTreeMap::new();
    for b in read(store, &path, &[col::TRACK_ID, "plays", "plays_7d"]).await? {
        let ids = b.column(0).as_string::<i32>();
        let plays = b.column(1).as_primitive::<Int64Type>();
        let p7 = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.insert(
                ids.value(i).to_string(),
                Counts {
                    plays: plays.value(i),
                    plays_7d: p7.value(i),
                },
            );
        }
    }
    Ok(out)
}

/// Records `counts` as published.
pub async fn set_published(
    store: &Store,
    counts: &BTreeMap<String, Counts>,
) -> Result<(), CountsError> {
    let batch = RecordBatch::try_new(
        published_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(counts.keys())),
            Arc::new(Int64Array::from_iter_values(
                counts.values().map(|c| c.plays),
            )),
            Arc::new(Int64Array::from_iter_values(
                counts.values().map(|c| c.plays_7d),
            )),
        ],
    )
    .expect("columns match the schema");
    write(store, PUBLISHED, batch).await
}

/// The tracks of `new` whose counts differ from `old`, and those of `old` that `new` lacks
/// (down to 0).
pub fn changes(
    old: &BTreeMap<String, Counts>,
    new: &BTreeMap<String, Counts>,
) -> Vec<(String, Counts)> {
    let mut out: Vec<(String, Counts)> = new
        .iter()
        .filter(|(id, c)| old.get(*id) != Some(c))
        .map(|(id, c)| (id.clone(), *c))
        .collect();
    out.extend(
        old.keys()
            .filter(|id| !new.contains_key(*id))
            .map(|id| (id.clone(), Counts::default())),
    );
    out
}

/// Deletes every aggregate and the published state (a pipeline that rebuilds the event log).
pub async fn clear(store: &Store, topic: &str) -> Result<(), CountsError> {
    let mut paths: Vec<Path> = aggregate_files(store, topic)
        .await?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    paths.push(store.path(PUBLISHED));
    for path in paths {
        match store.object_store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(CountsError::Write {
                    location: path.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event file that is not Parquet fails the run with its name; nothing of its partition
    /// is counted (the next run tries it again) and nothing is published.
    #[tokio::test]
    async fn an_unreadable_event_file_is_named_and_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let name = file_name("t", 0, 0, 9);
        let rel = format!("{}/date=2009-01-01/{name}", recsys_core::schema::EVENTS_DIR);
        store
            .object_store()
            .put(&store.path(&rel), PutPayload::from_static(b"not parquet"))
            .await
            .unwrap();
        let err = aggregate(&store, "t").await.unwrap_err().to_string();
        assert!(err.contains(&name), "{err}");
        assert_eq!(counted(&store, "t").await.unwrap(), 0);
        assert!(published(&store).await.unwrap().is_empty());
    }

    #[test]
    fn changes_include_songs_that_left() {
        let c = |plays, plays_7d| Counts { plays, plays_7d };
        let old = BTreeMap::from([
            ("a".into(), c(3, 1)),
            ("b".into(), c(2, 2)),
            ("gone".into(), c(1, 1)),
        ]);
        let new = BTreeMap::from([
            ("a".into(), c(3, 1)),
            ("b".into(), c(3, 2)),
            ("n".into(), c(1, 1)),
        ]);
        let mut got = changes(&old, &new);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("b".into(), c(3, 2)),
                ("gone".into(), c(0, 0)),
                ("n".into(), c(1, 1))
            ]
        );
    }
}
