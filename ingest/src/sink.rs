//! The exactly-once Parquet sink: events of a log (Kafka topic, or the embedded log) become
//! `events/date=YYYY-MM-DD/<topic>-p<partition>-<first offset>-<last offset>.parquet`.
//!
//! The object store is the source of truth for what was written:
//! * each file holds a contiguous run of one partition's offsets, all of one date (a buffer is
//!   flushed when the date changes, when it reaches `flush_rows`, or when it is older than
//!   `flush_interval`), written with a single atomic `put`;
//! * what a partition has written is the chain of its files whose offset ranges follow each
//!   other without a gap; [`Sink::open`] and [`Sink::reload`] read it from the listing, and
//!   [`Sink::push`] drops every row at or below its end. Files may be written concurrently
//!   (`FlushPolicy::in_flight`): a crash can then leave a later file without an earlier one;
//!   such files beyond a gap were never acknowledged and [`Sink::reload`] deletes them. A
//!   partition's first file is always written alone, so a chain never starts beyond a gap;
//! * the consumer commits an offset to Kafka only after the file holding it is durable, and
//!   resumes from the committed offset. A crash between the write and the commit re-delivers
//!   rows the store already has, and they are dropped: no gap, no duplicate.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use recsys_core::Store;
use recsys_core::encoding::lake_columns;
use recsys_core::event_files::{self, file_name, parse_file_name};
use recsys_core::schema::{EVENTS_DIR, event_schema};
use recsys_core::time::{MICROS_PER_DAY, date_string};

use crate::event::EventColumns;

/// Errors of the sink. Every variant names the object or partition concerned.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("listing `{location}`: {source}")]
    List {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("writing `{location}`: {source}")]
    Write {
        location: String,
        #[source]
        source: object_store::Error,
    },
    #[error("encoding Parquet for `{location}`: {source}")]
    Encode {
        location: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("partition {partition}: offsets must increase, got {offset} after {previous}")]
    OutOfOrder {
        partition: i32,
        offset: i64,
        previous: i64,
    },
}

/// When buffered events are written.
#[derive(Debug, Clone)]
pub struct FlushPolicy {
    /// Rows per partition that trigger a write.
    pub rows: usize,
    /// Oldest a buffered row may get before it is written.
    pub interval: Duration,
    /// Files written concurrently (a partition's first file is always written alone).
    pub in_flight: usize,
}

/// Counters of a sink's work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkStats {
    pub files: u64,
    pub rows: u64,
    pub bytes: u64,
    /// Rows dropped because the store already had their offsets (redeliveries).
    pub duplicates: u64,
}

struct Buffer {
    day: i64,
    batches: Vec<RecordBatch>,
    rows: usize,
    first: i64,
    last: i64,
    since: Instant,
}

/// A file being encoded and written.
struct InFlight {
    partition: i32,
    last: i64,
    rows: u64,
    task: tokio::task::JoinHandle<Result<u64, SinkError>>,
}

/// Buffers events per partition and writes them as described in the module docs.
pub struct Sink {
    store: Store,
    topic: String,
    policy: FlushPolicy,
    buffers: BTreeMap<i32, Buffer>,
    /// Writes in submission order; `written` advances as they complete, in that order.
    in_flight: VecDeque<InFlight>,
    /// Last offset handed to a write, per partition.
    submitted: BTreeMap<i32, i64>,
    /// Last offset durably written, per partition.
    written: BTreeMap<i32, i64>,
    stats: SinkStats,
}

/// Per partition of `topic`: the end of its gap-free chain of files (from its lowest file),
/// and the files beyond a gap. Files a compacted file covers are neither.
async fn chains(
    store: &Store,
    topic: &str,
) -> Result<(BTreeMap<i32, i64>, Vec<(i32, object_store::path::Path)>), SinkError> {
    let mut ends = BTreeMap::new();
    let mut orphans = Vec::new();
    for (partition, chain) in event_files::chains(topic_files(store, topic).await?) {
        ends.insert(partition, chain.end);
        orphans.extend(chain.beyond_gap.into_iter().map(|path| (partition, path)));
    }
    Ok((ends, orphans))
}

/// (partition, first, last) of each file in the partitions' chains (files a compacted file
/// covers, and files beyond a gap, left out): what `topic`'s events in the lake are.
pub async fn written_files(store: &Store, topic: &str) -> Result<Vec<(i32, i64, i64)>, SinkError> {
    Ok(written_files_and_newest(store, topic).await?.0)
}

/// [`written_files`], and when the newest file of `topic` was written (ms since the epoch; how
/// long the sink has been quiet), from one listing.
pub async fn written_files_and_newest(
    store: &Store,
    topic: &str,
) -> Result<(Vec<(i32, i64, i64)>, Option<i64>), SinkError> {
    let objects = topic_objects(store, topic).await?;
    let newest = objects
        .iter()
        .map(|(o, _)| o.last_modified.timestamp_millis())
        .max();
    let files = event_files::chains(
        objects
            .into_iter()
            .map(|(o, range)| (o.location, range))
            .collect(),
    )
    .into_iter()
    .flat_map(|(p, chain)| {
        chain
            .files
            .into_iter()
            .map(move |(_, (first, last))| (p, first, last))
    })
    .collect();
    Ok((files, newest))
}

/// Per partition, the offset after the last of `files` ((partition, first, last), as
/// [`written_files`] lists them): what `events/` holds up to.
pub fn next_offsets(files: &[(i32, i64, i64)]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for &(partition, _, last) in files {
        let n = next.entry(partition).or_insert(0);
        *n = (*n).max(last + 1);
    }
    next
}

/// Deletes every file written for `topic` (a pipeline run that rebuilds the lake from its
/// input); returns how many there were.
pub async fn clear(store: &Store, topic: &str) -> Result<usize, SinkError> {
    let files = topic_files(store, topic).await?;
    for (path, _) in &files {
        store
            .object_store()
            .delete(path)
            .await
            .map_err(|source| SinkError::Write {
                location: path.to_string(),
                source,
            })?;
    }
    Ok(files.len())
}

pub(crate) async fn topic_files(
    store: &Store,
    topic: &str,
) -> Result<Vec<(object_store::path::Path, (i32, i64, i64))>, SinkError> {
    Ok(topic_objects(store, topic)
        .await?
        .into_iter()
        .map(|(o, range)| (o.location, range))
        .collect())
}

async fn topic_objects(
    store: &Store,
    topic: &str,
) -> Result<Vec<(object_store::ObjectMeta, (i32, i64, i64))>, SinkError> {
    let prefix = store.path(EVENTS_DIR);
    let objects: Vec<_> = store
        .object_store()
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|source| SinkError::List {
            location: store.url(EVENTS_DIR),
            source,
        })?;
    Ok(objects
        .into_iter()
        .filter_map(|o| {
            let range = parse_file_name(topic, o.location.filename()?)?;
            Some((o, range))
        })
        .collect())
}

/// Snappy (as the seed's Spark sink): files hold a day of one partition, often small, where
/// zstd's per-column context setup cost more than its better ratio saves.
fn writer_properties() -> WriterProperties {
    lake_columns(WriterProperties::builder(), &event_schema())
        .set_compression(Compression::SNAPPY)
        .set_created_by(format!("recsys {}", env!("CARGO_PKG_VERSION")))
        .build()
}

pub(crate) fn encode(batches: &[RecordBatch], location: &str) -> Result<Bytes, SinkError> {
    let encode_err = |source| SinkError::Encode {
        location: location.to_string(),
        source,
    };
    // Room for the whole file up front (the bench's files measured about 3.5 KB plus 56 bytes
    // per event), so the buffer is not regrown and copied while the writer fills it.
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut out = Vec::with_capacity(8192 + rows * 64);
    let mut writer = ArrowWriter::try_new(&mut out, event_schema(), Some(writer_properties()))
        .map_err(encode_err)?;
    for batch in batches {
        writer.write(batch).map_err(encode_err)?;
    }
    writer.close().map_err(encode_err)?;
    Ok(Bytes::from(out))
}

impl Sink {
    /// A sink for `topic` writing into `store`, resuming after what the store already holds.
    /// Call [`Sink::reload`] for the partitions it will write before pushing to them.
    pub async fn open(store: Store, topic: &str, policy: FlushPolicy) -> Result<Sink, SinkError> {
        let (written, _) = chains(&store, topic).await?;
        Ok(Sink {
            store,
            topic: topic.to_string(),
            policy: FlushPolicy {
                in_flight: policy.in_flight.max(1),
                ..policy
            },
            buffers: BTreeMap::new(),
            in_flight: VecDeque::new(),
            submitted: BTreeMap::new(),
            written,
            stats: SinkStats::default(),
        })
    }

    pub fn stats(&self) -> SinkStats {
        self.stats
    }

    /// Last offset durably written for `partition`.
    pub fn written(&self, partition: i32) -> Option<i64> {
        self.written.get(&partition).copied()
    }

    /// The offset the next new row of `partition` must have (after written and buffered rows).
    pub fn next_offset(&self, partition: i32) -> i64 {
        let buffered = self.buffers.get(&partition).map(|b| b.last);
        buffered
            .or(self.submitted.get(&partition).copied())
            .or(self.written(partition))
            .map_or(0, |o| o + 1)
    }

    /// Rows buffered and not yet written.
    pub fn buffered_rows(&self) -> usize {
        self.buffers.values().map(|b| b.rows).sum()
    }

    /// Partitions newly owned: drops their buffers, re-reads what the store holds for them
    /// (another sink may have written them since) and deletes their files beyond a gap.
    pub async fn reload(&mut self, partitions: &[i32]) -> Result<(), SinkError> {
        self.forget(partitions);
        let (written, orphans) = chains(&self.store, &self.topic).await?;
        for (partition, path) in orphans {
            if partitions.contains(&partition) {
                tracing::warn!(file = %path, "deleting a file written beyond a gap by a crashed sink (never acknowledged)");
                self.store
                    .object_store()
                    .delete(&path)
                    .await
                    .map_err(|source| SinkError::Write {
                        location: path.to_string(),
                        source,
                    })?;
            }
        }
        for p in partitions {
            self.submitted.remove(p);
            match written.get(p) {
                Some(&last) => self.written.insert(*p, last),
                None => self.written.remove(p),
            };
        }
        Ok(())
    }

    /// Partitions no longer owned: their buffered rows are dropped unwritten (uncommitted, so
    /// the next owner reads them again).
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.buffers.remove(p);
        }
    }

    /// Adds a batch of one partition's events ([`event_schema`], offsets increasing). Rows the
    /// store or the buffer already holds are dropped. Returns the partitions' last written
    /// offsets when this push caused writes.
    pub async fn push(
        &mut self,
        partition: i32,
        batch: RecordBatch,
    ) -> Result<Vec<(i32, i64)>, SinkError> {
        let mut flushed = Vec::new();
        let cols = EventColumns::new(&batch);
        let offsets = cols.offsets();
        let next = self.next_offset(partition);
        let skip = offsets.partition_point(|&o| o < next);
        self.stats.duplicates += skip as u64;
        if let Some(w) = offsets[skip..].windows(2).find(|w| w[1] <= w[0]) {
            return Err(SinkError::OutOfOrder {
                partition,
                offset: w[1],
                previous: w[0],
            });
        }
        let ts = cols.timestamps();
        let mut start = skip;
        while start < batch.num_rows() {
            let day = ts[start].div_euclid(MICROS_PER_DAY);
            let end = start
                + ts[start..]
                    .iter()
                    .position(|t| t.div_euclid(MICROS_PER_DAY) != day)
                    .unwrap_or(ts.len() - start);
            if self.buffers.get(&partition).is_some_and(|b| b.day != day) {
                flushed.extend(self.flush_partition(partition).await?);
            }
            let buffer = self.buffers.entry(partition).or_insert_with(|| Buffer {
                day,
                batches: Vec::new(),
                rows: 0,
                first: offsets[start],
                last: offsets[start],
                since: Instant::now(),
            });
            buffer.batches.push(batch.slice(start, end - start));
            buffer.rows += end - start;
            buffer.last = offsets[end - 1];
            if buffer.rows >= self.policy.rows {
                flushed.extend(self.flush_partition(partition).await?);
            }
            start = end;
        }
        Ok(flushed)
    }

    /// Writes the buffers older than the flush interval; returns the writes completed so far.
    pub async fn flush_due(&mut self) -> Result<Vec<(i32, i64)>, SinkError> {
        let due: Vec<i32> = self
            .buffers
            .iter()
            .filter(|(_, b)| b.since.elapsed() >= self.policy.interval)
            .map(|(p, _)| *p)
            .collect();
        let mut done = Vec::new();
        for p in due {
            done.extend(self.flush_partition(p).await?);
        }
        done.extend(self.complete(false).await?);
        Ok(done)
    }

    /// Writes every buffer and waits for every write.
    pub async fn flush_all(&mut self) -> Result<Vec<(i32, i64)>, SinkError> {
        let all: Vec<i32> = self.buffers.keys().copied().collect();
        let mut done = Vec::new();
        for p in all {
            done.extend(self.flush_partition(p).await?);
        }
        done.extend(self.finish_writes().await?);
        Ok(done)
    }

    /// Takes the writes that completed, in submission order (all of them when `all`); returns
    /// (partition, last offset) of each.
    async fn complete(&mut self, all: bool) -> Result<Vec<(i32, i64)>, SinkError> {
        let mut done = Vec::new();
        while let Some(front) = self.in_flight.front() {
            if !all && !front.task.is_finished() && self.in_flight.len() < self.policy.in_flight {
                break;
            }
            let write = self.in_flight.pop_front().expect("checked");
            let bytes = write.task.await.expect("write task does not panic")?;
            self.written.insert(write.partition, write.last);
            if self.submitted.get(&write.partition) == Some(&write.last) {
                self.submitted.remove(&write.partition);
            }
            self.stats.files += 1;
            self.stats.rows += write.rows;
            self.stats.bytes += bytes;
            done.push((write.partition, write.last));
        }
        Ok(done)
    }

    /// Starts writing `partition`'s buffer as one file (waiting while `in_flight` writes are
    /// running); returns the writes completed meanwhile.
    async fn flush_partition(&mut self, partition: i32) -> Result<Vec<(i32, i64)>, SinkError> {
        let Some(buffer) = self.buffers.remove(&partition) else {
            return Ok(Vec::new());
        };
        let date = date_string(buffer.day * MICROS_PER_DAY);
        let rel = format!(
            "{EVENTS_DIR}/date={date}/{}",
            file_name(&self.topic, partition, buffer.first, buffer.last)
        );
        let store = self.store.clone();
        let batches = buffer.batches;
        let task = tokio::spawn(async move {
            let location = store.url(&rel);
            let loc = location.clone();
            let bytes = tokio::task::spawn_blocking(move || {
                let merged =
                    concat_batches(&event_schema(), &batches).map_err(|e| SinkError::Encode {
                        location: loc.clone(),
                        source: e.into(),
                    })?;
                encode(&[merged], &loc)
            })
            .await
            .expect("encoding task does not panic")?;
            let size = bytes.len() as u64;
            store
                .object_store()
                .put(&store.path(&rel), PutPayload::from(bytes))
                .await
                .map_err(|source| SinkError::Write { location, source })?;
            tracing::debug!(file = %rel, "written");
            Ok(size)
        });
        self.submitted.insert(partition, buffer.last);
        self.in_flight.push_back(InFlight {
            partition,
            last: buffer.last,
            rows: buffer.rows as u64,
            task,
        });
        // A partition's first file lands before any other of its files is started: the chain
        // then starts at a file that was really first, and a later gap is always seen.
        let anchored = self.written.contains_key(&partition);
        self.complete(!anchored).await
    }

    /// Waits for every write in flight; returns (partition, last offset) of each.
    pub async fn finish_writes(&mut self) -> Result<Vec<(i32, i64)>, SinkError> {
        self.complete(true).await
    }
}

/// Checks that the files of `topic` cover each partition's offsets from 0 with no gap (files a
/// compacted file covers aside); returns the offsets covered per partition (tests and
/// `recsys bench ingest`).
pub async fn check_coverage(store: &Store, topic: &str) -> Result<BTreeMap<i32, u64>, String> {
    let files = topic_files(store, topic).await.map_err(|e| e.to_string())?;
    let mut covered = BTreeMap::new();
    for (partition, chain) in event_files::chains(files) {
        let start = chain.files.first().map_or(0, |(_, (first, _))| *first);
        if start != 0 {
            return Err(format!(
                "partition {partition}: the first file starts at offset {start}, expected 0"
            ));
        }
        if let Some(path) = chain.beyond_gap.first() {
            return Err(format!(
                "partition {partition}: {path} starts past offset {}, the end of the files before it",
                chain.end
            ));
        }
        covered.insert(partition, (chain.end + 1) as u64);
    }
    Ok(covered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Action, Event, EventBuilder};

    fn batch(offsets: std::ops::Range<i64>, day: i64) -> RecordBatch {
        let mut b = EventBuilder::default();
        for o in offsets {
            let e = Event {
                user_id: format!("u{o}"),
                track_id: "t".into(),
                artist_id: "a".into(),
                timestamp: day * MICROS_PER_DAY + o,
                action: Action::Listen,
                source: "test".into(),
                duration_s: 0.0,
                total_duration_s: 0.0,
            };
            b.push(&e, 0, o);
        }
        b.finish()
    }

    fn policy(in_flight: usize) -> FlushPolicy {
        FlushPolicy {
            rows: 1_000,
            interval: Duration::from_secs(60),
            in_flight,
        }
    }

    #[tokio::test]
    async fn resumes_after_the_gap_free_chain_and_deletes_files_beyond_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let mut sink = Sink::open(store.clone(), "t", policy(4)).await.unwrap();
        sink.reload(&[0]).await.unwrap();
        // Two days: a date change closes the first file.
        assert!(sink.push(0, batch(0..10, 14_000)).await.unwrap().is_empty());
        // The partition's first file lands alone, before the push returns.
        assert_eq!(
            sink.push(0, batch(10..15, 14_001)).await.unwrap(),
            vec![(0, 9)]
        );
        assert_eq!(sink.flush_all().await.unwrap(), vec![(0, 14)]);
        assert_eq!(
            check_coverage(&store, "t").await.unwrap(),
            BTreeMap::from([(0, 15)])
        );

        // A crash with writes in flight can leave a later file without the one before it.
        let date = |day: i64| date_string(day * MICROS_PER_DAY);
        let first = store.path(&format!(
            "{EVENTS_DIR}/date={}/{}",
            date(14_000),
            file_name("t", 0, 0, 9)
        ));
        let bytes = store
            .object_store()
            .get(&first)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let orphan = store.path(&format!(
            "{EVENTS_DIR}/date={}/{}",
            date(14_001),
            file_name("t", 0, 20, 29)
        ));
        store
            .object_store()
            .put(&orphan, bytes.into())
            .await
            .unwrap();
        assert!(check_coverage(&store, "t").await.is_err());

        let mut sink = Sink::open(store.clone(), "t", policy(4)).await.unwrap();
        sink.reload(&[0]).await.unwrap();
        assert_eq!(sink.next_offset(0), 15);
        assert_eq!(
            check_coverage(&store, "t").await.unwrap(),
            BTreeMap::from([(0, 15)])
        );
        // Redelivered rows are dropped; new ones continue the chain.
        sink.push(0, batch(12..20, 14_001)).await.unwrap();
        sink.flush_all().await.unwrap();
        assert_eq!(sink.stats().duplicates, 3);
        assert_eq!(
            check_coverage(&store, "t").await.unwrap(),
            BTreeMap::from([(0, 20)])
        );
    }
}
