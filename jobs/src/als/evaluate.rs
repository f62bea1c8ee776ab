//! `AlsEvalExec`: offline evaluation of a trained model against the time-based split, one user
//! block per unit of work. For every user with training and test plays it ranks all items by
//! x_u · y_i (training items excluded), and the same for the popularity baseline (items by
//! distinct training listeners), and adds both users' metrics at 10 to the block's sums.

use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::block_file;
use super::factors::{Factors, read_block, read_matrix};
use recsys_core::linalg::top_k;

use super::metrics::MetricSums;
use super::solve::{BlockRatings, BlockTask, read_ratings};
use crate::worklist::{Work, WorkExec, task_store};
use recsys_core::linalg::dot;

/// The cut-off of every metric.
pub const CUTOFF: usize = 10;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSpec {
    pub store_url: String,
    pub rank: usize,
    pub ratings_dir: String,
    pub users_dir: String,
    pub items_dir: String,
    pub items: usize,
    /// Item indexes, most popular first (enough of them to fill every user's list).
    pub popularity: Vec<u32>,
}

pub fn eval_schema() -> SchemaRef {
    let mut fields = vec![Field::new("block", DataType::Int64, false)];
    for who in ["model", "popularity"] {
        for m in ["users", "precision", "recall", "ndcg", "map"] {
            fields.push(Field::new(format!("{who}_{m}"), DataType::Float64, false));
        }
    }
    Arc::new(Schema::new(fields))
}

/// Reads a row of [`eval_schema`] back into (model, popularity) sums.
pub fn sums_from_row(batch: &RecordBatch, row: usize) -> (MetricSums, MetricSums) {
    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;
    let v = |c: usize| batch.column(c).as_primitive::<Float64Type>().value(row);
    let sums = |o: usize| MetricSums {
        users: v(o) as u64,
        precision: v(o + 1),
        recall: v(o + 2),
        ndcg: v(o + 3),
        map: v(o + 4),
    };
    (sums(1), sums(6))
}

/// Metric sums of one block of users.
pub(crate) fn evaluate_block(
    ratings: &BlockRatings,
    users: &Factors,
    items: &Factors,
    popularity: &[u32],
) -> (MetricSums, MetricSums) {
    let (mut model, mut popular) = (MetricSums::default(), MetricSums::default());
    let mut tests: Vec<Vec<i32>> = vec![Vec::new(); users.rows()];
    for &(local, col) in &ratings.test {
        tests[local].push(col);
    }
    let mut scores = vec![0f32; items.rows()];
    for (local, test) in tests.iter().enumerate() {
        let train = &ratings.cols[ratings.offsets[local]..ratings.offsets[local + 1]];
        if train.is_empty() || test.is_empty() {
            continue;
        }
        let train: HashSet<u32> = train.iter().copied().collect();
        let relevant: HashSet<u32> = test
            .iter()
            .filter(|&&c| c >= 0)
            .map(|&c| c as u32)
            .collect();
        let x = users.row(users.start + local);
        for (i, s) in scores.iter_mut().enumerate() {
            *s = dot(x, items.row(i));
        }
        let ranked = top_k(&scores, CUTOFF, |i| train.contains(&i));
        model.add(&ranked, |i| relevant.contains(&i), test.len(), CUTOFF);
        let baseline: Vec<u32> = popularity
            .iter()
            .copied()
            .filter(|i| !train.contains(i))
            .take(CUTOFF)
            .collect();
        popular.add(&baseline, |i| relevant.contains(&i), test.len(), CUTOFF);
    }
    (model, popular)
}

/// Evaluates the user blocks of its work list.
pub type AlsEvalExec = WorkExec<EvalSpec>;

impl Work for EvalSpec {
    type Unit = BlockTask;
    const NAME: &'static str = "AlsEvalExec";

    fn schema(&self) -> SchemaRef {
        eval_schema()
    }

    fn run(
        self: Arc<Self>,
        task: BlockTask,
        context: Arc<TaskContext>,
        _metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let store = task_store(&context, &self.store_url)?;
        Ok(futures::stream::once(async move { eval_block(&store, &self, task).await }).boxed())
    }
}

async fn eval_block(
    store: &Arc<dyn ObjectStore>,
    spec: &EvalSpec,
    task: BlockTask,
) -> Result<RecordBatch> {
    let ratings = read_ratings(
        store,
        &Path::from(format!("{}/{}", spec.ratings_dir, block_file(task.block))),
        &task,
    )
    .await?;
    let users = read_block(
        store,
        &Path::from(format!("{}/{}", spec.users_dir, block_file(task.block))),
        spec.rank,
        task.start,
        task.rows,
    )
    .await?;
    let items = read_matrix(
        store,
        &Path::from(spec.items_dir.as_str()),
        spec.rank,
        spec.items,
    )
    .await?;
    let popularity = spec.popularity.clone();
    let (model, popular) =
        tokio::task::spawn_blocking(move || evaluate_block(&ratings, &users, &items, &popularity))
            .await
            .map_err(|e| DataFusionError::Execution(format!("evaluation task failed: {e}")))?;
    let col = |v: f64| Arc::new(Float64Array::from(vec![v])) as arrow::array::ArrayRef;
    let mut columns: Vec<arrow::array::ArrayRef> =
        vec![Arc::new(Int64Array::from(vec![task.block as i64]))];
    for s in [model, popular] {
        columns.extend([
            col(s.users as f64),
            col(s.precision),
            col(s.recall),
            col(s.ndcg),
            col(s.map),
        ]);
    }
    Ok(RecordBatch::try_new(eval_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::factors::Side;

    #[test]
    fn a_perfect_model_beats_popularity() {
        // 3 items; the user trained on item 0 and will play item 2; item 1 is the most popular.
        let ratings = BlockRatings {
            offsets: vec![0, 1],
            cols: vec![0],
            values: vec![1.0],
            test: vec![(0, 2)],
        };
        let mut users = Factors::zeros(2, 0, 1);
        users.row_mut(0).copy_from_slice(&[1.0, 0.0]);
        let mut items = Factors::init(2, 0, 3, 1, Side::Items);
        items.row_mut(0).copy_from_slice(&[9.0, 0.0]); // trained: excluded despite the top score
        items.row_mut(1).copy_from_slice(&[0.1, 0.0]);
        items.row_mut(2).copy_from_slice(&[0.5, 0.0]);
        let (model, popular) = evaluate_block(&ratings, &users, &items, &[1, 0, 2]);
        assert_eq!(model.users, 1);
        assert_eq!(model.means().ndcg_at_10, 1.0);
        // Popularity ranks item 1 first and item 2 second.
        assert!((popular.means().ndcg_at_10 - 1.0 / 3f64.log2()).abs() < 1e-12);
    }
}
