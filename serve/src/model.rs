//! The serving copy of an ALS model: user and item factors read from
//! `models/als/<version>/{users,items}.parquet`, the training settings fold-in needs (from
//! `metrics.json`), and which items the catalog still holds (clean & sync removes songs the model
//! was trained with; they must never be recommended).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use recsys_catalog::Catalog;
use recsys_core::Store;
use recsys_core::linalg::{dots, top_k};
use recsys_core::models::ALS_MODELS_DIR;

use crate::ServeError;
use recsys_core::foldin::ItemFactors;

thread_local! {
    /// Scores of one candidate pass.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Catalog lookups per round trip while checking which items are servable.
const CATALOG_CHUNK: usize = 1000;

/// The training settings of `metrics.json` that fold-in repeats.
#[derive(Debug, serde::Deserialize)]
struct Params {
    reg: f32,
    reg_scaled_by_count: bool,
    alpha: f32,
    log_epsilon: Option<f32>,
}

#[derive(Debug, serde::Deserialize)]
struct Metrics {
    params: Params,
}

/// Items the catalog holds, and their factors (row-major).
struct Servable {
    items: Vec<u32>,
    y: Vec<f32>,
}

/// One loaded model version.
pub struct Model {
    pub version: String,
    pub k: usize,
    users: HashMap<String, u32>,
    user_factors: Vec<f32>,
    pub item_ids: Vec<String>,
    items: HashMap<String, u32>,
    /// Item factors (row-major) and the fold-in solver over them.
    pub fold: ItemFactors,
    /// Items the catalog holds, and their factors: the rows candidates are scanned from
    /// (replaced by [`Model::refresh_servable`] when the catalog changes).
    servable: std::sync::RwLock<Arc<Servable>>,
    /// Every user's played items (`history/`), as CSR: user `u`'s are
    /// `heard[heard_at[u]..heard_at[u + 1]]`.
    heard_at: Vec<usize>,
    heard: Vec<u32>,
}

/// Ids and row-major factors of one model file.
async fn read(lake: &Store, rel: &str) -> Result<bytes::Bytes, ServeError> {
    let got = lake
        .object_store()
        .get(&lake.path(rel))
        .await
        .map_err(|e| lake.error(rel, e))?;
    Ok(got.bytes().await.map_err(|e| lake.error(rel, e))?)
}

/// The Parquet batches of the lake's object `rel` (model files, and the events `verify` looks
/// through).
pub(crate) async fn read_batches(lake: &Store, rel: &str) -> Result<Vec<RecordBatch>, ServeError> {
    let invalid = |reason: String| ServeError::Parquet {
        url: lake.url(rel),
        reason,
    };
    let bytes = read(lake, rel).await?;
    ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| invalid(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))
}

/// `(user, item)` plays of the model's `history/` blocks (none for a model without one).
async fn read_history(lake: &Store, dir: &str) -> Result<Vec<(u32, u32)>, ServeError> {
    let rel = format!("{dir}/history");
    let blocks: Vec<object_store::ObjectMeta> = lake
        .object_store()
        .list(Some(&lake.path(&rel)))
        .try_collect()
        .await
        .map_err(|e| lake.error(&rel, e))?;
    let mut pairs = Vec::new();
    for block in blocks {
        let file = lake.relative(block.location.as_ref());
        let plays = recsys_core::models::history(&read_batches(lake, &file).await?, &file)
            .map_err(|reason| ServeError::Model {
                url: lake.url(&file),
                reason,
            })?;
        pairs.extend(
            plays
                .into_iter()
                .filter(|(u, i, _)| *u >= 0 && *i >= 0)
                .map(|(u, i, _)| (u as u32, i as u32)),
        );
    }
    Ok(pairs)
}

async fn read_factors(
    lake: &Store,
    rel: &str,
) -> Result<(Vec<String>, Vec<f32>, usize), ServeError> {
    let batches = read_batches(lake, rel).await?;
    recsys_core::models::factors(&batches, rel).map_err(|reason| ServeError::Model {
        url: lake.url(rel),
        reason,
    })
}

/// The items of `item_ids` (indexed by `items`) that `catalog` holds, with their rows of the
/// row-major `factors` (rank `k`).
async fn servable(
    catalog: &dyn Catalog,
    item_ids: &[String],
    items: &HashMap<String, u32>,
    factors: &[f32],
    k: usize,
) -> Result<Servable, ServeError> {
    let mut held = vec![false; item_ids.len()];
    for chunk in item_ids.chunks(CATALOG_CHUNK) {
        for song in catalog.songs(chunk).await? {
            if let Some(&i) = items.get(&song.stats.id) {
                held[i as usize] = true;
            }
        }
    }
    let servable: Vec<u32> = (0..item_ids.len() as u32)
        .filter(|&i| held[i as usize])
        .collect();
    let y = servable
        .iter()
        .flat_map(|&i| &factors[i as usize * k..(i as usize + 1) * k])
        .copied()
        .collect();
    Ok(Servable { items: servable, y })
}

impl Model {
    /// Reads version `version` of the lake's ALS models and marks the items `catalog` holds.
    pub async fn load(
        lake: &Store,
        version: &str,
        catalog: &dyn Catalog,
    ) -> Result<Model, ServeError> {
        let dir = format!("{ALS_MODELS_DIR}/{version}");
        let metrics_rel = format!("{dir}/metrics.json");
        let metrics: Metrics =
            serde_json::from_slice(&read(lake, &metrics_rel).await?).map_err(|e| {
                ServeError::Model {
                    url: lake.url(&metrics_rel),
                    reason: e.to_string(),
                }
            })?;
        let (user_ids, user_factors, ku) =
            read_factors(lake, &format!("{dir}/users.parquet")).await?;
        let (item_ids, item_factors, k) =
            read_factors(lake, &format!("{dir}/items.parquet")).await?;
        if ku != k && !user_ids.is_empty() {
            return Err(ServeError::Model {
                url: lake.url(&dir),
                reason: format!("user factors have rank {ku}, item factors {k}"),
            });
        }
        let p = metrics.params;
        let items: HashMap<String, u32> = item_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let servable = servable(catalog, &item_ids, &items, &item_factors, k).await?;
        let mut history = read_history(lake, &dir).await?;
        history.retain(|(u, i)| (*u as usize) < user_ids.len() && (*i as usize) < item_ids.len());
        history.sort_unstable();
        history.dedup();
        let mut heard_at = vec![0usize; user_ids.len() + 1];
        for (u, _) in &history {
            heard_at[*u as usize + 1] += 1;
        }
        for u in 0..user_ids.len() {
            heard_at[u + 1] += heard_at[u];
        }
        Ok(Model {
            heard_at,
            heard: history.into_iter().map(|(_, i)| i).collect(),
            version: version.to_string(),
            k,
            users: user_ids
                .into_iter()
                .enumerate()
                .map(|(i, id)| (id, i as u32))
                .collect(),
            user_factors,
            item_ids,
            items,
            fold: ItemFactors::new(
                k,
                item_factors,
                p.reg,
                p.reg_scaled_by_count,
                p.alpha,
                p.log_epsilon,
            ),
            servable: std::sync::RwLock::new(Arc::new(servable)),
        })
    }

    /// Marks again which items the catalog holds (after clean & sync removed songs, or songs
    /// came back); returns how many.
    pub async fn refresh_servable(&self, catalog: &dyn Catalog) -> Result<usize, ServeError> {
        let fresh = servable(catalog, &self.item_ids, &self.items, &self.fold.y, self.k).await?;
        let n = fresh.items.len();
        *self.servable.write().expect("servable lock") = Arc::new(fresh);
        Ok(n)
    }

    /// The user's ALS factor.
    pub fn user(&self, id: &str) -> Option<&[f32]> {
        self.users
            .get(id)
            .map(|&u| &self.user_factors[u as usize * self.k..(u as usize + 1) * self.k])
    }

    /// The items the user played (training and test plays of the model's data).
    pub fn heard(&self, user: &str) -> &[u32] {
        match self.users.get(user) {
            Some(&u) => &self.heard[self.heard_at[u as usize]..self.heard_at[u as usize + 1]],
            None => &[],
        }
    }

    pub fn item(&self, id: &str) -> Option<u32> {
        self.items.get(id).copied()
    }

    pub fn item_factor(&self, item: u32) -> &[f32] {
        &self.fold.y[item as usize * self.k..(item as usize + 1) * self.k]
    }

    /// Items the catalog holds.
    pub fn servable(&self) -> usize {
        self.servable.read().expect("servable lock").items.len()
    }

    /// The `n` servable items with the largest inner product with `v`, best first, skipping
    /// `excluded` items: `(item, score)`.
    pub fn candidates(
        &self,
        v: &[f32],
        n: usize,
        excluded: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f32)> {
        if v.len() != self.k || self.k == 0 {
            return vec![];
        }
        let servable = self.servable.read().expect("servable lock").clone();
        SCORES.with_borrow_mut(|scores| {
            // One buffer per thread: a fresh 250 KB buffer per call cost page faults.
            scores.clear();
            scores.resize(servable.items.len(), 0.0);
            dots(&servable.y, v, scores);
            top_k(scores, n, |j| excluded(servable.items[j as usize]))
                .into_iter()
                .map(|j| (servable.items[j as usize], scores[j as usize]))
                .collect()
        })
    }
}
