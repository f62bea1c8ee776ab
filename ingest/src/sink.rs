//! The exactly-once Parquet sink: events of a log (Kafka topic, or the embedded log) become
//! `events/date=YYYY-MM-DD/<topic>-p<partition>-<first offset>-<last offset>.parquet`.
//!
//! The object store is the source of truth for what was written:
//! * each file holds a contiguous run of one partition's offsets, all of one date (a buffer is
//!   flushed when the date changes, when it reaches `flush_rows`, or when it is older than
//!   `flush_interval`), written with a single atomic `put`;
//! * a partition's files are written one after another, so the highest last offset among its
//!   files is everything written: [`Sink::open`] and [`Sink::reload`] read it from the listing,
//!   and [`Sink::push`] drops every row at or below it;
//! * the consumer commits an offset to Kafka only after the file holding it is durable, and
//!   resumes from the committed offset. A crash between the write and the commit re-delivers
//!   rows the store already has, and they are dropped: no gap, no duplicate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use recsys_core::Store;
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

/// Buffers events per partition and writes them as described in the module docs.
pub struct Sink {
    store: Store,
    topic: String,
    policy: FlushPolicy,
    buffers: BTreeMap<i32, Buffer>,
    /// Last offset durably written, per partition.
    written: BTreeMap<i32, i64>,
    stats: SinkStats,
}

/// `<topic>-p<partition>-<first>-<last>.parquet`, zero-padded so names sort by offset.
fn file_name(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{topic}-p{partition:04}-{first:020}-{last:020}.parquet")
}

/// (partition, first, last) of a file this sink wrote for `topic`.
fn parse_file_name(topic: &str, name: &str) -> Option<(i32, i64, i64)> {
    let rest = name.strip_prefix(topic)?.strip_prefix("-p")?;
    let rest = rest.strip_suffix(".parquet")?;
    let mut parts = rest.splitn(3, '-');
    let partition = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((partition, first, last))
}

/// Last offset written per partition of `topic`, from the files under `events/`.
pub async fn written_offsets(store: &Store, topic: &str) -> Result<BTreeMap<i32, i64>, SinkError> {
    let mut written = BTreeMap::new();
    for (partition, _, last) in written_files(store, topic).await? {
        let entry = written.entry(partition).or_insert(last);
        *entry = (*entry).max(last);
    }
    Ok(written)
}

/// (partition, first, last) of every file written for `topic`.
pub async fn written_files(store: &Store, topic: &str) -> Result<Vec<(i32, i64, i64)>, SinkError> {
    Ok(topic_files(store, topic)
        .await?
        .into_iter()
        .map(|(_, range)| range)
        .collect())
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

async fn topic_files(
    store: &Store,
    topic: &str,
) -> Result<Vec<(object_store::path::Path, (i32, i64, i64))>, SinkError> {
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
            Some((o.location, range))
        })
        .collect())
}

fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid zstd level"),
        ))
        .set_created_by(format!("recsys {}", env!("CARGO_PKG_VERSION")))
        .build()
}

fn encode(batches: &[RecordBatch], location: &str) -> Result<Bytes, SinkError> {
    let encode_err = |source| SinkError::Encode {
        location: location.to_string(),
        source,
    };
    let mut out = Vec::new();
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
    pub async fn open(store: Store, topic: &str, policy: FlushPolicy) -> Result<Sink, SinkError> {
        let written = written_offsets(&store, topic).await?;
        Ok(Sink {
            store,
            topic: topic.to_string(),
            policy,
            buffers: BTreeMap::new(),
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
        buffered.or(self.written(partition)).map_or(0, |o| o + 1)
    }

    /// Rows buffered and not yet written.
    pub fn buffered_rows(&self) -> usize {
        self.buffers.values().map(|b| b.rows).sum()
    }

    /// Partitions newly owned: drops their buffers and re-reads what the store holds for them
    /// (another sink may have written them since).
    pub async fn reload(&mut self, partitions: &[i32]) -> Result<(), SinkError> {
        self.forget(partitions);
        let written = written_offsets(&self.store, &self.topic).await?;
        for p in partitions {
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

    /// Writes the buffers older than the flush interval.
    pub async fn flush_due(&mut self) -> Result<Vec<(i32, i64)>, SinkError> {
        let due: Vec<i32> = self
            .buffers
            .iter()
            .filter(|(_, b)| b.since.elapsed() >= self.policy.interval)
            .map(|(p, _)| *p)
            .collect();
        self.flush_partitions(&due).await
    }

    /// Writes every buffer.
    pub async fn flush_all(&mut self) -> Result<Vec<(i32, i64)>, SinkError> {
        let all: Vec<i32> = self.buffers.keys().copied().collect();
        self.flush_partitions(&all).await
    }

    async fn flush_partitions(&mut self, partitions: &[i32]) -> Result<Vec<(i32, i64)>, SinkError> {
        let mut flushed = Vec::new();
        for p in partitions {
            flushed.extend(self.flush_partition(*p).await?);
        }
        Ok(flushed)
    }

    /// Writes `partition`'s buffer as one file; returns (partition, last offset written).
    async fn flush_partition(&mut self, partition: i32) -> Result<Option<(i32, i64)>, SinkError> {
        let Some(buffer) = self.buffers.remove(&partition) else {
            return Ok(None);
        };
        let date = date_string(buffer.day * MICROS_PER_DAY);
        let rel = format!(
            "{EVENTS_DIR}/date={date}/{}",
            file_name(&self.topic, partition, buffer.first, buffer.last)
        );
        let location = self.store.url(&rel);
        let batches = buffer.batches;
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
        self.store
            .object_store()
            .put(&self.store.path(&rel), PutPayload::from(bytes))
            .await
            .map_err(|source| SinkError::Write { location, source })?;
        tracing::debug!(file = %rel, rows = buffer.rows, "written");
        self.written.insert(partition, buffer.last);
        self.stats.files += 1;
        self.stats.rows += buffer.rows as u64;
        self.stats.bytes += size;
        Ok(Some((partition, buffer.last)))
    }
}

/// Checks that the files of `topic` cover each partition's offsets from 0 with no gap and no
/// overlap; returns the offsets covered per partition (tests and `recsys bench ingest`).
pub async fn check_coverage(store: &Store, topic: &str) -> Result<BTreeMap<i32, u64>, String> {
    let mut files = written_files(store, topic)
        .await
        .map_err(|e| e.to_string())?;
    files.sort();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    for (partition, first, last) in files {
        let expected = next.entry(partition).or_insert(0);
        if first != *expected {
            return Err(format!(
                "partition {partition}: a file starts at offset {first}, expected {expected}"
            ));
        }
        *expected = last + 1;
    }
    Ok(next.into_iter().map(|(p, n)| (p, n as u64)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip_and_sort() {
        let a = file_name("music_log", 2, 0, 99);
        let b = file_name("music_log", 2, 100, 1_000);
        assert!(a < b);
        assert_eq!(parse_file_name("music_log", &b), Some((2, 100, 1_000)));
        assert_eq!(parse_file_name("other", &b), None);
        assert_eq!(
            parse_file_name("music_log", "music_log-p1-x-2.parquet"),
            None
        );
    }
}
