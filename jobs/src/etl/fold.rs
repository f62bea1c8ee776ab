//! The ETL's first stage: folds over the lake's Parquet files, a group of files per task.
//!
//! Strings are read as the files store them, as dictionaries: each distinct value of a column
//! chunk is interned and hashed once, never once per row. [`PlayFold`] turns the plays into
//! rows of 64-bit ids ([`id_hash`] of user, track and artist) with their time and duration, to
//! be shuffled by user; the first row of each distinct string in a task also carries the string
//! itself, so later stages can name what they count without every row carrying text.
//! [`SpellFold`] counts the (title, artist, artist id) spellings of every track in the sorted
//! listens, as partial rows ([`super::partial`]) for the final stage.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, RecordBatch, StringBuilder, UInt64Builder,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Schema, SchemaRef, TimestampMicrosecondType,
};
use datafusion::common::{exec_datafusion_err, exec_err};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use hashbrown::HashMap;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use recsys_core::schema::col;
use serde::{Deserialize, Serialize};

use super::partial::PartialRows;
use super::{emit_when_done, id_hash};
use crate::intern::Interner;
use crate::lake::LakeFileReader;
use crate::worklist::{Work, WorkExec, task_store};

/// Rows per batch a fold emits.
const OUT_ROWS: usize = 64 * 1024;

/// One Parquet object of the lake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    pub size: u64,
}

impl From<&ObjectMeta> for FileRef {
    fn from(o: &ObjectMeta) -> Self {
        FileRef {
            path: o.location.to_string(),
            size: o.size,
        }
    }
}

/// The rows [`PlayFold`] emits: one per play. The id columns are [`id_hash`]es; `user_id`,
/// `track_id` and `artist_id` hold the string of an id on the first row of it a task emits, and
/// are null elsewhere.
pub fn play_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("user_h", DataType::UInt64, false),
        Field::new("track_h", DataType::UInt64, false),
        Field::new("artist_h", DataType::UInt64, false),
        Field::new(col::TS, DataType::Int64, false),
        Field::new("total", DataType::Float64, true),
        Field::new(col::USER_ID, DataType::Utf8, true),
        Field::new(col::TRACK_ID, DataType::Utf8, true),
        Field::new(col::ARTIST_ID, DataType::Utf8, true),
    ]))
}

/// The distinct strings of one column seen by a task: a dense id each, with its hash and
/// whether its string was sent on yet.
#[derive(Debug, Default)]
pub(crate) struct Names {
    pub(crate) strings: Interner,
    pub(crate) hashes: Vec<u64>,
    sent: Vec<bool>,
}

impl Names {
    pub(crate) fn new() -> Self {
        Names {
            strings: Interner::new(),
            ..Default::default()
        }
    }

    fn id(&mut self, value: &[u8]) -> u32 {
        let id = self.strings.intern(value);
        if id as usize == self.hashes.len() {
            self.hashes.push(id_hash(value));
            self.sent.push(false);
        }
        id
    }

    /// The string of `id` the first time it is asked for, `None` after.
    fn first_time(&mut self, id: u32) -> Option<&str> {
        let sent = std::mem::replace(&mut self.sent[id as usize], true);
        (!sent).then(|| text(self, id))
    }
}

/// The [`Names`] ids of a string column's rows. The reader hands out one dictionary per column
/// chunk; its values are interned once and reused while it lasts (the dictionary is kept, so
/// the buffers compared cannot be freed and their addresses reused by another).
#[derive(Debug, Default)]
pub(crate) struct DictIds {
    dict: Option<ArrayRef>,
    ids: Vec<u32>,
    /// Dictionaries interned (the reader builds one per batch of a chunk that is not
    /// dictionary-encoded: its files were written by another writer).
    interned: usize,
}

impl DictIds {
    pub(crate) fn rows(
        &mut self,
        batch: &RecordBatch,
        column: &str,
        names: &mut Names,
        file: &str,
    ) -> Result<Vec<u32>> {
        let array = batch
            .column_by_name(column)
            .ok_or_else(|| exec_datafusion_err!("`{file}` has no column `{column}`"))?;
        let Some(dict) = array.as_dictionary_opt::<Int32Type>() else {
            return exec_err!(
                "column `{column}` of `{file}` is {}, not text",
                array.data_type()
            );
        };
        if dict.null_count() > 0 {
            return exec_err!("column `{column}` of `{file}` has nulls");
        }
        let Some(values) = dict.values().as_string_opt::<i32>() else {
            return exec_err!("column `{column}` of `{file}` is not UTF-8 text");
        };
        // Each batch wraps the chunk's dictionary in a new array over the same buffers.
        let same = |known: &ArrayRef| {
            let known = known.as_string::<i32>();
            known.len() == values.len()
                && known.values().as_ptr() == values.values().as_ptr()
                && known.offsets().as_ptr() == values.offsets().as_ptr()
        };
        if !self.dict.as_ref().is_some_and(same) {
            self.ids = values
                .iter()
                .map(|v| names.id(v.unwrap_or_default().as_bytes()))
                .collect();
            self.dict = Some(dict.values().clone());
            self.interned += 1;
        }
        Ok(dict
            .keys()
            .values()
            .iter()
            .map(|&k| self.ids[k as usize])
            .collect())
    }
}

/// The batches of `columns` of one file, strings as dictionaries (their Parquet encoding).
pub(crate) async fn read_file(
    store: Arc<dyn ObjectStore>,
    file: &FileRef,
    columns: &[&str],
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    let cannot =
        |e: parquet::errors::ParquetError| exec_datafusion_err!("cannot read `{}`: {e}", file.path);
    let mut reader = LakeFileReader::new(store, Path::from(file.path.as_str()), file.size);
    let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
        .await
        .map_err(cannot)?;
    let hint: Vec<Field> = meta
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                f.as_ref().clone().with_data_type(DataType::Dictionary(
                    Box::new(DataType::Int32),
                    Box::new(DataType::Utf8),
                ))
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    let roots = columns
        .iter()
        .map(|c| {
            meta.schema()
                .index_of(c)
                .map_err(|_| exec_datafusion_err!("`{}` has no column `{c}`", file.path))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = ArrowReaderMetadata::try_new(
        meta.metadata().clone(),
        ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(hint))),
    )
    .map_err(cannot)?;
    let mask = ProjectionMask::roots(meta.parquet_schema(), roots);
    let path = file.path.clone();
    Ok(
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader, meta)
            .with_projection(mask)
            .with_batch_size(OUT_ROWS)
            .build()
            .map_err(cannot)?
            .map_err(move |e| exec_datafusion_err!("cannot read `{path}`: {e}"))
            .boxed(),
    )
}

/// The `ts` column of a batch of `file`: microseconds, never null.
pub(crate) fn timestamps<'a>(batch: &'a RecordBatch, file: &str) -> Result<&'a [i64]> {
    match batch
        .column_by_name(col::TS)
        .and_then(|ts| ts.as_primitive_opt::<TimestampMicrosecondType>())
    {
        Some(ts) if ts.null_count() == 0 => Ok(ts.values()),
        _ => exec_err!("column `ts` of `{file}` is missing, has nulls or is not in microseconds"),
    }
}

/// The primitive column `name` of a batch of `file`, never null.
pub(crate) fn primitive<T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &RecordBatch,
    name: &str,
    file: &str,
) -> Result<arrow::array::PrimitiveArray<T>> {
    match batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<T>())
    {
        Some(c) if c.null_count() == 0 => Ok(c.clone()),
        _ => exec_err!("column `{name}` of `{file}` is missing, has nulls or has the wrong type"),
    }
}

/// `batch` written as the Parquet file `name` of `lake` (a local folder), for tests.
#[cfg(test)]
pub(crate) fn write_test_file(
    lake: &recsys_core::Store,
    name: &str,
    batch: RecordBatch,
) -> FileRef {
    let path = std::path::Path::new(lake.location()).join(name);
    let file = std::fs::File::create(&path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    FileRef {
        path: lake.path(name).to_string(),
        size: std::fs::metadata(&path).unwrap().len(),
    }
}

/// The string `id` of `names` stands for.
pub(crate) fn text(names: &Names, id: u32) -> &str {
    // Interned from a UTF-8 string column.
    std::str::from_utf8(names.strings.get(id)).unwrap_or_default()
}

/// Stage one of the ETL over the plays: events (`listen` and `complete` are plays, durations
/// count when positive) or sorted listens (every row a play, no duration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayFold {
    pub store_url: String,
    pub events: bool,
}

pub type PlayFoldExec = WorkExec<PlayFold>;

/// Builds [`play_schema`] batches.
#[derive(Default)]
struct PlayRows {
    user: UInt64Builder,
    track: UInt64Builder,
    artist: UInt64Builder,
    ts: Vec<i64>,
    total: Float64Builder,
    user_id: StringBuilder,
    track_id: StringBuilder,
    artist_id: StringBuilder,
}

impl PlayRows {
    fn finish(&mut self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            play_schema(),
            vec![
                Arc::new(self.user.finish()),
                Arc::new(self.track.finish()),
                Arc::new(self.artist.finish()),
                Arc::new(arrow::array::Int64Array::from(std::mem::take(&mut self.ts))),
                Arc::new(self.total.finish()),
                Arc::new(self.user_id.finish()),
                Arc::new(self.track_id.finish()),
                Arc::new(self.artist_id.finish()),
            ],
        )?)
    }
}

impl Work for PlayFold {
    type Unit = Vec<FileRef>;
    const NAME: &'static str = "EtlPlayFoldExec";

    fn schema(&self) -> SchemaRef {
        play_schema()
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
            let mut columns = vec![col::USER_ID, col::TRACK_ID, col::ARTIST_ID, col::TS];
            if self.events {
                columns.extend([col::ACTION, col::TOTAL_DURATION_S]);
            }
            let (mut users, mut tracks, mut artists) = (Names::new(), Names::new(), Names::new());
            let mut actions = Names::new();
            let mut is_play: Vec<bool> = Vec::new();
            let mut dictionaries = 0;
            let mut out = Vec::new();
            let mut rows = PlayRows::default();
            for file in &files {
                let (mut u, mut t, mut a, mut act): (DictIds, DictIds, DictIds, DictIds) =
                    Default::default();
                let mut input = read_file(store.clone(), file, &columns).await?;
                while let Some(batch) = input.next().await {
                    let batch = batch?;
                    let _timer = metrics.elapsed_compute().timer();
                    let path = file.path.as_str();
                    let us = DictIds::rows(&mut u, &batch, col::USER_ID, &mut users, path)?;
                    let ts = DictIds::rows(&mut t, &batch, col::TRACK_ID, &mut tracks, path)?;
                    let ar = DictIds::rows(&mut a, &batch, col::ARTIST_ID, &mut artists, path)?;
                    let times = timestamps(&batch, path)?;
                    let (plays, totals) = if self.events {
                        let acts =
                            DictIds::rows(&mut act, &batch, col::ACTION, &mut actions, path)?;
                        while is_play.len() < actions.hashes.len() {
                            let v = actions.strings.get(is_play.len() as u32);
                            is_play.push(v == b"listen" || v == b"complete");
                        }
                        let total = batch
                            .column_by_name(col::TOTAL_DURATION_S)
                            .and_then(|c| c.as_primitive_opt::<Float64Type>())
                            .ok_or_else(|| {
                                exec_datafusion_err!(
                                    "column `{}` of `{path}` is missing or not a double",
                                    col::TOTAL_DURATION_S
                                )
                            })?
                            .clone();
                        (Some(acts), Some(total))
                    } else {
                        (None, None)
                    };
                    for i in 0..batch.num_rows() {
                        if plays.as_ref().is_some_and(|p| !is_play[p[i] as usize]) {
                            continue;
                        }
                        rows.user.append_value(users.hashes[us[i] as usize]);
                        rows.track.append_value(tracks.hashes[ts[i] as usize]);
                        rows.artist.append_value(artists.hashes[ar[i] as usize]);
                        rows.ts.push(times[i]);
                        match totals.as_ref() {
                            Some(t) if t.is_valid(i) && t.value(i) > 0.0 => {
                                rows.total.append_value(t.value(i))
                            }
                            _ => rows.total.append_null(),
                        }
                        rows.user_id.append_option(users.first_time(us[i]));
                        rows.track_id.append_option(tracks.first_time(ts[i]));
                        rows.artist_id.append_option(artists.first_time(ar[i]));
                        if rows.ts.len() == OUT_ROWS {
                            out.push(rows.finish()?);
                        }
                    }
                }
                dictionaries += u.interned + t.interned + a.interned + act.interned;
            }
            tracing::debug!(files = files.len(), dictionaries, "etl: plays folded");
            if !rows.ts.is_empty() {
                out.push(rows.finish()?);
            }
            Ok(out)
        };
        Ok(emit_when_done(output, batches))
    }
}

/// Stage one of the ETL over the sorted listens: how often each track was listened to under
/// each (title, artist name, artist id), as spelling partial rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpellFold {
    pub store_url: String,
    /// Output files per table: partial rows carry the file their track goes to.
    pub files: usize,
}

pub type SpellFoldExec = WorkExec<SpellFold>;

impl Work for SpellFold {
    type Unit = Vec<FileRef>;
    const NAME: &'static str = "EtlSpellFoldExec";

    fn schema(&self) -> SchemaRef {
        super::partial::schema()
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
            let columns = [
                col::TRACK_ID,
                col::TRACK_NAME,
                col::ARTIST_NAME,
                col::ARTIST_ID,
            ];
            let mut names: [Names; 4] = std::array::from_fn(|_| Names::new());
            let mut counts: HashMap<[u32; 4], i64> = HashMap::new();
            let mut dictionaries = 0;
            for file in &files {
                let mut dicts: [DictIds; 4] = Default::default();
                let mut input = read_file(store.clone(), file, &columns).await?;
                while let Some(batch) = input.next().await {
                    let batch = batch?;
                    let _timer = metrics.elapsed_compute().timer();
                    let mut ids = Vec::with_capacity(4);
                    for ((dict, names), column) in dicts.iter_mut().zip(&mut names).zip(columns) {
                        ids.push(dict.rows(&batch, column, names, &file.path)?);
                    }
                    let [track, title, artist, artist_id] = &ids[..] else {
                        unreachable!("four columns");
                    };
                    for (((&t, &n), &a), &i) in track.iter().zip(title).zip(artist).zip(artist_id) {
                        *counts.entry([t, n, a, i]).or_default() += 1;
                    }
                }
                dictionaries += dicts.iter().map(|d| d.interned).sum::<usize>();
            }
            tracing::debug!(files = files.len(), dictionaries, "etl: spellings folded");
            let _timer = metrics.elapsed_compute().timer();
            let mut rows = PartialRows::new(self.files);
            let mut out = Vec::new();
            for ([track, title, artist, artist_id], n) in counts {
                let key = names[0].hashes[track as usize];
                rows.push_spelling(
                    key,
                    text(&names[0], track),
                    [
                        text(&names[1], title),
                        text(&names[2], artist),
                        text(&names[3], artist_id),
                    ],
                    n,
                );
                if rows.len() == OUT_ROWS {
                    out.push(rows.finish()?);
                }
            }
            if rows.len() > 0 {
                out.push(rows.finish()?);
            }
            Ok(out)
        };
        Ok(emit_when_done(output, batches))
    }
}
