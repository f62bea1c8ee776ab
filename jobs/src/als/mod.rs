//! Implicit ALS (Hu, Koren & Volinsky 2008) as a sequence of Ballista jobs, evaluated on every
//! train, stored as a versioned model.
//!
//! 1. [`prep`]: dense ids, a per-user time split (earliest 80 % of each user's listens train,
//!    the rest test), and the ratings shuffled once into user blocks and item blocks.
//! 2. Every iteration is two jobs, one per side ([`solve`]): one task per block solves its rows
//!    against the other side's factors (read from the lake) and the shared Gram matrix, with a
//!    few warm-started conjugate-gradient steps (or an exact Cholesky solve), and writes them.
//!    Each block reports its share of the next Gram matrix and of the loss, which the client
//!    sums in block order, so a cluster trains exactly what the embedded default trains.
//! 3. [`evaluate`]: precision, recall, NDCG and MAP at 10 for the model and for popularity.
//! 4. [`model`]: `models/als/<version>/{users,items}.parquet`, `metrics.json`, `loss.svg`, the
//!    users' plays by dense index (`history/`, what serving leaves out as already heard), then
//!    `models/als/CURRENT` is switched to the new version.
//! 5. [`versions`]: a retrain on a trailing window carries users outside it over (folded in
//!    against the new items), is published only when its NDCG@10 holds up, and old versions go.
//!
//! The minimised loss is Σ_{u,i} c_ui (p_ui − x_uᵀy_i)² + Σ_u λ_u‖x_u‖² + Σ_i λ_i‖y_i‖², with
//! p = 1 for played pairs, c = 1 + α·r (or 1 + α·ln(1 + r/ε)), r = plays, and λ fixed (as in
//! `implicit`) or λ·(ratings of the row) (as in Spark).

pub mod by_user;
mod cache;
pub mod evaluate;
pub mod factors;
pub mod metrics;
pub mod model;
pub mod pairs;
pub mod plays;
pub mod prep;
pub mod solve;
pub mod versions;

use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use recsys_core::Store;
use serde::{Deserialize, Serialize};

use crate::worklist::work_list;
use crate::{Cluster, JobError};
use evaluate::{AlsEvalExec, EvalSpec, sums_from_row};
use factors::{Factors, Side, read_matrix};
use metrics::{MetricSums, Metrics};
pub use prep::RatingsSource;
use solve::{AlsSolveExec, BlockTask, SolveSpec, gram_from_bytes};

/// Folder of all ALS models.
pub use recsys_core::models::ALS_MODELS_DIR as MODELS_DIR;

/// How each row's normal equations are solved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Solver {
    /// Warm-started conjugate gradient, a few steps per row per iteration.
    Cg { steps: usize },
    /// Exact solve by Cholesky factorisation.
    Cholesky,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlsParams {
    pub rank: usize,
    pub iterations: usize,
    pub reg: f32,
    /// Spark's regularisation: λ times the row's number of ratings.
    pub reg_scaled_by_count: bool,
    pub alpha: f32,
    /// `Some(ε)`: log confidence 1 + α·ln(1 + r/ε); `None`: linear 1 + α·r.
    pub log_epsilon: Option<f32>,
    pub solver: Solver,
    pub seed: u64,
}

impl Default for AlsParams {
    fn default() -> Self {
        AlsParams {
            rank: 64,
            iterations: 15,
            reg: 0.1,
            reg_scaled_by_count: true,
            alpha: 1.0,
            log_epsilon: Some(1.0),
            solver: Solver::Cg { steps: 3 },
            seed: 42,
        }
    }
}

/// How a training run is organised (not part of the model).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Evaluate on a time split (the model is then fit on the earliest `train_fraction`).
    pub evaluate: bool,
    pub train_fraction: f64,
    /// Blocks per side (default: one per task slot: fewer, larger tasks measured faster).
    pub blocks: Option<usize>,
    /// Streamed events (weighted by action) or sorted listens.
    pub ratings: RatingsSource,
    /// Only the plays of a trailing window (all plays with `None`).
    pub window: Option<TrainWindow>,
    /// Point `models/als/CURRENT` at the new version once it is stored (a retrain that gates
    /// the version on its metrics publishes it itself: [`versions::publish`]).
    pub publish: bool,
}

/// A trailing window of days: the plays a training reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainWindow {
    pub days: u32,
    pub end: WindowEnd,
}

/// Where a training window ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowEnd {
    /// Now (a live system).
    Now,
    /// At the newest play (replayed history).
    NewestPlay,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            evaluate: true,
            train_fraction: 0.8,
            blocks: None,
            ratings: RatingsSource::Auto,
            window: None,
            publish: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct IterationStat {
    pub iteration: usize,
    pub loss: f64,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub model: Metrics,
    pub popularity: Metrics,
}

/// A trained model, in memory.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    pub user_ids: Vec<String>,
    pub item_ids: Vec<String>,
    pub users: Factors,
    pub items: Factors,
}

#[derive(Debug, Clone)]
pub struct AlsSummary {
    pub version: String,
    pub params: AlsParams,
    pub listens: u64,
    /// Where the ratings came from (never `Auto`).
    pub ratings: RatingsSource,
    /// The trailing window the plays were taken from: [since, end) in µs.
    pub window: Option<(i64, i64)>,
    pub nnz: u64,
    pub iterations: Vec<IterationStat>,
    pub evaluation: Option<Evaluation>,
    pub prepare: Duration,
    pub train: Duration,
    pub evaluate: Duration,
    pub model: TrainedModel,
}

/// Block file name inside a blocks folder.
pub fn block_file(block: usize) -> String {
    format!("block-{block:05}.parquet")
}

fn summaries(batches: &[RecordBatch], k: usize) -> Result<(Vec<f32>, f64, f64), JobError> {
    let mut rows: Vec<(i64, Vec<f64>, f64, f64)> = Vec::new();
    for b in batches {
        let block = b.column(0).as_primitive::<Int64Type>();
        let gram = b.column(1).as_binary::<i32>();
        let loss = b.column(2).as_primitive::<Float64Type>();
        let reg = b.column(3).as_primitive::<Float64Type>();
        for r in 0..b.num_rows() {
            rows.push((
                block.value(r),
                gram_from_bytes(gram.value(r)),
                loss.value(r),
                reg.value(r),
            ));
        }
    }
    // Block order: the same sums in the same order wherever the blocks ran.
    rows.sort_by_key(|r| r.0);
    let mut gram = vec![0f64; k * k];
    let (mut loss, mut reg) = (0f64, 0f64);
    for (_, g, l, r) in rows {
        for (a, b) in gram.iter_mut().zip(g) {
            *a += b;
        }
        loss += l;
        reg += r;
    }
    Ok((gram.into_iter().map(|v| v as f32).collect(), loss, reg))
}

/// Trains, evaluates and stores a model from the lake's streamed events or sorted listens
/// (`options.ratings`); `progress` sees every
/// finished iteration.
pub async fn train(
    cluster: &Cluster,
    lake: &Store,
    params: &AlsParams,
    options: &TrainOptions,
    progress: impl Fn(&IterationStat),
) -> Result<AlsSummary, JobError> {
    cluster.check_lake(lake)?;
    let version = model::new_version(lake).await?;
    let work = format!("{MODELS_DIR}/{version}/work");
    let started = Instant::now();
    let fraction = if options.evaluate {
        options.train_fraction
    } else {
        1.0
    };
    let block_count = options.blocks.unwrap_or(cluster.parallelism()).max(1);
    let prepared = prep::prepare(
        cluster,
        lake,
        &work,
        fraction,
        block_count,
        options.ratings,
        options.window,
    )
    .await?;
    let prepare = started.elapsed();
    tracing::info!(
        users = prepared.users.len(),
        items = prepared.items.len(),
        pairs = prepared.nnz,
        secs = format!("{:.2}", prepare.as_secs_f64()),
        source = ?prepared.source,
        "als: ratings prepared"
    );

    let k = params.rank;
    let url = lake.base_url().to_string();
    let dir = |side: Side, it: usize| {
        lake.path(&format!("{work}/factors/{}/it-{it:03}", side.name()))
            .to_string()
    };
    let mut item_gram: Option<Vec<f32>> = None;
    let mut stats = Vec::new();
    let train_started = Instant::now();
    for it in 1..=params.iterations {
        let t = Instant::now();
        let step =
            |side: Side, other_gram: Option<Vec<f32>>, with_loss: bool, blocks: &[BlockTask]| {
                let spec = SolveSpec {
                    store_url: url.clone(),
                    side,
                    params: params.clone(),
                    ratings_dir: lake
                        .path(&format!(
                            "{work}/{}",
                            if side == Side::Users {
                                "by_user"
                            } else {
                                "by_item"
                            }
                        ))
                        .to_string(),
                    other_dir: match side {
                        Side::Users => (it > 1).then(|| dir(Side::Items, it - 1)),
                        Side::Items => Some(dir(Side::Users, it)),
                    },
                    other_rows: match side {
                        Side::Users => prepared.items.len(),
                        Side::Items => prepared.users.len(),
                    },
                    previous_dir: (it > 1).then(|| dir(side, it - 1)),
                    out_dir: dir(side, it),
                    other_gram,
                    with_loss,
                };
                let blocks = blocks.to_vec();
                async move {
                    let plan = std::sync::Arc::new(AlsSolveExec::new(work_list(&blocks)?, spec));
                    cluster.run(plan).await
                }
            };
        let (user_gram, _, user_reg) = summaries(
            &step(Side::Users, item_gram.take(), false, &prepared.user_blocks).await?,
            k,
        )?;
        let (gram, observed, item_reg) = summaries(
            &step(
                Side::Items,
                Some(user_gram.clone()),
                true,
                &prepared.item_blocks,
            )
            .await?,
            k,
        )?;
        // Loss = observed terms + Σ_u x_uᵀ(YᵀY)x_u (= trace(XᵀX·YᵀY)) + regularisation.
        let unobserved: f64 = user_gram
            .iter()
            .zip(&gram)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        item_gram = Some(gram);
        let stat = IterationStat {
            iteration: it,
            loss: observed + unobserved + item_reg + user_reg,
            seconds: t.elapsed().as_secs_f64(),
        };
        progress(&stat);
        stats.push(stat);
        if it > 1 {
            prep::remove(lake, &format!("{work}/factors/users/it-{:03}", it - 1)).await?;
            prep::remove(lake, &format!("{work}/factors/items/it-{:03}", it - 1)).await?;
        }
    }
    let train = train_started.elapsed();
    let last = params.iterations.max(1);

    let eval_started = Instant::now();
    let evaluation = if options.evaluate && params.iterations > 0 {
        let spec = EvalSpec {
            store_url: url.clone(),
            rank: k,
            ratings_dir: lake.path(&format!("{work}/by_user")).to_string(),
            users_dir: dir(Side::Users, last),
            items_dir: dir(Side::Items, last),
            items: prepared.items.len(),
            popularity: prepared.popularity.iter().copied().take(5000).collect(),
        };
        let plan = std::sync::Arc::new(AlsEvalExec::new(work_list(&prepared.user_blocks)?, spec));
        let (mut m, mut p) = (MetricSums::default(), MetricSums::default());
        let mut rows = Vec::new();
        for b in cluster.run(plan).await? {
            for r in 0..b.num_rows() {
                rows.push((
                    b.column(0).as_primitive::<Int64Type>().value(r),
                    sums_from_row(&b, r),
                ));
            }
        }
        rows.sort_by_key(|r| r.0);
        for (_, (bm, bp)) in rows {
            m.merge(&bm);
            p.merge(&bp);
        }
        Some(Evaluation {
            model: m.means(),
            popularity: p.means(),
        })
    } else {
        None
    };
    let evaluate = eval_started.elapsed();

    let store = lake.object_store();
    let trained = TrainedModel {
        users: if params.iterations > 0 {
            read_matrix(
                &store,
                &dir(Side::Users, last).as_str().into(),
                k,
                prepared.users.len(),
            )
            .await?
        } else {
            Factors::init(k, 0, prepared.users.len(), params.seed, Side::Users)
        },
        items: if params.iterations > 0 {
            read_matrix(
                &store,
                &dir(Side::Items, last).as_str().into(),
                k,
                prepared.items.len(),
            )
            .await?
        } else {
            Factors::init(k, 0, prepared.items.len(), params.seed, Side::Items)
        },
        user_ids: prepared.users.clone(),
        item_ids: prepared.items.clone(),
    };
    let summary = AlsSummary {
        version: version.clone(),
        params: params.clone(),
        listens: prepared.listens,
        ratings: prepared.source,
        window: prepared.window,
        nnz: prepared.nnz,
        iterations: stats,
        evaluation,
        prepare,
        train,
        evaluate,
        model: trained,
    };
    model::store(lake, &summary, fraction, &format!("{work}/by_user")).await?;
    if options.publish {
        versions::publish(lake, &version).await?;
    }
    prep::remove(lake, &work).await?;
    Ok(summary)
}

/// Floating-point operations of one iteration (both half-steps, loss included), counting a
/// fused multiply-add as two: for each side, every row builds b (2k·n flops for its n ratings),
/// runs the initial residual and `steps` CG steps (2k² + 4k·n each), and adds to the Gram
/// matrix (2k²); the loss adds 2k² + 2k·n per item.
pub fn flops_per_iteration(params: &AlsParams, users: u64, items: u64, nnz: u64) -> f64 {
    let k = params.rank as f64;
    let steps = match params.solver {
        Solver::Cg { steps } => steps as f64,
        // A Cholesky solve costs about k/3 CG steps' worth of k² work.
        Solver::Cholesky => k / 3.0,
    };
    let rows = (users + items) as f64;
    let ratings = 2.0 * nnz as f64;
    let per_side = 2.0 * k * ratings
        + (steps + 1.0) * (2.0 * k * k * rows + 4.0 * k * ratings)
        + 2.0 * k * k * rows;
    per_side + 2.0 * k * k * items as f64 + 2.0 * k * nnz as f64
}
