//! The sort job: clean listens → `sorted/listens/part-NNNNN.parquet`, each file ordered by
//! (timestamp, user, track) and covering its own time range, the ranges increasing with N. No
//! single task ever merges everything:
//!
//! 1. two small aggregate jobs measure the data (count, min/max time, then a fine histogram of
//!    time) and choose `N - 1` cut points that give every file about the same number of rows;
//! 2. one job routes each row to its range (`recsys_range_bucket`) through Ballista's hash
//!    shuffle, sorts every range in its own task and writes it as one file.
//!
//! Ballista shuffles by hash only. Range `i` is therefore encoded as a key that DataFusion's own
//! partitioner sends to output partition `i` (found at plan time by asking that partitioner), so
//! ranges and tasks line up one to one. Correctness never depends on it: a task that received
//! two ranges still writes them as two files, in order.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{cast, col, lit};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_plan::metrics;
use datafusion::physical_plan::repartition::{BatchPartitioner, RepartitionExec};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::{DataFrame, ParquetReadOptions};
use recsys_core::Store;
use recsys_core::schema::{CLEAN_DIR, SORTED_DIR, col as c};

use crate::lake::clear;
use crate::write::{ParquetWriterExec, SplitSpec, WriteSpec};
use crate::{Cluster, JobError, udf};

/// Rows per sorted file the job aims for when the caller does not choose.
pub const DEFAULT_ROWS_PER_FILE: u64 = 500_000;
/// Histogram resolution used to place the cut points: one hour of data time. Ranges start on a
/// whole hour, so data spanning less than an hour per intended file gets fewer files.
const HISTOGRAM_BIN_MICROS: i64 = 3_600 * 1_000_000;
/// Order of the rows: time first, then user and track, then the rest for a total order.
const SORT_ORDER: [&str; 6] = [
    c::TS,
    c::USER_ID,
    c::TRACK_ID,
    c::ARTIST_ID,
    c::ARTIST_NAME,
    c::TRACK_NAME,
];
/// Name of the routing column (dropped from the written files).
const BUCKET: &str = "__recsys_bucket";

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

/// Runs the sort job on `cluster`, replacing `sorted/listens/` in `lake`. `files` fixes the number
/// of output files; by default one per [`DEFAULT_ROWS_PER_FILE`] rows, at least two.
pub async fn run_sort(
    cluster: &Cluster,
    lake: &Store,
    files: Option<usize>,
) -> Result<SortSummary, JobError> {
    let started = Instant::now();
    let ctx = cluster.planner();
    let clean = ctx
        .read_parquet(
            lake.url(&format!("{CLEAN_DIR}/")),
            ParquetReadOptions::default(),
        )
        .await?;
    let ts = || cast(col(c::TS), DataType::Int64);

    // 1. One aggregate job: rows per hour of data time, from which the cut points follow.
    let hist = clean.clone().aggregate(
        vec![(ts() / lit(HISTOGRAM_BIN_MICROS)).alias("bin")],
        vec![datafusion::functions_aggregate::count::count(lit(1)).alias("n")],
    )?;
    let mut bins: BTreeMap<i64, u64> = BTreeMap::new();
    for b in run_df(cluster, hist).await? {
        let bin = b.column(0).as_primitive::<Int64Type>();
        let n = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            *bins.entry(bin.value(i)).or_default() += n.value(i) as u64;
        }
    }
    let rows: u64 = bins.values().sum();
    let n_files = files
        .unwrap_or_else(|| rows.div_ceil(DEFAULT_ROWS_PER_FILE).max(2) as usize)
        .clamp(1, 4096);
    let boundaries = cut_points(&bins, rows, n_files, 0, HISTOGRAM_BIN_MICROS);
    tracing::debug!(elapsed = ?started.elapsed(), cuts = boundaries.len(), "sort: placed cut points");

    // 2. Route, sort per range, write.
    let ranges = boundaries.len() + 1;
    let keys = partition_keys(ranges)?;
    let names: BTreeMap<i64, String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (*k, format!("part-{i:05}.parquet")))
        .collect();
    let as_list = |v: &[i64]| {
        let scalars: Vec<ScalarValue> = v.iter().map(|x| ScalarValue::Int64(Some(*x))).collect();
        lit(ScalarValue::List(ScalarValue::new_list_nullable(
            &scalars,
            &DataType::Int64,
        )))
    };
    let bucket = ctx.state().udf(udf::RANGE_BUCKET)?.call(vec![
        col(c::TS),
        as_list(&boundaries),
        as_list(&keys),
    ]);
    let columns = [
        c::USER_ID,
        c::TS,
        c::ARTIST_ID,
        c::ARTIST_NAME,
        c::TRACK_ID,
        c::TRACK_NAME,
    ];
    let mut select: Vec<_> = columns.iter().map(|n| col(*n)).collect();
    select.push(bucket.alias(BUCKET));
    // The shuffle is added here, after DataFusion's optimiser (which drops a repartition nothing
    // above it requires).
    let projected = clean.select(select)?.create_physical_plan().await?;
    let schema = projected.schema();
    let routing = Partitioning::Hash(
        vec![Arc::new(Column::new_with_schema(BUCKET, &schema)?)],
        ranges,
    );
    let routed = Arc::new(RepartitionExec::try_new(projected, routing)?);
    let ordering = LexOrdering::new(
        SORT_ORDER
            .iter()
            .map(|n| {
                Ok(PhysicalSortExpr::new_default(Arc::new(
                    Column::new_with_schema(n, &schema)?,
                )))
            })
            .collect::<Result<Vec<_>, JobError>>()?,
    )
    .ok_or_else(|| JobError::Invariant("empty sort order".into()))?;
    let sorted = Arc::new(SortExec::new(ordering, routed).with_preserve_partitioning(true));
    let store = lake.object_store();
    clear(store.as_ref(), &lake.path(SORTED_DIR)).await?;
    let plan: Arc<dyn ExecutionPlan> = Arc::new(ParquetWriterExec::try_new(
        sorted,
        WriteSpec {
            store_url: lake.base_url().to_string(),
            dir: lake.path(SORTED_DIR).to_string(),
            split: SplitSpec {
                column: BUCKET.to_string(),
                names,
            },
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

async fn run_df(cluster: &Cluster, df: DataFrame) -> Result<Vec<RecordBatch>, JobError> {
    cluster.run(df.create_physical_plan().await?).await
}

/// Cut points giving `files` ranges of about equal row counts, from a histogram of
/// `bin -> rows` where bin `b` covers `[lo + b·width, lo + (b+1)·width)`. Empty ranges are
/// dropped, so fewer cuts may come back for very skewed data.
fn cut_points(bins: &BTreeMap<i64, u64>, rows: u64, files: usize, lo: i64, width: i64) -> Vec<i64> {
    let mut cuts = Vec::with_capacity(files.saturating_sub(1));
    let mut seen = 0u64;
    let mut next = 1;
    for (&bin, &n) in bins {
        if next >= files {
            break;
        }
        // Cut before this bin once the rows so far reach the next target.
        let target = rows * next as u64 / files as u64;
        if seen >= target && seen > 0 {
            let cut = lo + bin * width;
            if cuts.last().is_none_or(|&last| cut > last) {
                cuts.push(cut);
            }
            while next < files && seen >= rows * next as u64 / files as u64 {
                next += 1;
            }
        }
        seen += n;
    }
    cuts
}

/// For each of `n` output partitions, an Int64 key that DataFusion's hash partitioner (the one
/// Ballista's shuffle uses) sends to exactly that partition.
fn partition_keys(n: usize) -> Result<Vec<i64>, JobError> {
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
    let candidates = (n as i64 * 256).max(4096);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from_iter_values(0..candidates))],
    )?;
    let mut partitioner = BatchPartitioner::new_hash_partitioner(
        vec![Arc::new(Column::new("k", 0))],
        n,
        metrics::Time::new(),
    )?;
    let mut keys: Vec<Option<i64>> = vec![None; n];
    partitioner.partition(batch, |partition, part| {
        let values = part.column(0).as_primitive::<Int64Type>();
        if let Some(first) = values.values().first() {
            keys[partition].get_or_insert(*first);
        }
        Ok(())
    })?;
    // A partition no candidate reaches (never seen in practice) gets an unused key: its range
    // then shares a task with another one, which only costs balance.
    let mut spare = candidates;
    Ok(keys
        .into_iter()
        .map(|k| {
            k.unwrap_or_else(|| {
                spare += 1;
                spare
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hit_their_partition() {
        for n in [1, 2, 3, 7, 16, 64] {
            let keys = partition_keys(n).unwrap();
            assert_eq!(keys.len(), n);
            let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
            let batch =
                RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(keys.clone()))])
                    .unwrap();
            let mut p = BatchPartitioner::new_hash_partitioner(
                vec![Arc::new(Column::new("k", 0))],
                n,
                metrics::Time::new(),
            )
            .unwrap();
            p.partition(batch, |partition, part| {
                let got = part.column(0).as_primitive::<Int64Type>().values().to_vec();
                assert_eq!(got, vec![keys[partition]], "n={n}");
                Ok(())
            })
            .unwrap();
        }
    }

    #[test]
    fn cuts_balance_rows() {
        let bins: BTreeMap<i64, u64> = (0..100).map(|b| (b, 10)).collect();
        let cuts = cut_points(&bins, 1000, 4, 1000, 10);
        assert_eq!(cuts, vec![1000 + 25 * 10, 1000 + 50 * 10, 1000 + 75 * 10]);
        // Heavy single bin: cuts never repeat.
        let bins: BTreeMap<i64, u64> = [(0, 5), (1, 990), (2, 5)].into();
        let cuts = cut_points(&bins, 1000, 4, 0, 1);
        assert!(cuts.windows(2).all(|w| w[0] < w[1]));
        assert!(cuts.len() <= 3);
    }
}
