//! `recsys replay`: the sorted listens, in time order, into an [`EventLog`], at `speed` × real
//! time (data seconds per wall second, as the seed's producer). A gap in the data never stalls
//! the replay: a sleep longer than `max_sleep` is cut to it and the rest is skipped. Speed 0
//! sends as fast as the log takes them.
//!
//! Last.fm logs only hold scrobbles, which are recorded once a track has played for half its
//! length or four minutes: replayed events are `complete` plays from source `replay`, with
//! unknown durations (0).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::TimestampMicrosecondType;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::ProjectionMask;
use recsys_core::Store;
use recsys_core::reader::LakeFileReader;
use recsys_core::schema::{SORTED_DIR, col, event_schema};

use crate::event::Action;
use crate::log::{EventLog, LogError, Receipt};

/// Errors of a replay; each names the object or log concerned.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading `{location}`: {reason}")]
    Read { location: String, reason: String },
    #[error("no sorted listens under `{0}` (run the sort job first)")]
    Empty(String),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// How to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Data seconds per wall second; 0 = as fast as possible.
    pub speed: f64,
    /// Longest sleep between two events; longer gaps in the data are skipped.
    pub max_sleep: Duration,
    /// Stop after this many events.
    pub limit: Option<u64>,
    /// Rows read per batch.
    pub batch_rows: usize,
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplayStats {
    pub events: u64,
    pub elapsed: Duration,
    /// Data time covered, first to last event (µs).
    pub data_span_us: i64,
}

/// The sorted files in time order, with their row counts.
pub async fn sorted_files(store: &Store) -> Result<Vec<(ObjectMeta, u64)>, ReplayError> {
    let prefix = store.path(SORTED_DIR);
    let read_err = |reason: String| ReplayError::Read {
        location: store.url(SORTED_DIR),
        reason,
    };
    let mut objects: Vec<ObjectMeta> = store
        .object_store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| read_err(e.to_string()))?;
    objects.retain(|o| o.location.as_ref().ends_with(".parquet"));
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    if objects.is_empty() {
        return Err(ReplayError::Empty(store.url(SORTED_DIR)));
    }
    let mut out = Vec::with_capacity(objects.len());
    for meta in objects {
        let reader = LakeFileReader::new(store.object_store(), meta.location.clone(), meta.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| read_err(format!("{}: {e}", meta.location)))?;
        let rows = builder.metadata().file_metadata().num_rows() as u64;
        out.push((meta, rows));
    }
    Ok(out)
}

/// Sorted listens (as read) → events with constant action, source and durations.
fn to_events(listens: &RecordBatch) -> RecordBatch {
    let n = listens.num_rows();
    let column = |name: &str| listens.column_by_name(name).expect("listen schema").clone();
    RecordBatch::try_new(
        event_schema(),
        vec![
            column(col::USER_ID),
            column(col::TRACK_ID),
            column(col::ARTIST_ID),
            column(col::TS),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                Action::Complete.as_str(),
                n,
            ))),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                "replay", n,
            ))),
            Arc::new(Float64Array::from(vec![0.0; n])),
            Arc::new(Float64Array::from(vec![0.0; n])),
            Arc::new(Int32Array::from(vec![0; n])),
            Arc::new(Int64Array::from(vec![0; n])),
        ],
    )
    .expect("sorted listens carry the event columns")
}

/// Paces events: the wall time at which each data timestamp is due.
struct Pacer {
    speed: f64,
    max_sleep: Duration,
    origin: Option<(i64, Instant)>,
    /// Data time skipped over long gaps (µs).
    skipped_us: f64,
}

impl Pacer {
    /// How long to wait before sending an event at `ts` (zero when due).
    fn wait(&mut self, ts: i64) -> Duration {
        if self.speed <= 0.0 {
            return Duration::ZERO;
        }
        let (t0, wall0) = *self.origin.get_or_insert((ts, Instant::now()));
        let due_s = ((ts - t0) as f64 - self.skipped_us) / 1e6 / self.speed;
        let wait = due_s - wall0.elapsed().as_secs_f64();
        if wait <= 0.0 {
            return Duration::ZERO;
        }
        let max = self.max_sleep.as_secs_f64();
        if wait > max {
            self.skipped_us += (wait - max) * self.speed * 1e6;
            return self.max_sleep;
        }
        Duration::from_secs_f64(wait)
    }
}

/// Replays `store`'s sorted listens into `log`; `progress(events, data clock µs)` after each send.
pub async fn replay(
    store: &Store,
    log: &dyn EventLog,
    options: &ReplayOptions,
    mut progress: impl FnMut(u64, i64),
) -> Result<ReplayStats, ReplayError> {
    let started = Instant::now();
    let mut pacer = Pacer {
        speed: options.speed,
        max_sleep: options.max_sleep,
        origin: None,
        skipped_us: 0.0,
    };
    let mut receipts: FuturesUnordered<Receipt> = FuturesUnordered::new();
    let mut stats = ReplayStats::default();
    let mut first_ts = None;
    let limit = options.limit.unwrap_or(u64::MAX);
    'files: for (meta, _) in sorted_files(store).await? {
        let read_err = |e: parquet::errors::ParquetError| ReplayError::Read {
            location: meta.location.to_string(),
            reason: e.to_string(),
        };
        let reader = LakeFileReader::new(store.object_store(), meta.location.clone(), meta.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(read_err)?;
        let wanted = [col::USER_ID, col::TS, col::ARTIST_ID, col::TRACK_ID];
        let mask = ProjectionMask::columns(builder.parquet_schema(), wanted);
        let mut batches = builder
            .with_projection(mask)
            .with_batch_size(options.batch_rows)
            .build()
            .map_err(read_err)?;
        while let Some(listens) = batches.try_next().await.map_err(read_err)? {
            let mut events = to_events(&listens);
            if stats.events + events.num_rows() as u64 > limit {
                events = events.slice(0, (limit - stats.events) as usize);
            }
            let ts = events
                .column_by_name(col::TS)
                .expect("event schema")
                .as_any()
                .downcast_ref::<arrow::array::PrimitiveArray<TimestampMicrosecondType>>()
                .expect("timestamps")
                .values()
                .clone();
            let mut start = 0;
            while start < events.num_rows() {
                first_ts.get_or_insert(ts[start]);
                // Send everything already due in one append; then wait for the next event.
                let mut end = start;
                while end < ts.len() && pacer.wait(ts[end]).is_zero() {
                    end += 1;
                }
                if end > start {
                    receipts.push(log.append(events.slice(start, end - start)).await?);
                    stats.events += (end - start) as u64;
                    stats.data_span_us = ts[end - 1] - first_ts.unwrap_or(ts[end - 1]);
                    progress(stats.events, ts[end - 1]);
                    start = end;
                }
                if start < ts.len() {
                    tokio::time::sleep(pacer.wait(ts[start])).await;
                }
                // Surface failures early and keep the set of pending receipts small.
                while let Some(Some(done)) = receipts.next().now_or_never() {
                    done?;
                }
            }
            if stats.events >= limit {
                break 'files;
            }
        }
    }
    // The end of the input: close the log first, so it writes what it still buffers now
    // instead of when its flush interval runs out, and then wait for the last receipts.
    log.close().await?;
    while let Some(done) = receipts.next().await {
        done?;
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacing_compresses_time_and_caps_gaps() {
        let mut fast = Pacer {
            speed: 0.0,
            max_sleep: Duration::from_secs(2),
            origin: None,
            skipped_us: 0.0,
        };
        assert!(fast.wait(0).is_zero() && fast.wait(i64::MAX / 2).is_zero());
        let mut paced = Pacer {
            speed: 1000.0,
            max_sleep: Duration::from_secs(2),
            origin: None,
            skipped_us: 0.0,
        };
        assert!(paced.wait(0).is_zero());
        // 100 data seconds at 1000× are due 0.1 s after the start.
        let w = paced.wait(100_000_000);
        assert!(
            w > Duration::from_millis(90) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        // A 3-hour gap would be 10.8 s: capped at 2 s, the rest skipped.
        assert_eq!(paced.wait(3 * 3600 * 1_000_000), Duration::from_secs(2));
        assert!(paced.skipped_us > 8.0 * 1000.0 * 1e6);
        std::thread::sleep(Duration::from_millis(5));
        // After the skip the same timestamp is due about max_sleep from the start, not 10.8 s.
        assert!(paced.wait(3 * 3600 * 1_000_000) <= Duration::from_secs(2));
    }
}
