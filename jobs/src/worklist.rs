//! Work lists: a job's units of work (file chunks, matrix blocks, …) as a tiny in-memory table,
//! one unit per partition, that our operators consume as their input.
//!
//! Ballista hands each task a slice of a stage's partitions by restricting the stage's *leaves*,
//! which it can only do for scans it knows. A custom operator therefore never reads its work
//! from its own fields by partition number: it reads it from a work-list leaf, which Ballista
//! slices correctly, and it names its outputs after the units, never after partition numbers.

use std::fmt;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::exec_datafusion_err;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("work", DataType::Utf8, false)]))
}

/// A leaf with one partition per item (each item serialised as JSON).
pub fn work_list<T: Serialize>(items: &[T]) -> Result<Arc<dyn ExecutionPlan>> {
    let partitions = items
        .iter()
        .map(|item| {
            let json = serde_json::to_string(item)
                .map_err(|e| exec_datafusion_err!("cannot encode work item: {e}"))?;
            Ok(vec![RecordBatch::try_new(
                schema(),
                vec![Arc::new(StringArray::from(vec![json]))],
            )?])
        })
        .collect::<Result<Vec<_>>>()?;
    let exec: Arc<dyn ExecutionPlan> =
        MemorySourceConfig::try_new_exec(&partitions, schema(), None)?;
    Ok(exec)
}

/// The items of one partition of a work list, decoded.
pub fn items<T: DeserializeOwned + Send + 'static>(
    input: SendableRecordBatchStream,
) -> impl Stream<Item = Result<T>> + Send {
    input
        .map_ok(|batch| {
            let values: Vec<Result<T>> = batch
                .column(0)
                .as_string::<i32>()
                .iter()
                .map(|v| {
                    serde_json::from_str(v.unwrap_or_default())
                        .map_err(|e| exec_datafusion_err!("bad work item: {e}"))
                })
                .collect();
            futures::stream::iter(values)
        })
        .try_flatten()
}

/// The object store a task reaches `store_url` through (the executor's lake runtime).
pub fn task_store(
    context: &TaskContext,
    store_url: &str,
) -> Result<Arc<dyn object_store::ObjectStore>> {
    context
        .runtime_env()
        .object_store(datafusion::execution::object_store::ObjectStoreUrl::parse(
            store_url,
        )?)
}

/// What an operator over a work list does with each of its units.
pub trait Work: fmt::Debug + Clone + Send + Sync + 'static {
    /// A unit of work, as the work list carries it.
    type Unit: DeserializeOwned + Send + 'static;
    /// The operator's name in plans.
    const NAME: &'static str;
    /// Schema of the batches [`Work::run`] produces.
    fn schema(&self) -> SchemaRef;
    /// The batches of one unit.
    fn run(
        self: Arc<Self>,
        unit: Self::Unit,
        context: Arc<TaskContext>,
        metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>>;
}

/// What an operator does with the batches of one input partition. Every [`Work`] is one (its
/// input partition is a work list); operators over data (the ETL's partial aggregation, its
/// merge) implement it directly.
pub trait Operator: fmt::Debug + Clone + Send + Sync + 'static {
    /// The operator's name in plans.
    const NAME: &'static str;
    /// Schema of the batches [`Operator::stream`] produces.
    fn output_schema(&self) -> SchemaRef;
    /// The output of one partition, from that partition of the input.
    fn stream(
        self: Arc<Self>,
        input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
        metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>>;
}

impl<W: Work> Operator for W {
    const NAME: &'static str = <W as Work>::NAME;

    fn output_schema(&self) -> SchemaRef {
        self.schema()
    }

    fn stream(
        self: Arc<Self>,
        input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
        metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        Ok(items::<W::Unit>(input)
            .and_then(move |unit| {
                futures::future::ready(self.clone().run(unit, context.clone(), metrics.clone()))
            })
            .try_flatten()
            .boxed())
    }
}

/// The one type of our operators: partition p is [`Operator::stream`] of input partition p.
#[derive(Debug)]
pub struct WorkExec<W: Operator> {
    input: Arc<dyn ExecutionPlan>,
    work: Arc<W>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}
impl<W: Operator> WorkExec<W> {
    pub fn new(input: Arc<dyn ExecutionPlan>, work: W) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(work.output_schema()),
            Partitioning::UnknownPartitioning(input.properties().partitioning.partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        WorkExec {
            input,
            work: Arc::new(work),
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// What this operator does (serialised by the plan codec).
    pub fn spec(&self) -> &W {
        &self.work
    }
}

impl<W: Operator> DisplayAs for WorkExec<W> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}", W::NAME)
    }
}

impl<W: Operator> ExecutionPlan for WorkExec<W> {
    fn name(&self) -> &str {
        W::NAME
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

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(WorkExec::new(
            children.swap_remove(0),
            (*self.work).clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let stream = self.work.clone().stream(input, context, metrics)?;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.work.output_schema(),
            stream,
        )))
    }
}
