//! `TsvScanExec`: reads Last.fm TSV files in byte-range chunks, one chunk per partition, so a
//! cluster parses one file in parallel. Accepted lines stream out as Arrow batches; rejected lines
//! go, with their position and reason, to one small Parquet part per chunk that
//! `super::finish_rejects` turns into the final rejects table.
//!
//! Chunk ownership (the Hadoop rule): a chunk `[start, end)` owns every line whose first byte lies
//! in it. It skips the partial line it starts in and reads past `end` to finish its last line, so
//! every line is parsed exactly once whatever the chunk boundaries.

use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;

use arrow::array::{
    Array, BinaryBuilder, DictionaryArray, Int64Array, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, UInt32Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::{Bytes, BytesMut};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use recsys_core::schema::timestamp_type;
use recsys_core::time::TimestampParser;
use serde::{Deserialize, Serialize};

use super::tsv::{RejectReason, lines, split_line, split_tail};
use crate::intern::Interner;
use crate::worklist::{Work, WorkExec};
use crate::write::{Payload, write_parquet_file};

/// Extra bytes read past a chunk's end to finish its last line (more is fetched if needed).
const OVERHANG: u64 = 64 * 1024;

/// Parquet key-value metadata of a rejects part: how many lines its chunk owned.
pub(crate) const LINES_KEY: &str = "recsys.lines";

/// One byte range of one input file: a unit of work of the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Position of the chunk in the whole input; names its outputs.
    pub ordinal: usize,
    /// Index of the file in the job's input list (orders rejects parts).
    pub file_index: usize,
    /// Object path of the file inside the input store.
    pub path: String,
    /// File size in bytes.
    pub file_size: u64,
    /// Index of this chunk within its file.
    pub chunk_index: usize,
    pub start: u64,
    pub end: u64,
}

/// Where the scan reads and writes: serialised as is by the plan codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TsvScanSpec {
    /// Store holding the input files (`file:///` or `s3://bucket`).
    pub input_url: String,
    /// Store receiving the rejects parts.
    pub output_url: String,
    /// Object path of the folder receiving this run's rejects parts.
    pub rejects_parts_dir: String,
}

/// Splits files into chunks of about `chunk_size` bytes (at least one chunk per file).
pub fn plan_chunks(files: &[(String, u64)], chunk_size: u64) -> Vec<Chunk> {
    let chunk_size = chunk_size.max(1);
    let mut chunks = Vec::new();
    for (file_index, (path, size)) in files.iter().enumerate() {
        let n = size.div_ceil(chunk_size).max(1);
        for i in 0..n {
            chunks.push(Chunk {
                ordinal: chunks.len(),
                file_index,
                path: path.clone(),
                file_size: *size,
                chunk_index: i as usize,
                start: i * chunk_size,
                end: ((i + 1) * chunk_size).min(*size),
            });
        }
    }
    chunks
}

/// Column carrying each row's chunk ordinal, so writers can name files after chunks.
pub const CHUNK_COLUMN: &str = "__recsys_chunk";

/// The output schema of the scan: parsed fields (MBIDs possibly empty) and the chunk ordinal.
/// The string fields are dictionaries over the chunk's distinct values: the user id over the
/// chunk's users, the four artist and track fields over its distinct (artist, track) tails,
/// all four sharing one key array (see [`crate::udf`], which derives ids once per tail).
pub fn raw_listen_schema() -> SchemaRef {
    let text = || DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new("user_id", text(), false),
        Field::new("ts", timestamp_type(), false),
        Field::new("artist_mbid", text(), false),
        Field::new("artist_name", text(), false),
        Field::new("track_mbid", text(), false),
        Field::new("track_name", text(), false),
        Field::new(CHUNK_COLUMN, DataType::Int64, false),
    ]))
}

/// Schema of a rejects part (line numbers are still chunk-relative).
pub(crate) fn reject_part_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("line_in_chunk", DataType::UInt64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
    ]))
}

/// Parses the chunks of its input work list (see [`crate::worklist`]).
pub type TsvScanExec = WorkExec<TsvScanSpec>;

impl Work for TsvScanSpec {
    type Unit = Chunk;
    const NAME: &'static str = "TsvScanExec";

    fn schema(&self) -> SchemaRef {
        raw_listen_schema()
    }

    fn run(
        self: Arc<Self>,
        chunk: Chunk,
        context: Arc<TaskContext>,
        _metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let input = context
            .runtime_env()
            .object_store(ObjectStoreUrl::parse(&self.input_url)?)?;
        let output = context
            .runtime_env()
            .object_store(ObjectStoreUrl::parse(&self.output_url)?)?;
        let part = Path::from(self.rejects_parts_dir.as_str()).join(format!(
            "{:05}-{:06}.parquet",
            chunk.file_index, chunk.chunk_index
        ));
        Ok(scan_chunk(input, output, chunk, part).boxed())
    }
}

/// Parses one chunk into one batch (none if it has no accepted line) and writes its rejects
/// part.
fn scan_chunk(
    input: Arc<dyn ObjectStore>,
    output: Arc<dyn ObjectStore>,
    chunk: Chunk,
    part: Path,
) -> impl futures::Stream<Item = Result<RecordBatch>> + Send {
    futures::stream::once(async move {
        let bytes = read_owned_lines(input.as_ref(), &chunk).await?;
        let mut parser = ChunkParser::new(bytes, chunk.ordinal as i64);
        let batch = parser.parse()?;
        let rejects = parser.rejects_batch()?;
        let metadata = vec![(LINES_KEY.to_string(), parser.lines().to_string())];
        write_parquet_file(
            output,
            &part,
            rejects.schema(),
            vec![rejects],
            Payload::Records,
            metadata,
        )
        .await?;
        Ok(batch)
    })
    .try_filter(|batch| futures::future::ready(batch.num_rows() > 0))
}

/// Reads the bytes of the lines `chunk` owns (possibly empty), ending with the last line's `\n`
/// unless the file ends without one.
pub(crate) async fn read_owned_lines(store: &dyn ObjectStore, chunk: &Chunk) -> Result<Bytes> {
    let path = Path::from(chunk.path.as_str());
    let read_start = chunk.start.saturating_sub(1);
    let mut read_end = (chunk.end + OVERHANG).min(chunk.file_size);
    if chunk.start >= chunk.end {
        return Ok(Bytes::new());
    }
    let fetch = |from: u64, to: u64| {
        let path = path.clone();
        async move {
            store
                .get_range(&path, from..to)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))
        }
    };
    let mut buf = fetch(read_start, read_end).await?;
    // First owned line: the file start, or just after the first '\n' at or after start - 1.
    let begin = if chunk.start == 0 {
        0
    } else {
        match memchr::memchr(b'\n', &buf) {
            Some(i) => i + 1,
            None => return Ok(Bytes::new()),
        }
    };
    if read_start + begin as u64 >= chunk.end {
        return Ok(Bytes::new());
    }
    // The last owned line ends at the first '\n' at or after end - 1.
    let mut search_from = (chunk.end - 1 - read_start) as usize;
    loop {
        if let Some(i) = memchr::memchr(b'\n', &buf[search_from..]) {
            return Ok(buf.slice(begin..search_from + i + 1));
        }
        if read_end >= chunk.file_size {
            return Ok(buf.slice(begin..));
        }
        let more_end = (read_end + OVERHANG.max(read_end - read_start)).min(chunk.file_size);
        let more = fetch(read_end, more_end).await?;
        search_from = buf.len();
        let mut joined = BytesMut::with_capacity(buf.len() + more.len());
        joined.extend_from_slice(&buf);
        joined.extend_from_slice(&more);
        buf = joined.freeze();
        read_end = more_end;
    }
}

/// Turns the owned bytes of one chunk into a listen batch, collecting rejects on the way.
pub(crate) struct ChunkParser {
    bytes: Bytes,
    ordinal: i64,
    line: u64,
    reject_lines: UInt64Builder,
    reject_reasons: StringBuilder,
    reject_raw: BinaryBuilder,
}

fn utf8(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
}

impl ChunkParser {
    pub(crate) fn new(bytes: Bytes, ordinal: i64) -> Self {
        ChunkParser {
            bytes,
            ordinal,
            line: 0,
            reject_lines: UInt64Builder::new(),
            reject_reasons: StringBuilder::new(),
            reject_raw: BinaryBuilder::new(),
        }
    }

    /// Lines seen so far (all of them once `parse` returned).
    pub(crate) fn lines(&self) -> u64 {
        self.line
    }

    fn reject(&mut self, line: &[u8], reason: RejectReason) {
        self.reject_lines.append_value(self.line);
        self.reject_reasons.append_value(reason.as_str());
        self.reject_raw.append_value(line);
    }

    /// Parses every line of the chunk: the accepted ones as one batch of
    /// [`raw_listen_schema`]. Each distinct user id and (artist, track) tail is interned, and
    /// checked for UTF-8, once.
    pub(crate) fn parse(&mut self) -> Result<RecordBatch> {
        let bytes = self.bytes.clone();
        let mut users = Interner::new();
        let mut tails = Interner::new();
        let mut user_keys = Vec::new();
        let mut tail_keys = Vec::new();
        let mut ts = Vec::new();
        let mut timestamps = TimestampParser::default();
        for line in lines(&bytes) {
            let parsed = split_line(line, &mut timestamps).and_then(|f| {
                let user = users.intern_if(f.user_id, utf8);
                let tail = tails.intern_if(f.tail, utf8);
                match (user, tail) {
                    (Some(user), Some(tail)) => Ok((user, f.ts_micros, tail)),
                    _ => Err(RejectReason::InvalidUtf8),
                }
            });
            match parsed {
                Ok((user, micros, tail)) => {
                    user_keys.push(user);
                    ts.push(micros);
                    tail_keys.push(tail);
                }
                Err(reason) => self.reject(line, reason),
            }
            self.line += 1;
        }
        let users = users.to_strings()?;
        let tails = tails.to_strings()?;
        let order = listen_order(&ts, &user_keys, &users, &tail_keys, &tails);
        let gather = |v: &[u32]| order.iter().map(|&r| v[r as usize]).collect::<Vec<u32>>();
        let user_keys = UInt32Array::from(gather(&user_keys));
        let tail_keys = UInt32Array::from(gather(&tail_keys));
        let ts: Vec<i64> = order.iter().map(|&r| ts[r as usize]).collect();
        let mut fields: [StringBuilder; 4] = std::array::from_fn(|_| StringBuilder::new());
        for tail in tails.iter().flatten() {
            for (builder, field) in fields.iter_mut().zip(split_tail(tail)) {
                builder.append_value(field);
            }
        }
        let [artist_mbid, artist_name, track_mbid, track_name] = fields.map(|mut values| {
            DictionaryArray::try_new(tail_keys.clone(), Arc::new(values.finish()))
        });
        let rows = ts.len();
        Ok(RecordBatch::try_new(
            raw_listen_schema(),
            vec![
                Arc::new(DictionaryArray::try_new(user_keys, Arc::new(users))?),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
                Arc::new(artist_mbid?),
                Arc::new(artist_name?),
                Arc::new(track_mbid?),
                Arc::new(track_name?),
                Arc::new(Int64Array::from_value(self.ordinal, rows)),
            ],
        )?)
    }

    pub(crate) fn rejects_batch(&mut self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            reject_part_schema(),
            vec![
                Arc::new(self.reject_lines.finish()),
                Arc::new(self.reject_reasons.finish()),
                Arc::new(self.reject_raw.finish()),
            ],
        )?)
    }
}

/// The rows of a chunk (numbers into its parsed columns) in the clean plan's sort order:
/// timestamp, user id, track id, …. The plan's `SortExec` then only has to confirm the order (one
/// comparison per row) instead of sorting every chunk with a comparator per column.
///
/// Logs come as per-user runs (Last.fm-1K lists each user's listens newest first), so the
/// stable sort of (timestamp, user rank) keys mostly merges those runs. Rows equal on both, a
/// user's repeated listens within one second, are ordered by the rest of the sort order (track
/// id, artist id, names).
fn listen_order(
    ts: &[i64],
    user_keys: &[u32],
    users: &StringArray,
    tail_keys: &[u32],
    tails: &StringArray,
) -> Vec<u32> {
    let mut by_name: Vec<u32> = (0..users.len() as u32).collect();
    by_name.sort_unstable_by(|&a, &b| users.value(a as usize).cmp(users.value(b as usize)));
    let mut rank = vec![0u32; users.len()];
    for (r, &u) in by_name.iter().enumerate() {
        rank[u as usize] = r as u32;
    }
    let min = ts.iter().copied().min().unwrap_or(0);
    let span = ts.iter().copied().max().unwrap_or(0).abs_diff(min);
    let user_bits = u64::BITS - (users.len() as u64).leading_zeros();
    let fits = u64::BITS - span.leading_zeros() + user_bits <= u64::BITS;
    let user_of = |row: usize| rank[user_keys[row] as usize];
    let mut rows = match fits {
        true => sorted_by_key(ts.len(), |row| {
            (ts[row].abs_diff(min) << user_bits) | user_of(row) as u64
        }),
        false => sorted_by_key(ts.len(), |row| (ts[row], user_of(row))),
    };
    let same = |a: u32, b: u32| {
        ts[a as usize] == ts[b as usize] && user_keys[a as usize] == user_keys[b as usize]
    };
    let mut start = 0;
    while start < rows.len() {
        let mut end = start + 1;
        while end < rows.len() && same(rows[start], rows[end]) {
            end += 1;
        }
        if end - start > 1 {
            // The rest of the sort order: track id, artist id, names.
            rows[start..end].sort_by_cached_key(|&row| {
                let tail = tails.value(tail_keys[row as usize] as usize);
                let [artist_mbid, artist_name, track_mbid, track_name] = split_tail(tail);
                (
                    recsys_core::ids::track_id(track_mbid, artist_name, track_name),
                    recsys_core::ids::artist_id(artist_mbid, artist_name),
                    artist_name,
                    track_name,
                )
            });
        }
        start = end;
    }
    rows
}

/// Row numbers `0..n` sorted by `key` with an adaptive merge sort, for which runs of ascending
/// keys cost little. Rows newest first (as Last.fm-1K lists them) are keyed from the last row
/// backwards, so a user's listens form one ascending run even where two share a second (a
/// descending run only counts while strictly descending).
fn sorted_by_key<K: Ord + Copy>(n: usize, key: impl Fn(usize) -> K) -> Vec<u32> {
    let mut keyed: Vec<(K, u32)> = (0..n).map(|row| (key(row), row as u32)).collect();
    let descents = keyed.windows(2).filter(|w| w[0].0 > w[1].0).count();
    if descents > n / 2 {
        keyed.reverse();
    }
    keyed.sort_by_key(|&(k, _)| k);
    keyed.into_iter().map(|(_, row)| row).collect()
}

#[cfg(test)]
mod tests {
    use super::super::tsv::parse_line;
    use super::*;
    use arrow::array::AsArray;
    use object_store::memory::InMemory;
    use object_store::{ObjectStoreExt, PutPayload};
    use proptest::prelude::*;

    async fn owned(store: &InMemory, data: &[u8], chunk_size: u64) -> Vec<u8> {
        let mut all = Vec::new();
        for chunk in plan_chunks(&[("f.tsv".to_string(), data.len() as u64)], chunk_size) {
            all.extend_from_slice(&read_owned_lines(store, &chunk).await.unwrap());
        }
        all
    }

    fn check_chunking(data: Vec<u8>, chunk_size: u64) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = InMemory::new();
            store
                .put(&Path::from("f.tsv"), PutPayload::from(data.clone()))
                .await
                .unwrap();
            assert_eq!(
                owned(&store, &data, chunk_size).await,
                data,
                "chunk size {chunk_size}"
            );
        });
    }

    #[test]
    fn chunks_cover_every_line_once() {
        let data = b"a\tb\nccc\n\ndddd\ne".to_vec();
        for size in 1..=data.len() as u64 + 1 {
            check_chunking(data.clone(), size);
        }
        check_chunking(b"\n\n\n".to_vec(), 1);
        check_chunking(Vec::new(), 4);
    }

    #[test]
    fn long_lines_fetch_more() {
        let mut data = vec![b'x'; 300_000];
        data.push(b'\n');
        data.extend_from_slice(b"tail\n");
        check_chunking(data, 1000);
    }

    #[test]
    fn parser_counts_every_line() {
        let text = b"u\t2009-05-04T23:08:57Z\ta\tA\tt\tT\nbroken line\nu\t2009-05-04T23:08:58Z\ta\tA\tt\tT\r\n\n";
        let mut p = ChunkParser::new(Bytes::from_static(text), 0);
        let rows = p.parse().unwrap().num_rows();
        let rejects = p.rejects_batch().unwrap();
        assert_eq!(rows, 2);
        assert_eq!(p.lines(), 4);
        assert_eq!(rejects.num_rows(), 2);
    }

    /// Rows leave the parser in (timestamp, user id, track id) order, whatever order the lines
    /// came in and however many ties they have.
    fn check_listen_order(lines: &[(u8, u8, u8, bool)]) {
        let text: String = lines
            .iter()
            .map(|&(user, second, track, mbid)| {
                let track_mbid = if mbid {
                    format!("mbid-{track}")
                } else {
                    String::new()
                };
                format!(
                    "user_{user}\t2009-05-04T23:08:{:02}Z\t\tArtist\t{track_mbid}\tSong {track}\n",
                    second % 60
                )
            })
            .collect();
        let mut p = ChunkParser::new(Bytes::from(text), 0);
        let batch = p.parse().unwrap();
        let plain = |i: usize| {
            let c = arrow::compute::cast(batch.column(i), &DataType::Utf8).unwrap();
            c.as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>()
        };
        let (users, mbids, names) = (plain(0), plain(4), plain(5));
        let ts = batch
            .column(1)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let keys: Vec<(i64, String, String)> = (0..batch.num_rows())
            .map(|i| {
                let track = recsys_core::ids::track_id(&mbids[i], "Artist", &names[i]);
                (ts.value(i), users[i].clone(), track)
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys.len(), lines.len());
        assert_eq!(keys, sorted);
    }

    #[test]
    fn rows_leave_in_listen_order() {
        // Per-user runs, newest first, with same-second repeats of different tracks.
        check_listen_order(&[
            (2, 9, 1, true),
            (2, 9, 0, false),
            (2, 5, 3, true),
            (1, 9, 2, false),
            (1, 9, 2, true),
            (1, 9, 1, true),
            (1, 1, 0, true),
        ]);
    }

    proptest! {
        #[test]
        fn any_lines_leave_in_listen_order(lines in proptest::collection::vec((0u8..4, 0u8..6, 0u8..5, any::<bool>()), 0..60)) {
            check_listen_order(&lines);
        }

        #[test]
        fn any_bytes_any_chunking(data in proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\t'), Just(b'\r'), any::<u8>()], 0..300), chunk in 1u64..64) {
            check_chunking(data.clone(), chunk);
            // clean + rejected = lines, whatever the bytes.
            let mut p = ChunkParser::new(Bytes::from(data.clone()), 3);
            let rows = p.parse().unwrap().num_rows() as u64;
            let rejected = p.rejects_batch().unwrap().num_rows() as u64;
            prop_assert_eq!(rows + rejected, p.lines());
            prop_assert_eq!(p.lines(), lines(&data).count() as u64);
        }

        /// The parser checks UTF-8 once per distinct value, yet rejects exactly the lines, for
        /// exactly the reasons, that `parse_line` (which checks every line) gives.
        #[test]
        fn reasons_match_parse_line(fields in proptest::collection::vec(proptest::collection::vec(0usize..6, 6..8), 1..40)) {
            const POOL: [&[u8]; 6] = [b"a", b"", b"  ", b"\xff", "é".as_bytes(), b"2009-05-04T23:08:57Z"];
            let text: Vec<u8> = fields
                .iter()
                .flat_map(|f| {
                    let mut line = f.iter().map(|&i| POOL[i].to_vec()).collect::<Vec<_>>().join(&b'\t');
                    line.push(b'\n');
                    line
                })
                .collect();
            let mut p = ChunkParser::new(Bytes::from(text.clone()), 0);
            let rows = p.parse().unwrap().num_rows();
            let rejects = p.rejects_batch().unwrap();
            let got: Vec<(u64, String)> = (0..rejects.num_rows())
                .map(|i| {
                    let line = rejects.column(0).as_primitive::<arrow::datatypes::UInt64Type>().value(i);
                    (line, rejects.column(1).as_string::<i32>().value(i).to_string())
                })
                .collect();
            let expected: Vec<(u64, String)> = lines(&text)
                .enumerate()
                .filter_map(|(i, l)| parse_line(l).err().map(|r| (i as u64, r.as_str().to_string())))
                .collect();
            prop_assert_eq!(rows + expected.len(), fields.len());
            prop_assert_eq!(got, expected);
        }
    }
}
