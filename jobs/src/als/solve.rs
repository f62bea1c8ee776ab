//! `AlsSolveExec`: one half-iteration of implicit ALS. Each unit of its work list is a block of
//! rows of one side (users or items); a task reads that block's ratings, the other side's
//! factors (broadcast through the object store: they are small) and its own previous factors
//! (warm start), solves every row against the shared Gram matrix, writes the block's new
//! factors and reports the block's share of the next Gram matrix and of the loss.

use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::StreamExt;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, BinaryArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type, Schema, SchemaRef};
use datafusion::common::exec_err;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use object_store::ObjectStore;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use super::factors::{Factors, Side, read_block, read_matrix, write_block};
use super::{AlsParams, Solver, block_file, cache};
use crate::lake::read_parquet;
use crate::worklist::{Work, WorkExec, task_store};
use recsys_core::linalg::{CgScratch, Row, add_gram, dot};

/// A block of rows of one side: rows `[start, start + rows)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockTask {
    pub block: usize,
    pub start: usize,
    pub rows: usize,
}

/// One half-iteration: serialised by the plan codec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SolveSpec {
    pub store_url: String,
    pub side: Side,
    pub params: AlsParams,
    /// Ratings of this side, one file per block: `row, col, r, t` in any order.
    pub ratings_dir: String,
    /// The other side's factors; `None`: its seeded initial factors.
    pub other_dir: Option<String>,
    pub other_rows: usize,
    /// This side's previous factors, for the warm start; `None`: seeded initial factors.
    pub previous_dir: Option<String>,
    pub out_dir: String,
    /// The other side's Gram matrix when already known (k×k, row-major).
    pub other_gram: Option<Vec<f32>>,
    /// Also report this step's share of the loss (done on the item step of every iteration).
    pub with_loss: bool,
}

/// One row per solved block.
pub fn summary_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("block", DataType::Int64, false),
        Field::new("gram", DataType::Binary, false),
        Field::new("loss", DataType::Float64, false),
        Field::new("reg", DataType::Float64, false),
        Field::new("nnz", DataType::Int64, false),
        Field::new("micros", DataType::Int64, false),
    ]))
}

/// A block's ratings grouped by row.
pub(crate) struct BlockRatings {
    /// For local row r (absolute row start + r): the range of `cols`/`values` it owns.
    pub offsets: Vec<usize>,
    pub cols: Vec<u32>,
    pub values: Vec<f32>,
    /// Test plays, kept for evaluation (rows of the user side only).
    pub test: Vec<(usize, i32)>,
}

impl BlockRatings {
    pub fn bytes(&self) -> usize {
        self.offsets.len() * 8 + self.cols.len() * 8 + self.test.len() * 16
    }
}

/// Reads a ratings block; `train` rows are those with `r > 0`, `test` pairs have `r = 0, t > 0`.
pub(crate) async fn read_ratings(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    task: &BlockTask,
) -> Result<BlockRatings> {
    let (batches, _) = read_parquet(store.as_ref(), path)
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut counts = vec![0usize; task.rows];
    let mut triples = Vec::new();
    let mut test = Vec::new();
    for b in &batches {
        let typed = |c: usize, t: &DataType| match b.column(c).data_type() == t {
            true => Ok(b.column(c).clone()),
            false => exec_err!(
                "ratings column {c} is {}, expected {t}",
                b.column(c).data_type()
            ),
        };
        let (row, col) = (typed(0, &DataType::Int32)?, typed(1, &DataType::Int32)?);
        let (r, t) = (typed(2, &DataType::Float32)?, typed(3, &DataType::Float32)?);
        let (row, col) = (
            row.as_primitive::<Int32Type>(),
            col.as_primitive::<Int32Type>(),
        );
        let (r, t) = (
            r.as_primitive::<Float32Type>(),
            t.as_primitive::<Float32Type>(),
        );
        for j in 0..b.num_rows() {
            let local = row.value(j) as usize;
            if local < task.start || local >= task.start + task.rows {
                return exec_err!("row {local} outside block {}", task.block);
            }
            let local = local - task.start;
            if r.value(j) > 0.0 {
                if col.value(j) < 0 {
                    return exec_err!("a training rating without a column index");
                }
                counts[local] += 1;
                triples.push((local, col.value(j) as u32, r.value(j)));
            } else if t.value(j) > 0.0 {
                test.push((local, col.value(j)));
            }
        }
    }
    triples.sort_unstable_by_key(|&(row, col, _)| (row, col));
    let mut offsets = Vec::with_capacity(task.rows + 1);
    offsets.push(0);
    for c in &counts {
        offsets.push(offsets.last().copied().unwrap_or(0) + c);
    }
    Ok(BlockRatings {
        offsets,
        cols: triples.iter().map(|t| t.1).collect(),
        values: triples.iter().map(|t| t.2).collect(),
        test,
    })
}

impl AlsParams {
    /// Confidence of a rating r (plays, or weighted plays).
    pub fn confidence(&self, r: f32) -> f32 {
        match self.log_epsilon {
            None => 1.0 + self.alpha * r,
            Some(eps) => 1.0 + self.alpha * (1.0 + r / eps).ln(),
        }
    }

    /// λ for a row with `n` ratings.
    pub fn row_reg(&self, n: usize) -> f32 {
        if self.reg_scaled_by_count {
            self.reg * n.max(1) as f32
        } else {
            self.reg
        }
    }
}

/// What solving a block produced.
pub(crate) struct Solved {
    pub factors: Factors,
    pub gram: Vec<f64>,
    pub loss: f64,
    pub reg: f64,
    pub nnz: usize,
}

/// Solves every row of a block (pure computation; the exec does the I/O).
pub(crate) fn solve_block(
    params: &AlsParams,
    ratings: &BlockRatings,
    other: &Factors,
    other_gram: &[f32],
    mut own: Factors,
    with_loss: bool,
) -> Solved {
    let k = params.rank;
    let mut scratch = CgScratch::new(k);
    let mut dense = Vec::new();
    // Confidences of the whole block at once (the log form is costly per rating).
    let confidence: Vec<f32> = ratings
        .values
        .iter()
        .map(|&r| params.confidence(r))
        .collect();
    let mut gram = vec![0f32; k * k];
    let (mut loss, mut reg_total) = (0f64, 0f64);
    for local in 0..own.rows() {
        let (a, b) = (ratings.offsets[local], ratings.offsets[local + 1]);
        let items = &ratings.cols[a..b];
        let x = own.row_mut(own.start + local);
        if items.is_empty() {
            // No ratings: the minimiser is 0 (and stays out of the Gram matrix).
            x.fill(0.0);
            continue;
        }
        let conf = &confidence[a..b];
        let reg = params.row_reg(items.len());
        let row = Row {
            k,
            gram: other_gram,
            y: &other.values,
            items,
            conf,
            reg,
        };
        match params.solver {
            Solver::Cg { steps } => row.solve_cg(x, steps, &mut scratch),
            Solver::Cholesky => row.solve_exact(x, &mut dense),
        }
        add_gram(x, k, &mut gram);
        reg_total += (reg * dot(x, x)) as f64;
        if with_loss {
            // The observed part of the loss; the rest, Σ x_uᵀ (YᵀY) x_u over every row, is
            // trace(XᵀX · YᵀY), which the client adds from the two Gram matrices.
            for (&i, &c) in items.iter().zip(conf) {
                let s = dot(x, other.row(i as usize)) as f64;
                loss += c as f64 * (1.0 - s) * (1.0 - s) - s * s;
            }
        }
    }
    Solved {
        nnz: ratings.cols.len(),
        gram: gram.into_iter().map(f64::from).collect(),
        factors: own,
        loss,
        reg: reg_total,
    }
}

/// Solves the blocks of its work list (one half-iteration).
pub type AlsSolveExec = WorkExec<SolveSpec>;

impl Work for SolveSpec {
    type Unit = BlockTask;
    const NAME: &'static str = "AlsSolveExec";

    fn schema(&self) -> SchemaRef {
        summary_schema()
    }

    fn run(
        self: Arc<Self>,
        task: BlockTask,
        context: Arc<TaskContext>,
        _metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let store = task_store(&context, &self.store_url)?;
        Ok(futures::stream::once(async move { run_block(&store, &self, task).await }).boxed())
    }
}

async fn run_block(
    store: &Arc<dyn ObjectStore>,
    spec: &SolveSpec,
    task: BlockTask,
) -> Result<RecordBatch> {
    let started = Instant::now();
    let k = spec.params.rank;
    let ratings_path = format!("{}/{}", spec.ratings_dir, block_file(task.block));
    let ratings = cache::get_or_load(
        &ratings_path,
        BlockRatings::bytes,
        read_ratings(store, &Path::from(ratings_path.as_str()), &task),
    )
    .await?;
    let other = match &spec.other_dir {
        Some(dir) => {
            cache::get_or_load(
                dir,
                Factors::bytes,
                read_matrix(store, &Path::from(dir.as_str()), k, spec.other_rows),
            )
            .await?
        }
        None => {
            let (seed, side, rows) = (spec.params.seed, spec.side.other(), spec.other_rows);
            let key = format!("init:{seed}:{}:{rows}:{k}", side.name());
            cache::get_or_load(&key, Factors::bytes, async move {
                Ok(Factors::init(k, 0, rows, seed, side))
            })
            .await?
        }
    };
    let own = match &spec.previous_dir {
        Some(dir) => {
            read_block(
                store,
                &Path::from(format!("{dir}/{}", block_file(task.block))),
                k,
                task.start,
                task.rows,
            )
            .await?
        }
        None => Factors::init(k, task.start, task.rows, spec.params.seed, spec.side),
    };
    let other_gram = match &spec.other_gram {
        Some(g) => g.clone(),
        None => {
            let mut g = vec![0f32; k * k];
            add_gram(&other.values, k, &mut g);
            g
        }
    };
    let loaded = started.elapsed();
    let params = spec.params.clone();
    let with_loss = spec.with_loss;
    // The solve is pure CPU work: keep it off the async workers that serve the executor.
    let solved = tokio::task::spawn_blocking(move || {
        solve_block(&params, &ratings, &other, &other_gram, own, with_loss)
    })
    .await
    .map_err(|e| DataFusionError::Execution(format!("solver task failed: {e}")))?;
    let solved_at = started.elapsed();
    write_block(
        store,
        &Path::from(format!("{}/{}", spec.out_dir, block_file(task.block))),
        &solved.factors,
    )
    .await?;
    tracing::debug!(
        side = spec.side.name(),
        block = task.block,
        load_ms = loaded.as_millis() as u64,
        solve_ms = (solved_at - loaded).as_millis() as u64,
        write_ms = (started.elapsed() - solved_at).as_millis() as u64,
        "als block"
    );
    let gram_bytes: Vec<u8> = solved.gram.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(RecordBatch::try_new(
        summary_schema(),
        vec![
            Arc::new(Int64Array::from(vec![task.block as i64])),
            Arc::new(BinaryArray::from_vec(vec![gram_bytes.as_slice()])),
            Arc::new(Float64Array::from(vec![solved.loss])),
            Arc::new(Float64Array::from(vec![solved.reg])),
            Arc::new(Int64Array::from(vec![solved.nnz as i64])),
            Arc::new(Int64Array::from(vec![started.elapsed().as_micros() as i64])),
        ],
    )?)
}

/// Decodes a summary's Gram bytes.
pub(crate) fn gram_from_bytes(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> (AlsParams, BlockRatings, Factors) {
        let params = AlsParams {
            rank: 4,
            solver: Solver::Cholesky,
            ..AlsParams::default()
        };
        // Two rows: row 0 rated items 0 and 2, row 1 rated nothing.
        let ratings = BlockRatings {
            offsets: vec![0, 2, 2],
            cols: vec![0, 2],
            values: vec![3.0, 1.0],
            test: vec![],
        };
        let items = Factors::init(4, 0, 3, 9, Side::Items);
        (params, ratings, items)
    }

    #[test]
    fn rows_without_ratings_get_zero() {
        let (params, ratings, items) = tiny();
        let mut g = vec![0f32; 16];
        add_gram(&items.values, 4, &mut g);
        let own = Factors::init(4, 0, 2, 9, Side::Users);
        let solved = solve_block(&params, &ratings, &items, &g, own, true);
        assert!(solved.factors.row(1).iter().all(|&v| v == 0.0));
        assert!(solved.factors.row(0).iter().any(|&v| v != 0.0));
        assert_eq!(solved.nnz, 2);
    }

    #[test]
    fn confidence_forms() {
        let lin = AlsParams {
            log_epsilon: None,
            alpha: 40.0,
            ..AlsParams::default()
        };
        assert_eq!(lin.confidence(2.0), 81.0);
        let log = AlsParams {
            log_epsilon: Some(1.0),
            ..AlsParams::default()
        };
        assert!((log.confidence(1.0) - (1.0 + log.alpha * 2f32.ln())).abs() < 1e-5);
    }
}
