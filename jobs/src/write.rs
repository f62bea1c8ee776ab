//! `ParquetWriterExec`: every partition of its input writes its own Parquet files straight to the
//! object store, so a write is as distributed as the plan under it (DataFusion's own sinks funnel
//! everything through one partition). It outputs one row per file written.
//!
//! Files are named after the values of a split column, never after partition numbers (Ballista
//! renumbers the partitions a task sees): a partition starts a new file whenever that column's
//! value changes, so its input must be grouped by it (a chunk of the clean job, a time range of
//! the sort job), which the writer checks. A retried task rewrites the same names.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringBuilder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::common::exec_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};

use recsys_core::encoding::lake_columns;

use crate::parquet_file::{ParquetFile, plain_schema};
use crate::runs::{SORT_ORDER, SORTED_BY_KEY, SPARSE_INDEX_KEY, SparseIndexBuilder};

/// Rows per Parquet row group: small enough to bound writer memory, large enough to scan fast.
const ROW_GROUP_ROWS: usize = 256 * 1024;
/// Rows per data page (an upper bound; pages also end at 1 MB).
const PAGE_ROWS: usize = crate::runs::INDEX_EVERY as usize;

/// Files named after a split column's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitSpec {
    /// An Int64 column of the input; dropped from the written files.
    pub column: String,
    /// File name (without folder) for every value that may occur.
    pub names: BTreeMap<i64, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteSpec {
    /// Store receiving the files (`file:///` or `s3://bucket`).
    pub store_url: String,
    /// Object path of the output folder.
    pub dir: String,
    pub split: SplitSpec,
    /// Rows arrive in [`crate::runs::SORT_ORDER`]: index every file as a sorted run.
    pub sorted_runs: bool,
    pub payload: Payload,
}

/// One row per file written: object path and row count.
pub fn written_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

#[derive(Debug)]
pub struct ParquetWriterExec {
    input: Arc<dyn ExecutionPlan>,
    spec: WriteSpec,
    properties: Arc<PlanProperties>,
}

impl ParquetWriterExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, spec: WriteSpec) -> Result<Self> {
        let schema = input.schema();
        let field = schema.field_with_name(&spec.split.column)?;
        if field.data_type() != &DataType::Int64 {
            return exec_err!(
                "split column `{}` must be Int64, is {}",
                spec.split.column,
                field.data_type()
            );
        }
        let partitions = input.properties().partitioning.partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(written_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(ParquetWriterExec {
            input,
            spec,
            properties: Arc::new(properties),
        })
    }

    pub fn spec(&self) -> &WriteSpec {
        &self.spec
    }
}

impl DisplayAs for ParquetWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ParquetWriterExec: dir={}, split_by={}",
            self.spec.dir, self.spec.split.column
        )
    }
}

impl ExecutionPlan for ParquetWriterExec {
    fn name(&self) -> &str {
        "ParquetWriterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(ParquetWriterExec::try_new(
            children.swap_remove(0),
            self.spec.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let store = context
            .runtime_env()
            .object_store(ObjectStoreUrl::parse(&self.spec.store_url)?)?;
        let input = self.input.execute(partition, context)?;
        let spec = self.spec.clone();
        let stream =
            futures::stream::once(
                async move { write_partition(store, spec, partition, input).await },
            );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            written_schema(),
            stream,
        )))
    }
}

/// What a file mostly holds, which decides its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// Ids, names, times: dictionaries and zstd (on local disks here writing a byte costs more
    /// than compressing it: dictionary + zstd beat LZ4 and uncompressed for these files).
    Records,
    /// Records that later jobs of the same run read and then remove (the clean job's sorted
    /// runs, merged by the sort job; the ALS preparation's pairs and by-item blocks):
    /// dictionaries without compression. Their string columns are dictionary ids already, which
    /// zstd shrinks by a quarter; measured at 20 M rows, skipping it made clean 15 % faster and
    /// the sort job that reads the runs 3 % faster; the ALS preparation's by-item job went from
    /// 58–80 ms to 43–75 ms at 2 M events.
    Runs,
    /// Dense float vectors (factors): plain and uncompressed, as dictionaries and compression
    /// only cost time on random floats.
    Vectors,
}

fn writer_properties(
    schema: &Schema,
    payload: Payload,
    metadata: Vec<(String, String)>,
) -> WriterProperties {
    let kv: Vec<KeyValue> = metadata
        .into_iter()
        .map(|(k, v)| KeyValue::new(k, v))
        .collect();
    let builder = match payload {
        Payload::Runs => lake_columns(
            WriterProperties::builder().set_compression(Compression::UNCOMPRESSED),
            schema,
        ),
        Payload::Records => lake_columns(
            WriterProperties::builder().set_compression(Compression::ZSTD(
                ZstdLevel::try_new(1).expect("valid zstd level"),
            )),
            schema,
        ),
        Payload::Vectors => WriterProperties::builder()
            .set_compression(Compression::UNCOMPRESSED)
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::None),
    };
    builder
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        // Small pages: a reader of a slice of a sorted run (the sort job) fetches and decodes
        // little more than the slice, so memory per merged run stays small.
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_created_by(format!("recsys {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata((!kv.is_empty()).then_some(kv))
        .build()
}

fn open_writer(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    schema: SchemaRef,
    payload: Payload,
    metadata: Vec<(String, String)>,
) -> Result<ParquetFile> {
    let sink = BufWriter::new(store.clone(), path.clone());
    let properties = writer_properties(&plain_schema(&schema), payload, metadata);
    Ok(ParquetFile::try_new(sink, &schema, properties)?)
}

/// Writes `batches` to one Parquet file at `path`, with key-value `metadata` in its footer.
pub async fn write_parquet_file(
    store: Arc<dyn ObjectStore>,
    path: &Path,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    payload: Payload,
    metadata: Vec<(String, String)>,
) -> Result<()> {
    let mut writer = open_writer(&store, path, schema, payload, metadata)?;
    for batch in &batches {
        writer.write(batch).await?;
    }
    writer.close().await?;
    Ok(())
}

struct OpenFile {
    key: i64,
    path: Path,
    rows: u64,
    writer: ParquetFile,
    index: Option<SparseIndexBuilder>,
}

async fn write_partition(
    store: Arc<dyn ObjectStore>,
    spec: WriteSpec,
    partition: usize,
    mut input: SendableRecordBatchStream,
) -> Result<RecordBatch> {
    let dir = Path::from(spec.dir.as_str());
    let in_schema = input.schema();
    let split = in_schema.index_of(&spec.split.column)?;
    let keep: Vec<usize> = (0..in_schema.fields().len())
        .filter(|&c| c != split)
        .collect();
    let out_schema: SchemaRef = Arc::new(in_schema.project(&keep)?);
    let mut files = StringBuilder::new();
    let mut counts = UInt64Builder::new();
    let mut seen = HashSet::new();
    let mut open: Option<OpenFile> = None;

    async fn close(
        mut file: OpenFile,
        files: &mut StringBuilder,
        counts: &mut UInt64Builder,
    ) -> Result<()> {
        if let Some(index) = file.index.take() {
            let json = serde_json::to_string(&index.finish())
                .map_err(|e| DataFusionError::Execution(format!("sparse index: {e}")))?;
            file.writer
                .append_key_value_metadata(KeyValue::new(SPARSE_INDEX_KEY.to_string(), json));
            file.writer.append_key_value_metadata(KeyValue::new(
                SORTED_BY_KEY.to_string(),
                SORT_ORDER.join(","),
            ));
        }
        file.writer.close().await?;
        files.append_value(file.path.as_ref());
        counts.append_value(file.rows);
        Ok(())
    }

    while let Some(batch) = input.next().await {
        let batch = batch?;
        let keys = batch.column(split).as_primitive::<Int64Type>();
        if keys.null_count() > 0 {
            return exec_err!("split column `{}` has nulls", spec.split.column);
        }
        // Runs of equal split values: (key, start, len).
        let values = keys.values();
        let mut start = 0;
        while start < values.len() {
            let key = values[start];
            let len = values[start..].iter().take_while(|&&v| v == key).count();
            if open.as_ref().is_none_or(|f| f.key != key) {
                if let Some(file) = open.take() {
                    close(file, &mut files, &mut counts).await?;
                }
                if !seen.insert(key) {
                    return exec_err!(
                        "input of partition {partition} is not grouped by `{}` ({key} came back)",
                        spec.split.column
                    );
                }
                let name = spec.split.names.get(&key).ok_or_else(|| {
                    DataFusionError::Execution(format!(
                        "no file name for `{}` = {key}",
                        spec.split.column
                    ))
                })?;
                let path = dir.clone().join(name.as_str());
                let writer = open_writer(&store, &path, out_schema.clone(), spec.payload, vec![])?;
                let index = match spec.sorted_runs {
                    true => Some(SparseIndexBuilder::new(out_schema.index_of(SORT_ORDER[0])?)),
                    false => None,
                };
                open = Some(OpenFile {
                    key,
                    path,
                    rows: 0,
                    writer,
                    index,
                });
            }
            let slice = batch.slice(start, len).project(&keep)?;
            let file = open.as_mut().expect("a file is open");
            if let Some(index) = file.index.as_mut() {
                index.push(&slice)?;
            }
            file.writer.write(&slice).await?;
            file.rows += len as u64;
            start += len;
        }
    }
    if let Some(file) = open.take() {
        close(file, &mut files, &mut counts).await?;
    }
    Ok(RecordBatch::try_new(
        written_schema(),
        vec![Arc::new(files.finish()), Arc::new(counts.finish())],
    )?)
}

/// A hash shuffle of `expr` (Int64 values `0..n`) into `n` partitions that sends each value to
/// a partition of its own. Ballista's shuffle (as DataFusion's `RepartitionExec`) sends a row to
/// `hash(key) % n`, and the values `0..n` themselves collide: with two blocks both went to one
/// task, which wrote everything while the other idled. So each value is first mapped (a `CASE`)
/// to a key found to land in the partition of that number.
pub fn spread(expr: Arc<dyn PhysicalExpr>, n: usize) -> Result<Partitioning> {
    use datafusion::physical_expr::expressions::{CaseExpr, lit};
    let keys = spread_keys(n)?;
    let arms = keys
        .iter()
        .enumerate()
        .map(|(value, key)| (lit(value as i64), lit(*key)))
        .collect();
    let case = CaseExpr::try_new(Some(expr), arms, None)?;
    Ok(Partitioning::Hash(vec![Arc::new(case)], n.max(1)))
}

/// For each partition `p` of a hash shuffle into `n`, the smallest Int64 key the shuffle's own
/// partitioner sends there.
fn spread_keys(n: usize) -> Result<Vec<i64>> {
    use arrow::array::Int64Array;
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::metrics::Time;
    use datafusion::physical_plan::repartition::BatchPartitioner;
    const CHUNK: i64 = 1024;
    let n = n.max(1);
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
    let mut keys: Vec<Option<i64>> = vec![None; n];
    let mut start = 0;
    while keys.iter().any(Option::is_none) {
        if start > 1 << 24 {
            return exec_err!("no key found for every one of {n} hash partitions");
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(start..start + CHUNK))],
        )?;
        let mut partitioner = BatchPartitioner::new_hash_partitioner(
            vec![Arc::new(Column::new("k", 0))],
            n,
            Time::new(),
        )?;
        partitioner.partition(batch, |p, rows| {
            if keys[p].is_none() && rows.num_rows() > 0 {
                keys[p] = Some(rows.column(0).as_primitive::<Int64Type>().value(0));
            }
            Ok(())
        })?;
        start += CHUNK;
    }
    Ok(keys.into_iter().flatten().collect())
}

/// `plan` shuffled by its Int64 column `column` (values `0..n`), each value to a partition of
/// its own ([`spread`]).
pub fn shuffle_by(
    plan: Arc<dyn ExecutionPlan>,
    column: &str,
    n: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::repartition::RepartitionExec;
    let key = Arc::new(Column::new_with_schema(column, &plan.schema())?);
    Ok(Arc::new(RepartitionExec::try_new(plan, spread(key, n)?)?))
}

/// The writer of `input`'s partitions, each already holding the rows of one value of its Int64
/// column `column` in the order its file keeps: one file per value (named by `names`, under
/// `dir` of `lake`) without `column`, written as `payload`. It outputs one row per file
/// ([`written_schema`]).
pub fn split_writer(
    lake: &recsys_core::Store,
    input: Arc<dyn ExecutionPlan>,
    column: &str,
    dir: &str,
    names: BTreeMap<i64, String>,
    payload: Payload,
) -> Result<Arc<dyn ExecutionPlan>> {
    Ok(Arc::new(ParquetWriterExec::try_new(
        input,
        WriteSpec {
            store_url: lake.base_url().to_string(),
            dir: lake.path(dir).to_string(),
            split: SplitSpec {
                column: column.to_string(),
                names,
            },
            sorted_runs: false,
            payload,
        },
    )?))
}

/// The plan that shuffles `df` by its Int64 column `column` into one file per value (named by
/// `names`, whose keys are `0..names.len()`, under `dir` of `lake`), rows in the order they
/// arrive (readers that need an order sort); `column` is dropped from the files. It outputs one
/// row per file ([`written_schema`]).
pub async fn shuffle_write_plan(
    lake: &recsys_core::Store,
    df: datafusion::prelude::DataFrame,
    column: &str,
    dir: &str,
    names: BTreeMap<i64, String>,
    payload: Payload,
) -> std::result::Result<Arc<dyn ExecutionPlan>, crate::JobError> {
    let plan = df.create_physical_plan().await?;
    let shuffled = shuffle_by(plan, column, names.len())?;
    Ok(split_writer(lake, shuffled, column, dir, names, payload)?)
}

/// Runs writer plans (one row per file written) as one job: the files with their row counts,
/// sorted by path.
pub async fn run_writes(
    cluster: &crate::Cluster,
    plan: Arc<dyn ExecutionPlan>,
) -> std::result::Result<Vec<(String, u64)>, crate::JobError> {
    let mut written = Vec::new();
    for batch in cluster.run(plan).await? {
        let file = batch.column(0).as_string::<i32>();
        let rows = batch
            .column(1)
            .as_primitive::<arrow::datatypes::UInt64Type>();
        for i in 0..batch.num_rows() {
            written.push((file.value(i).to_string(), rows.value(i)));
        }
    }
    written.sort();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use arrow::array::Int64Array;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_expr::expressions::col;
    use datafusion::physical_plan::collect_partitioned;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::prelude::SessionContext;

    use super::*;

    #[tokio::test]
    async fn spread_sends_each_value_to_a_partition_of_its_own() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "block",
            DataType::Int64,
            false,
        )]));
        for n in [1, 2, 3, 4, 7, 16, 64] {
            // Every value three times, in two input partitions.
            let values = Int64Array::from_iter_values((0..3 * n as i64).map(|v| v % n as i64));
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
            let input = MemorySourceConfig::try_new_exec(
                &[vec![batch.clone()], vec![batch]],
                schema.clone(),
                None,
            )
            .unwrap();
            let partitioning = spread(col("block", &schema).unwrap(), n).unwrap();
            let plan = Arc::new(RepartitionExec::try_new(input, partitioning).unwrap());
            let parts = collect_partitioned(plan, SessionContext::new().task_ctx())
                .await
                .unwrap();
            assert_eq!(parts.len(), n);
            for (p, batches) in parts.iter().enumerate() {
                let seen: BTreeSet<i64> = batches
                    .iter()
                    .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                    .collect();
                assert_eq!(seen, BTreeSet::from([p as i64]), "partition {p} of {n}");
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                assert_eq!(rows, 6, "partition {p} of {n}");
            }
        }
    }
}
