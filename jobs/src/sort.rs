//! The sort job: clean listens → `sorted/listens/part-NNNNN.parquet`, each file ordered by
//! (timestamp, user, track, …) and covering its own time range, the ranges increasing with N.
//!
//! It is the merge phase of a distributed external sort. The clean job already wrote every chunk
//! as a sorted run with a sparse index of its timestamps in the footer ([`crate::runs`]). Here:
//!
//! 1. the client reads only the runs' footers and places `N - 1` cut points so that every range
//!    holds about the same number of rows (no data is scanned);
//! 2. one job runs a task per group of consecutive ranges (two groups per task slot, so the
//!    slots stay busy): it reads from every run just the rows the index says may fall in its
//!    span, trims them exactly, merges the runs and writes one file per range.
//!
//! No shuffle, and no task ever merges everything: each row is read once (plus at most one index
//! stride per run at each group edge) and written once. A task reads each run once for all its
//! ranges, so a run's dictionary pages are decoded once per group, not once per file.

use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType, UInt64Type};
use datafusion::common::{exec_datafusion_err, exec_err};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_plan::metrics::BaselineMetrics;
use datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection, RowSelector};
use parquet::file::metadata::PageIndexPolicy;
use recsys_core::Store;
use recsys_core::schema::{CLEAN_DIR, SORTED_DIR, listen_schema};
use serde::{Deserialize, Serialize};

use crate::lake::{LakeFileReader, clear, list};
use crate::runs::{SORT_ORDER, SORTED_BY_KEY, SPARSE_INDEX_KEY, SparseIndex, sort_ordering};
use crate::worklist::{Work, WorkExec, task_store, work_list};
use crate::write::{ParquetWriterExec, Payload, SplitSpec, WriteSpec};
use crate::{Cluster, JobError};

/// Rows per sorted file the job aims for when the caller does not choose.
pub const DEFAULT_ROWS_PER_FILE: u64 = 500_000;
/// Name of the range column (dropped from the written files).
const RANGE: &str = "__recsys_range";

#[derive(Debug, Clone)]
pub struct SortedFile {
    pub path: String,
    pub rows: u64,
}

#[derive(Debug, Clone)]
pub struct SortSummary {
    pub rows: u64,
    pub files: Vec<SortedFile>,
    /// Cut points between consecutive files (µs since the epoch).
    pub boundaries: Vec<i64>,
    pub elapsed: Duration,
}

/// A sorted run of the clean output, known from its footer.
#[derive(Debug, Clone)]
struct Run {
    path: String,
    size: u64,
    index: SparseIndex,
}

/// The rows `[start, end)` of one run that one range needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSlice {
    pub path: String,
    pub size: u64,
    pub start: u64,
    pub end: u64,
}

/// One unit of work: consecutive ranges `first, first + 1, …` covering `[lo, hi)`, split at
/// `cuts`, and where their rows are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeTask {
    pub first: usize,
    pub lo: Option<i64>,
    pub hi: Option<i64>,
    /// Cut points between this task's ranges, increasing (one fewer than its ranges).
    pub cuts: Vec<i64>,
    pub slices: Vec<RunSlice>,
}

/// Range tasks per task slot: enough to even out a slow slot, few enough that each run is
/// read only a few times.
const GROUPS_PER_SLOT: usize = 2;

/// Runs `[lo, hi)` through a k-way merge: serialised by the plan codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeRangeSpec {
    /// Store holding the runs (`file:///` or `s3://bucket`).
    pub store_url: String,
}

/// Runs the sort job on `cluster`, replacing `sorted/listens/` in `lake`. `files` fixes the number
/// of output files; by default one per [`DEFAULT_ROWS_PER_FILE`] rows, at least two.
pub async fn run_sort(
    cluster: &Cluster,
    lake: &Store,
    files: Option<usize>,
) -> Result<SortSummary, JobError> {
    cluster.check_lake(lake)?;
    let started = Instant::now();
    let runs = read_runs(lake).await?;
    let rows: u64 = runs.iter().map(|r| r.index.rows).sum();
    let n_files = files
        .unwrap_or_else(|| rows.div_ceil(DEFAULT_ROWS_PER_FILE).max(2) as usize)
        .clamp(1, 4096);
    let boundaries = cut_points(&runs, rows, n_files);
    let tasks = range_tasks(&runs, &boundaries, GROUPS_PER_SLOT * cluster.parallelism());
    tracing::debug!(elapsed = ?started.elapsed(), runs = runs.len(), ranges = boundaries.len() + 1, tasks = tasks.len(), "sort: planned from footers");

    let names: BTreeMap<i64, String> = (0..=boundaries.len())
        .map(|i| (i as i64, format!("part-{i:05}.parquet")))
        .collect();
    let merge = Arc::new(MergeRangeExec::new(
        work_list(&tasks)?,
        MergeRangeSpec {
            store_url: lake.base_url().to_string(),
        },
    ));
    let store = lake.object_store();
    clear(store.as_ref(), &lake.path(SORTED_DIR)).await?;
    let plan: Arc<dyn ExecutionPlan> = Arc::new(ParquetWriterExec::try_new(
        merge,
        WriteSpec {
            store_url: lake.base_url().to_string(),
            dir: lake.path(SORTED_DIR).to_string(),
            split: SplitSpec {
                column: RANGE.to_string(),
                names,
            },
            sorted_runs: true,
            payload: Payload::Records,
        },
    )?);
    let mut written = Vec::new();
    for batch in cluster.run(plan).await? {
        let file = batch.column(0).as_string::<i32>();
        let n = batch.column(1).as_primitive::<UInt64Type>();
        for i in 0..batch.num_rows() {
            written.push(SortedFile {
                path: file.value(i).to_string(),
                rows: n.value(i),
            });
        }
    }
    written.sort_by(|a, b| a.path.cmp(&b.path));
    let total: u64 = written.iter().map(|f| f.rows).sum();
    if total != rows {
        return Err(JobError::Invariant(format!(
            "sorted {total} rows out of {rows} clean rows"
        )));
    }
    Ok(SortSummary {
        rows,
        files: written,
        boundaries,
        elapsed: started.elapsed(),
    })
}

/// The clean output's runs, from their footers only.
async fn read_runs(lake: &Store) -> Result<Vec<Run>, JobError> {
    let store = lake.object_store();
    let mut runs = Vec::new();
    for object in list(store.as_ref(), &lake.path(CLEAN_DIR)).await? {
        if !object.location.as_ref().ends_with(".parquet") {
            continue;
        }
        let reader = LakeFileReader::new(store.clone(), object.location.clone(), object.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
        let kv = builder.metadata().file_metadata().key_value_metadata();
        let value = |key: &str| {
            kv.and_then(|kv| kv.iter().find(|e| e.key == key))
                .and_then(|e| e.value.clone())
        };
        if value(SORTED_BY_KEY).as_deref() != Some(SORT_ORDER.join(",").as_str()) {
            return Err(JobError::Invariant(format!(
                "`{}` is not a sorted run (written by an older clean?): run `recsys submit clean` again",
                object.location
            )));
        }
        let index: SparseIndex = value(SPARSE_INDEX_KEY)
            .and_then(|json| serde_json::from_str(&json).ok())
            .ok_or_else(|| {
                JobError::Invariant(format!("`{}` has no sparse index", object.location))
            })?;
        if index.rows > 0 {
            runs.push(Run {
                path: object.location.to_string(),
                size: object.size,
                index,
            });
        }
    }
    Ok(runs)
}

/// Cut points giving `files` ranges of about `rows / files` rows each, estimated from the runs'
/// indexes. Cuts are strictly increasing; data with fewer distinct instants gives fewer ranges.
fn cut_points(runs: &[Run], rows: u64, files: usize) -> Vec<i64> {
    if runs.is_empty() || files < 2 {
        return vec![];
    }
    let lo = runs.iter().map(|r| r.index.marks[0]).min().unwrap_or(0);
    let hi = runs.iter().map(|r| r.index.last).max().unwrap_or(0);
    let below = |x: i64| runs.iter().map(|r| r.index.estimate_below(x)).sum::<f64>();
    let mut cuts: Vec<i64> = Vec::with_capacity(files - 1);
    for k in 1..files {
        let target = rows as f64 * k as f64 / files as f64;
        // Smallest x in (lo, hi] with at least `target` rows below it.
        let (mut a, mut b) = (lo + 1, hi);
        while a < b {
            let mid = a + (b - a) / 2;
            if below(mid) >= target {
                b = mid
            } else {
                a = mid + 1
            }
        }
        if a > lo && a <= hi && cuts.last().is_none_or(|&last| a > last) {
            cuts.push(a);
        }
    }
    cuts
}

/// The ranges between consecutive cut points, in `groups` tasks of consecutive ranges (as
/// many ranges each as can be), with the run slices each task must read.
fn range_tasks(runs: &[Run], cuts: &[i64], groups: usize) -> Vec<RangeTask> {
    let ranges = cuts.len() + 1;
    let groups = groups.clamp(1, ranges);
    (0..groups)
        .map(|g| {
            let first = g * ranges / groups;
            let end = (g + 1) * ranges / groups;
            let lo = first.checked_sub(1).map(|j| cuts[j]);
            let hi = cuts.get(end - 1).copied();
            let slices = runs
                .iter()
                .filter_map(|run| {
                    let (start, end) = run.index.rows_between(lo, hi);
                    (end > start).then(|| RunSlice {
                        path: run.path.clone(),
                        size: run.size,
                        start,
                        end,
                    })
                })
                .collect();
            RangeTask {
                first,
                lo,
                hi,
                cuts: cuts[first..end - 1].to_vec(),
                slices,
            }
        })
        .collect()
}

/// The range of each row of a batch sorted by timestamp: `first` plus the cuts at or below it.
fn range_column(ts: &[i64], first: usize, cuts: &[i64]) -> Int64Array {
    let mut ranges = Vec::with_capacity(ts.len());
    let mut at = 0;
    for (k, &cut) in cuts.iter().enumerate() {
        let below = at + ts[at..].partition_point(|&t| t < cut);
        ranges.resize(below, (first + k) as i64);
        at = below;
    }
    ranges.resize(ts.len(), (first + cuts.len()) as i64);
    Int64Array::from(ranges)
}

fn output_schema() -> SchemaRef {
    let mut fields: Vec<Field> = listen_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(RANGE, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Merges, for each task of its work list, the run slices of the task's ranges into one sorted
/// stream, each row tagged with its range's index.
pub type MergeRangeExec = WorkExec<MergeRangeSpec>;

impl Work for MergeRangeSpec {
    type Unit = RangeTask;
    const NAME: &'static str = "MergeRangeExec";

    fn schema(&self) -> SchemaRef {
        output_schema()
    }

    fn run(
        self: Arc<Self>,
        task: RangeTask,
        context: Arc<TaskContext>,
        metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let store = task_store(&context, &self.store_url)?;
        Ok(
            futures::stream::once(async move { merge_range(store, task, &context, metrics).await })
                .try_flatten()
                .boxed(),
        )
    }
}

/// The rows of `task`'s ranges, merged from its run slices, with the range column appended.
async fn merge_range(
    store: Arc<dyn ObjectStore>,
    task: RangeTask,
    context: &TaskContext,
    metrics: BaselineMetrics,
) -> Result<SendableRecordBatchStream> {
    let schema = listen_schema();
    let batch_size = context.session_config().batch_size();
    let mut streams = Vec::with_capacity(task.slices.len());
    for slice in &task.slices {
        streams.push(read_slice(store.clone(), slice, task.lo, task.hi, batch_size).await?);
    }
    let (first, cuts) = (task.first, task.cuts);
    let ts_index = schema.index_of(SORT_ORDER[0])?;
    let tag = move |batch: RecordBatch| -> Result<RecordBatch> {
        let ts = batch
            .column(ts_index)
            .as_primitive::<TimestampMicrosecondType>()
            .values();
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(range_column(ts, first, &cuts)));
        Ok(RecordBatch::try_new(output_schema(), columns)?)
    };
    if streams.is_empty() {
        return Ok(Box::pin(RecordBatchStreamAdapter::new(
            output_schema(),
            futures::stream::empty(),
        )));
    }
    let ordering = sort_ordering(&schema)?;
    let reservation =
        MemoryConsumer::new(format!("MergeRangeExec[{first}]")).register(context.memory_pool());
    let merged = StreamingMergeBuilder::new()
        .with_streams(streams)
        .with_schema(schema)
        .with_expressions(&ordering)
        .with_metrics(metrics)
        .with_batch_size(batch_size)
        .with_reservation(reservation)
        .build()?;
    Ok(Box::pin(RecordBatchStreamAdapter::new(
        output_schema(),
        merged.map(move |b| b.and_then(&tag)),
    )))
}

/// Reads rows `[start, end)` of one run and keeps those with a timestamp in `[lo, hi)` (the run
/// is sorted, so they are contiguous).
async fn read_slice(
    store: Arc<dyn ObjectStore>,
    slice: &RunSlice,
    lo: Option<i64>,
    hi: Option<i64>,
    batch_size: usize,
) -> Result<SendableRecordBatchStream> {
    let reader = LakeFileReader::new(store, Path::from(slice.path.as_str()), slice.size);
    let builder = ParquetRecordBatchStreamBuilder::new_with_options(
        reader,
        ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional),
    )
    .await
    .map_err(|e| exec_datafusion_err!("cannot open run `{}`: {e}", slice.path))?;
    let selection = RowSelection::from(vec![
        RowSelector::skip(slice.start as usize),
        RowSelector::select((slice.end - slice.start) as usize),
    ]);
    let stream = builder
        .with_row_selection(selection)
        .with_batch_size(batch_size)
        .build()?;
    let schema = listen_schema();
    let ts_index = schema.index_of(SORT_ORDER[0])?;
    let out_schema = schema.clone();
    let trimmed = stream
        .map_err(|e| DataFusionError::External(Box::new(e)))
        .and_then(move |batch| {
            let schema = out_schema.clone();
            async move {
                let ts = batch
                    .column(ts_index)
                    .as_primitive::<TimestampMicrosecondType>()
                    .values();
                let start = lo.map_or(0, |lo| ts.partition_point(|&v| v < lo));
                let end = hi.map_or(ts.len(), |hi| ts.partition_point(|&v| v < hi));
                let batch = batch.slice(start, end.saturating_sub(start));
                // The lake's own schema: ids and names are never null.
                Ok(RecordBatch::try_new(schema, batch.columns().to_vec())?)
            }
        })
        .try_filter(|b| futures::future::ready(b.num_rows() > 0));
    if slice.end < slice.start {
        return exec_err!("bad slice of `{}`", slice.path);
    }
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, trimmed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[i64]) -> Run {
        Run {
            path: "r".into(),
            size: 0,
            index: SparseIndex {
                every: 10,
                rows: values.len() as u64,
                marks: values.iter().step_by(10).copied().collect(),
                last: *values.last().unwrap(),
            },
        }
    }

    #[test]
    fn cuts_balance_rows_across_runs() {
        let a: Vec<i64> = (0..1000).collect();
        let b: Vec<i64> = (500..1500).collect();
        let runs = [run(&a), run(&b)];
        let cuts = cut_points(&runs, 2000, 4);
        assert_eq!(cuts.len(), 3);
        // True rows below each cut, counted exactly.
        for (k, &cut) in cuts.iter().enumerate() {
            let below = a.iter().chain(&b).filter(|&&v| v < cut).count() as i64;
            assert!(
                (below - 500 * (k as i64 + 1)).abs() <= 20,
                "cut {cut}: {below} rows below"
            );
        }
        let tasks = range_tasks(&runs, &cuts, 8);
        assert_eq!(tasks.len(), 4);
        assert!(tasks[0].lo.is_none() && tasks[3].hi.is_none());
        assert!(tasks.iter().all(|t| t.cuts.is_empty()));
        // The first range needs nothing from the second run beyond its first index stride.
        assert!(tasks[0].slices.iter().all(|s| s.end > s.start));

        // Two groups of two ranges: each spans its ranges and splits them at the inner cut.
        let grouped = range_tasks(&runs, &cuts, 2);
        assert_eq!(grouped.len(), 2);
        assert_eq!((grouped[0].first, grouped[1].first), (0, 2));
        assert_eq!((grouped[0].lo, grouped[0].hi), (None, Some(cuts[1])));
        assert_eq!((grouped[1].lo, grouped[1].hi), (Some(cuts[1]), None));
        assert_eq!(grouped[0].cuts, vec![cuts[0]]);
        assert_eq!(grouped[1].cuts, vec![cuts[2]]);
    }

    #[test]
    fn rows_are_tagged_with_their_range() {
        let ts = [1, 2, 5, 5, 7, 9, 12];
        let tag = |cuts: &[i64]| range_column(&ts, 3, cuts).values().to_vec();
        assert_eq!(tag(&[]), vec![3; 7]);
        assert_eq!(tag(&[5, 9]), vec![3, 3, 4, 4, 4, 5, 5]);
        // Cuts outside the batch: every row before, or after, them.
        assert_eq!(tag(&[0]), vec![4; 7]);
        assert_eq!(tag(&[13, 20]), vec![3; 7]);
        assert_eq!(tag(&[0, 13]), vec![4; 7]);
    }

    #[test]
    fn degenerate_inputs() {
        assert!(cut_points(&[], 0, 4).is_empty());
        let same = run(&[7; 100]);
        assert!(cut_points(std::slice::from_ref(&same), 100, 4).is_empty());
        assert_eq!(range_tasks(&[same], &[], 4).len(), 1);
    }
}
