//! The ratings by user block, map-only: the pairs already sit in user blocks (a file each), so
//! each task reads one pairs file and numbers its tracks by the items' table: `row` is the
//! user, `col` the item (−1 for a track with no training play), with the pair's training and
//! test weight. Track ids are read as their Parquet dictionaries and looked up once per entry;
//! no join, no shuffle.

use std::sync::Arc;

use arrow::array::{Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type, Schema, SchemaRef};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::StreamExt;
use futures::stream::BoxStream;
use recsys_core::schema::col;
use serde::{Deserialize, Serialize};

use super::plays::read_numbers;
use crate::etl::emit_when_done;
use crate::etl::fold::{DictIds, FileRef, Names, primitive, read_file};
use crate::worklist::{Work, WorkExec, task_store};

/// Numbers the tracks of one pairs file (a work list's unit) by the items' table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRatings {
    pub store_url: String,
    /// The items' table: `track_id` and its number `i`.
    pub items: FileRef,
    /// Users per block: a user's ratings go to block `u / block_size`.
    pub block_size: i64,
}

pub type UserRatingsExec = WorkExec<UserRatings>;

/// The ratings: `row` (user), `col` (item or −1), `r`, `t`, and the user's `block`.
pub fn ratings_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("row", DataType::Int32, false),
        Field::new("col", DataType::Int32, false),
        Field::new("r", DataType::Float32, false),
        Field::new("t", DataType::Float32, false),
        Field::new("block", DataType::Int64, false),
    ]))
}

impl Work for UserRatings {
    type Unit = FileRef;
    const NAME: &'static str = "AlsUserRatingsExec";

    fn schema(&self) -> SchemaRef {
        ratings_schema()
    }

    fn run(
        self: Arc<Self>,
        file: FileRef,
        context: Arc<TaskContext>,
        metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let store = task_store(&context, &self.store_url)?;
        let output = metrics.clone();
        let batches = async move {
            let items = read_numbers(store.clone(), &self.items, col::TRACK_ID, "i").await?;
            let path = file.path.as_str();
            let mut tracks = Names::new();
            let mut dict = DictIds::default();
            // By interned track: its item number, −1 when it has none.
            let mut item_of: Vec<i32> = Vec::new();
            let mut out = Vec::new();
            let mut input = read_file(store, &file, &["u", col::TRACK_ID, "r", "t"]).await?;
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let _timer = metrics.elapsed_compute().timer();
                let ids = dict.rows(&batch, col::TRACK_ID, &mut tracks, path)?;
                while item_of.len() < tracks.hashes.len() {
                    let id = tracks.strings.get(item_of.len() as u32);
                    item_of.push(items.get(id).copied().unwrap_or(-1));
                }
                let u = primitive::<Int32Type>(&batch, "u", path)?;
                let block = Int64Array::from_iter_values(
                    u.values().iter().map(|&u| i64::from(u) / self.block_size),
                );
                out.push(RecordBatch::try_new(
                    ratings_schema(),
                    vec![
                        Arc::new(u),
                        Arc::new(Int32Array::from_iter_values(
                            ids.iter().map(|&t| item_of[t as usize]),
                        )),
                        Arc::new(primitive::<Float32Type>(&batch, "r", path)?),
                        Arc::new(primitive::<Float32Type>(&batch, "t", path)?),
                        Arc::new(block),
                    ],
                )?);
            }
            Ok(out)
        };
        Ok(emit_when_done(output, batches))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Float32Array, StringArray};
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
    use futures::TryStreamExt;
    use recsys_core::Store;

    use super::*;
    use crate::etl::fold::write_test_file;

    #[tokio::test]
    async fn tracks_are_numbered_by_the_items_table() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        // Pairs of users 4 and 5 (block 2 of 2 users a block); track-x has no training play.
        let pairs: Vec<(i32, &str, f32, f32)> = vec![
            (4, "track-a", 1.0, 0.0),
            (4, "track-x", 0.0, 2.0),
            (5, "track-b", 0.5, 1.5),
            (5, "track-a", 3.0, 0.0),
        ];
        let pairs_file = write_test_file(
            &lake,
            "block-00002.parquet",
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new("u", DataType::Int32, false),
                    Field::new(col::TRACK_ID, DataType::Utf8, false),
                    Field::new("r", DataType::Float32, false),
                    Field::new("t", DataType::Float32, false),
                    Field::new("n", DataType::Int64, false),
                ])),
                vec![
                    Arc::new(Int32Array::from_iter_values(pairs.iter().map(|p| p.0))),
                    Arc::new(StringArray::from_iter_values(pairs.iter().map(|p| p.1))),
                    Arc::new(Float32Array::from_iter_values(pairs.iter().map(|p| p.2))),
                    Arc::new(Float32Array::from_iter_values(pairs.iter().map(|p| p.3))),
                    Arc::new(Int64Array::from_iter_values(pairs.iter().map(|_| 1))),
                ],
            )
            .unwrap(),
        );
        let items = write_test_file(
            &lake,
            "items.parquet",
            RecordBatch::try_new(
                Arc::new(Schema::new(vec![
                    Field::new(col::TRACK_ID, DataType::Utf8, false),
                    Field::new("i", DataType::Int32, false),
                ])),
                vec![
                    Arc::new(StringArray::from(vec!["track-a", "track-b"])),
                    Arc::new(Int32Array::from(vec![0, 1])),
                ],
            )
            .unwrap(),
        );
        let spec = Arc::new(UserRatings {
            store_url: lake.base_url().to_string(),
            items,
            block_size: 2,
        });
        let metrics = BaselineMetrics::new(&ExecutionPlanMetricsSet::new(), 0);
        let out: Vec<RecordBatch> = spec
            .run(pairs_file, Arc::new(TaskContext::default()), metrics)
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut got = Vec::new();
        for b in &out {
            let i32s = |c: usize| b.column(c).as_primitive::<Int32Type>().clone();
            let f32s = |c: usize| b.column(c).as_primitive::<Float32Type>().clone();
            let block = b.column(4).as_primitive::<arrow::datatypes::Int64Type>();
            for r in 0..b.num_rows() {
                got.push((
                    i32s(0).value(r),
                    i32s(1).value(r),
                    f32s(2).value(r),
                    f32s(3).value(r),
                    block.value(r),
                ));
            }
        }
        assert_eq!(
            got,
            vec![
                (4, 0, 1.0, 0.0, 2),
                (4, -1, 0.0, 2.0, 2),
                (5, 1, 0.5, 1.5, 2),
                (5, 0, 3.0, 0.0, 2),
            ]
        );
    }
}
