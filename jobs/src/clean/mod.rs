//! The clean job: Last.fm TSV → typed Parquet (`clean/listens/`), every rejected line kept with
//! its file, line number and reason (`rejects/rejects.parquet`). Invariant, checked on every run:
//! clean rows + rejected lines = input lines.

pub mod scan;
pub mod tsv;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, BinaryBuilder, RecordBatch, StringBuilder, UInt64Builder};
use arrow::datatypes::UInt64Type;
use datafusion::common::DFSchema;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::col;
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use object_store::path::Path;
use recsys_core::Store;
use recsys_core::schema::{CLEAN_DIR, REJECTS_DIR, col as c, reject_schema};

use crate::lake::{clear, list, read_parquet};
use crate::runs::sort_ordering;
use crate::worklist::work_list;
use crate::write::{ParquetWriterExec, Payload, SplitSpec, WriteSpec, write_parquet_file};
use crate::{Cluster, JobError, udf};
use scan::{CHUNK_COLUMN, LINES_KEY, TsvScanExec, TsvScanSpec, plan_chunks, raw_listen_schema};
pub use tsv::RejectReason;

/// Smallest and largest chunk a task parses (the largest bounds memory per task).
const MIN_CHUNK: u64 = 4 << 20;
const MAX_CHUNK: u64 = 64 << 20;

/// The input of a clean run: TSV files in some store (the lake's `raw/`, or anywhere else).
#[derive(Debug, Clone)]
pub struct TsvInput {
    pub store: Store,
    /// (object path, size) of each file, in a stable order.
    pub files: Vec<(String, u64)>,
}

impl TsvInput {
    /// Finds the listening-log TSV files at `location`: one file, or every `.tsv` below a folder
    /// (the real archive's `userid-profile.tsv` is not a log and is skipped).
    pub async fn resolve(
        location: &str,
        s3: &recsys_core::S3Options,
    ) -> Result<TsvInput, JobError> {
        let local = std::path::Path::new(location);
        let (store, only) = if !location.contains("://") && local.is_file() {
            let parent = local
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .filter(|p| !p.is_empty());
            let name = local.file_name().map(|n| n.to_string_lossy().into_owned());
            (Store::open(parent.as_deref().unwrap_or("."), s3)?, name)
        } else {
            (Store::open(location, s3)?, None)
        };
        let objects = list(store.object_store().as_ref(), &store.path("")).await?;
        let files: Vec<(String, u64)> = objects
            .into_iter()
            .filter(|o| {
                let name = o.location.filename().unwrap_or("");
                match &only {
                    Some(only) => name == only,
                    None => name.ends_with(".tsv") && name != "userid-profile.tsv",
                }
            })
            .map(|o| (o.location.to_string(), o.size))
            .collect();
        if files.is_empty() {
            return Err(JobError::NoInput(format!(
                "no .tsv files at `{}` (run `recsys data generate` or `recsys data fetch`)",
                store.location()
            )));
        }
        Ok(TsvInput { store, files })
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|(_, s)| s).sum()
    }
}

#[derive(Debug, Clone)]
pub struct CleanSummary {
    pub input_files: usize,
    pub bytes_in: u64,
    pub lines: u64,
    pub clean_rows: u64,
    pub rejected: BTreeMap<RejectReason, u64>,
    pub files_written: usize,
    pub tasks: usize,
    pub elapsed: Duration,
}

impl CleanSummary {
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Builds the clean plan: chunks (a work list) → TSV scan → derived ids (our UDFs) → sorted →
/// one Parquet file (a sorted run) per chunk.
pub fn clean_plan(
    cluster: &Cluster,
    input: &TsvInput,
    lake: &Store,
    rejects_parts: &Path,
) -> Result<Arc<dyn ExecutionPlan>, JobError> {
    let chunk = (input.bytes() / (4 * cluster.parallelism() as u64)).clamp(MIN_CHUNK, MAX_CHUNK);
    let chunks = plan_chunks(&input.files, chunk);
    let names = chunks
        .iter()
        .map(|c| (c.ordinal as i64, format!("part-{:05}.parquet", c.ordinal)))
        .collect();
    let scan = Arc::new(TsvScanExec::new(
        work_list(&chunks)?,
        TsvScanSpec {
            input_url: input.store.base_url().to_string(),
            output_url: lake.base_url().to_string(),
            rejects_parts_dir: rejects_parts.to_string(),
        },
    ));
    let planner = cluster.planner()?;
    let state = planner.state();
    let schema = DFSchema::try_from(raw_listen_schema())?;
    let track_id = state.udf(udf::TRACK_ID)?;
    let artist_id = state.udf(udf::ARTIST_ID)?;
    let exprs = [
        (col("user_id"), c::USER_ID),
        (col("ts"), c::TS),
        (
            artist_id.call(vec![col("artist_mbid"), col("artist_name")]),
            c::ARTIST_ID,
        ),
        (col("artist_name"), c::ARTIST_NAME),
        (
            track_id.call(vec![
                col("track_mbid"),
                col("artist_name"),
                col("track_name"),
            ]),
            c::TRACK_ID,
        ),
        (col("track_name"), c::TRACK_NAME),
        (col(CHUNK_COLUMN), CHUNK_COLUMN),
    ];
    let projection = exprs
        .into_iter()
        .map(|(e, name)| {
            Ok(ProjectionExpr {
                expr: state.create_physical_expr(e, &schema)?,
                alias: name.to_string(),
            })
        })
        .collect::<Result<Vec<_>, JobError>>()?;
    let projected: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(projection, scan)?);
    // Each chunk leaves as a sorted run, so the sort job only has to merge.
    let ordering = sort_ordering(&projected.schema())?;
    let sorted = Arc::new(SortExec::new(ordering, projected).with_preserve_partitioning(true));
    Ok(Arc::new(ParquetWriterExec::try_new(
        sorted,
        WriteSpec {
            store_url: lake.base_url().to_string(),
            dir: lake.path(CLEAN_DIR).to_string(),
            split: SplitSpec {
                column: CHUNK_COLUMN.to_string(),
                names,
            },
            sorted_runs: true,
            payload: Payload::Runs,
        },
    )?))
}

/// Runs the clean job on `cluster`, replacing `clean/listens/` and `rejects/` in `lake`.
pub async fn run_clean(
    cluster: &Cluster,
    input: &TsvInput,
    lake: &Store,
) -> Result<CleanSummary, JobError> {
    cluster.check_lake(lake)?;
    cluster.check_lake(&input.store)?;
    let started = Instant::now();
    let store = lake.object_store();
    clear(store.as_ref(), &lake.path(CLEAN_DIR)).await?;
    clear(store.as_ref(), &lake.path(REJECTS_DIR)).await?;
    let parts = lake.path(&format!("{REJECTS_DIR}/_parts"));
    let plan = clean_plan(cluster, input, lake, &parts)?;
    let tasks = plan.properties().partitioning.partition_count();
    let written = cluster.run(plan).await?;
    let mut files_written = 0;
    let mut clean_rows = 0;
    for batch in &written {
        files_written += batch.num_rows();
        clean_rows += batch
            .column(1)
            .as_primitive::<UInt64Type>()
            .values()
            .iter()
            .sum::<u64>();
    }
    let (lines, rejected) = finish_rejects(lake, &parts, input, tasks).await?;
    let rejected_total: u64 = rejected.values().sum();
    if clean_rows + rejected_total != lines {
        return Err(JobError::Invariant(format!(
            "{clean_rows} clean rows + {rejected_total} rejected lines != {lines} input lines"
        )));
    }
    Ok(CleanSummary {
        input_files: input.files.len(),
        bytes_in: input.bytes(),
        lines,
        clean_rows,
        rejected,
        files_written,
        tasks,
        elapsed: started.elapsed(),
    })
}

/// Merges the per-chunk rejects parts into `rejects/rejects.parquet` with file-global line
/// numbers (1-based), and returns (input lines, rejected lines by reason).
async fn finish_rejects(
    lake: &Store,
    parts_dir: &Path,
    input: &TsvInput,
    chunks: usize,
) -> Result<(u64, BTreeMap<RejectReason, u64>), JobError> {
    let store = lake.object_store();
    let parts = list(store.as_ref(), parts_dir).await?;
    if parts.len() != chunks {
        return Err(JobError::Invariant(format!(
            "{chunks} chunks were scanned but {} rejects parts exist",
            parts.len()
        )));
    }
    let mut file_col = StringBuilder::new();
    let mut line_col = UInt64Builder::new();
    let mut reason_col = StringBuilder::new();
    let mut raw_col = BinaryBuilder::new();
    let mut text_col = StringBuilder::new();
    let mut counts = BTreeMap::new();
    let mut total_lines = 0u64;
    let mut current_file = usize::MAX;
    let mut base = 0u64;
    for part in &parts {
        let name = part.location.filename().unwrap_or_default();
        let file_index: usize = name
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                JobError::Invariant(format!("unexpected rejects part `{}`", part.location))
            })?;
        if file_index != current_file {
            current_file = file_index;
            base = 0;
        }
        let (batches, metadata) = read_parquet(store.as_ref(), &part.location).await?;
        let lines: u64 = metadata
            .iter()
            .find(|(k, _)| k == LINES_KEY)
            .and_then(|(_, v)| v.parse().ok())
            .ok_or_else(|| {
                JobError::Invariant(format!(
                    "rejects part `{}` has no line count",
                    part.location
                ))
            })?;
        let file_name = input
            .files
            .get(file_index)
            .map(|(p, _)| p.as_str())
            .unwrap_or("?");
        for batch in &batches {
            let line = batch.column(0).as_primitive::<UInt64Type>();
            let reason = batch.column(1).as_string::<i32>();
            let raw = batch.column(2).as_binary::<i32>();
            for i in 0..batch.num_rows() {
                file_col.append_value(file_name);
                line_col.append_value(base + line.value(i) + 1);
                reason_col.append_value(reason.value(i));
                raw_col.append_value(raw.value(i));
                text_col.append_value(String::from_utf8_lossy(raw.value(i)));
                let r = RejectReason::parse(reason.value(i)).ok_or_else(|| {
                    JobError::Invariant(format!("unknown reject reason `{}`", reason.value(i)))
                })?;
                *counts.entry(r).or_insert(0) += 1;
            }
        }
        base += lines;
        total_lines += lines;
    }
    let batch = RecordBatch::try_new(
        reject_schema(),
        vec![
            Arc::new(file_col.finish()),
            Arc::new(line_col.finish()),
            Arc::new(reason_col.finish()),
            Arc::new(raw_col.finish()),
            Arc::new(text_col.finish()),
        ],
    )?;
    write_parquet_file(
        store.clone(),
        &lake.path(&format!("{REJECTS_DIR}/rejects.parquet")),
        reject_schema(),
        vec![batch],
        Payload::Records,
        vec![],
    )
    .await?;
    clear(store.as_ref(), parts_dir).await?;
    Ok((total_lines, counts))
}
