//! Work lists: a job's units of work (file chunks, matrix blocks, …) as a tiny in-memory table,
//! one unit per partition, that our operators consume as their input.
//!
//! Ballista hands each task a slice of a stage's partitions by restricting the stage's *leaves*,
//! which it can only do for scans it knows. A custom operator therefore never reads its work
//! from its own fields by partition number: it reads it from a work-list leaf, which Ballista
//! slices correctly, and it names its outputs after the units, never after partition numbers.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::exec_datafusion_err;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::{Stream, TryStreamExt};
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
