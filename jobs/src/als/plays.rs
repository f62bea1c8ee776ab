//! The plays of the ALS preparation, read from the lake's Parquet files the way the ETL reads
//! them (strings as their dictionaries: each distinct user, track and action of a column chunk
//! is looked up once, never once per row). Each play comes out with its user's number and
//! block (from the users' table the preparation wrote), its weight and time, its track as a
//! 64-bit id ([`crate::etl::id_hash`]) and the ties that order it. The first play of a track that a task
//! sends to a block also carries the track's id string: [`super::pairs`] names and orders the
//! tracks by it, while the shuffle moves no string per play.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringBuilder,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, Schema, SchemaRef};
use datafusion::common::exec_err;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::StreamExt;
use futures::stream::BoxStream;
use hashbrown::HashMap;
use object_store::ObjectStore;
use recsys_core::schema::col;
use serde::{Deserialize, Serialize};

use crate::etl::emit_when_done;
use crate::etl::fold::{DictIds, FileRef, Names, primitive, read_file, text, timestamps};
use crate::worklist::{Work, WorkExec, task_store};

/// Rows per batch the scan emits.
const OUT_ROWS: usize = 64 * 1024;

/// Reads the plays of a group of files (a work list's unit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayScan {
    pub store_url: String,
    /// The users' table: `user_id` and their number `u`.
    pub users: FileRef,
    /// Events (weighed by action, ordered by their place in the log) or sorted listens (each
    /// weighs 1).
    pub events: bool,
    /// The plays kept, [since, end) in µs; all when `None`.
    pub window: Option<(i64, i64)>,
    /// Users per block: a play goes to block `u / block_size`.
    pub block_size: i64,
}

pub type PlayScanExec = WorkExec<PlayScan>;

/// The plays: user number and block, weight, time (µs), track id hash, the track's id on
/// the first play of it a task sends to a block (null elsewhere), and for events the ties.
pub fn play_schema(events: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("u", DataType::Int32, false),
        Field::new("block", DataType::Int64, false),
        Field::new("w", DataType::Float64, false),
        Field::new(col::TS, DataType::Int64, false),
        Field::new("track_h", DataType::UInt64, false),
        Field::new(col::TRACK_ID, DataType::Utf8, true),
    ];
    if events {
        fields.push(Field::new(col::LOG_PARTITION, DataType::Int32, false));
        fields.push(Field::new(col::LOG_OFFSET, DataType::Int64, false));
    }
    Arc::new(Schema::new(fields))
}

/// The weight of an event's play by its action: a completed play counts fully, a listen
/// half, anything else (a skip) not at all, though it still takes its place in the order.
fn weight(action: &[u8]) -> f64 {
    match action {
        b"complete" => 1.0,
        b"listen" => 0.5,
        _ => 0.0,
    }
}

/// A table the preparation wrote (users, items): its Int32 column `number` by its string
/// column `id`.
pub(crate) async fn read_numbers(
    store: Arc<dyn ObjectStore>,
    file: &FileRef,
    id: &str,
    number: &str,
) -> Result<HashMap<Vec<u8>, i32>> {
    let mut numbers = HashMap::new();
    let mut batches = read_file(store, file, &[id, number]).await?;
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        let ids = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
        let n = primitive::<Int32Type>(&batch, number, &file.path)?;
        for (id, n) in ids.as_string::<i32>().iter().zip(n.values()) {
            numbers.insert(id.unwrap_or_default().as_bytes().to_vec(), *n);
        }
    }
    Ok(numbers)
}

/// The (track, block) pairs a task has sent the track's id string to: a bit per track, per
/// block.
#[derive(Default)]
struct Sent(Vec<Vec<u64>>);

impl Sent {
    /// Whether this is the first play of `track` for `block` (marking it sent).
    fn first(&mut self, track: u32, block: usize) -> bool {
        if self.0.len() <= block {
            self.0.resize_with(block + 1, Vec::new);
        }
        let bits = &mut self.0[block];
        let (word, bit) = (track as usize / 64, 1u64 << (track % 64));
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let first = bits[word] & bit == 0;
        bits[word] |= bit;
        first
    }
}

/// Builds [`play_schema`] batches.
struct PlayRows {
    events: bool,
    u: Vec<i32>,
    block: Vec<i64>,
    w: Vec<f64>,
    ts: Vec<i64>,
    track_h: Vec<u64>,
    track_id: StringBuilder,
    partition: Vec<i32>,
    offset: Vec<i64>,
}

impl PlayRows {
    fn new(events: bool) -> Self {
        PlayRows {
            events,
            u: Vec::new(),
            block: Vec::new(),
            w: Vec::new(),
            ts: Vec::new(),
            track_h: Vec::new(),
            track_id: StringBuilder::new(),
            partition: Vec::new(),
            offset: Vec::new(),
        }
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(std::mem::take(&mut self.u))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.block))),
            Arc::new(Float64Array::from(std::mem::take(&mut self.w))),
            Arc::new(Int64Array::from(std::mem::take(&mut self.ts))),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.track_h))),
            Arc::new(self.track_id.finish()),
        ];
        if self.events {
            columns.push(Arc::new(Int32Array::from(std::mem::take(
                &mut self.partition,
            ))));
            columns.push(Arc::new(Int64Array::from(std::mem::take(&mut self.offset))));
        }
        Ok(RecordBatch::try_new(play_schema(self.events), columns)?)
    }
}

impl Work for PlayScan {
    type Unit = Vec<FileRef>;
    const NAME: &'static str = "AlsPlayScanExec";

    fn schema(&self) -> SchemaRef {
        play_schema(self.events)
    }

    fn run(
        self: Arc<Self>,
        files: Vec<FileRef>,
        context: Arc<TaskContext>,
        metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let store = task_store(&context, &self.store_url)?;
        let output = metrics.clone();
        let batches = async move {
            let users = read_numbers(store.clone(), &self.users, col::USER_ID, "u").await?;
            let mut columns = vec![col::USER_ID, col::TRACK_ID, col::TS];
            if self.events {
                columns.extend([col::ACTION, col::LOG_PARTITION, col::LOG_OFFSET]);
            }
            let (mut user_ids, mut tracks, mut actions) =
                (Names::new(), Names::new(), Names::new());
            // By interned user id: their number when the users' table has them.
            let mut user_of: Vec<Option<i32>> = Vec::new();
            // By interned action.
            let mut weights: Vec<f64> = Vec::new();
            let mut sent = Sent::default();
            let mut rows = PlayRows::new(self.events);
            let mut out = Vec::new();
            for file in &files {
                let path = file.path.as_str();
                let (mut u, mut t, mut a): (DictIds, DictIds, DictIds) = Default::default();
                let mut input = read_file(store.clone(), file, &columns).await?;
                while let Some(batch) = input.next().await {
                    let batch = batch?;
                    let _timer = metrics.elapsed_compute().timer();
                    let us = u.rows(&batch, col::USER_ID, &mut user_ids, path)?;
                    let ts = t.rows(&batch, col::TRACK_ID, &mut tracks, path)?;
                    let times = timestamps(&batch, path)?;
                    while user_of.len() < user_ids.hashes.len() {
                        let id = user_ids.strings.get(user_of.len() as u32);
                        user_of.push(users.get(id).copied());
                    }
                    let events = if self.events {
                        let acts = a.rows(&batch, col::ACTION, &mut actions, path)?;
                        while weights.len() < actions.hashes.len() {
                            weights.push(weight(actions.strings.get(weights.len() as u32)));
                        }
                        Some((
                            acts,
                            primitive::<Int32Type>(&batch, col::LOG_PARTITION, path)?,
                            primitive::<Int64Type>(&batch, col::LOG_OFFSET, path)?,
                        ))
                    } else {
                        None
                    };
                    for i in 0..batch.num_rows() {
                        let time = times[i];
                        if self
                            .window
                            .is_some_and(|(since, end)| time < since || time >= end)
                        {
                            continue;
                        }
                        let Some(user) = user_of[us[i] as usize] else {
                            return exec_err!(
                                "`{path}` has a play of user `{}`, who is not in the users' \
                                 table `{}` (a file changed during the preparation?)",
                                text(&user_ids, us[i]),
                                self.users.path
                            );
                        };
                        let block = i64::from(user) / self.block_size;
                        let track = ts[i];
                        rows.u.push(user);
                        rows.block.push(block);
                        rows.ts.push(time);
                        rows.track_h.push(tracks.hashes[track as usize]);
                        rows.track_id.append_option(
                            sent.first(track, block as usize)
                                .then(|| text(&tracks, track)),
                        );
                        match &events {
                            Some((acts, partition, offset)) => {
                                rows.w.push(weights[acts[i] as usize]);
                                rows.partition.push(partition.value(i));
                                rows.offset.push(offset.value(i));
                            }
                            None => rows.w.push(1.0),
                        }
                        if rows.ts.len() == OUT_ROWS {
                            out.push(rows.finish()?);
                        }
                    }
                }
            }
            if !rows.ts.is_empty() {
                out.push(rows.finish()?);
            }
            Ok(out)
        };
        Ok(emit_when_done(output, batches))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_track_is_sent_once_per_block() {
        let mut sent = Sent::default();
        assert!(sent.first(3, 0) && sent.first(3, 2) && sent.first(200, 0));
        assert!(!sent.first(3, 0) && !sent.first(3, 2) && !sent.first(200, 0));
        assert!(sent.first(3, 1));
    }

    #[test]
    fn plays_weigh_by_action() {
        assert_eq!(
            [b"complete".as_slice(), b"listen", b"skip", b""].map(weight),
            [1.0, 0.5, 0.0, 0.0]
        );
    }

    #[test]
    fn a_missing_column_is_named() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("x", DataType::Int32, false)])),
            vec![Arc::new(Int32Array::from(vec![1]))],
        )
        .unwrap();
        let e = primitive::<Int32Type>(&batch, col::LOG_PARTITION, "f.parquet").unwrap_err();
        assert!(
            e.to_string().contains("`log_partition` of `f.parquet`"),
            "{e}"
        );
    }
}
