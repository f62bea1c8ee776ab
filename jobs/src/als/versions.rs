//! Model versions over time: the gate a retrained version passes before serving sees it, the
//! users a training window left out carried over into the new version, publication, and the
//! removal of old versions.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Float32Array, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use object_store::{ObjectStoreExt, PutPayload};
use recsys_core::Store;
use recsys_core::foldin::ItemFactors;

use super::factors::{factors_array, model_schema};
use super::{AlsParams, Evaluation, MODELS_DIR};
use crate::JobError;
use crate::lake::read_parquet;
use crate::write::{Payload, write_parquet_file};

/// Points `models/als/CURRENT` at `version` (one put: serving sees the old or the new name).
pub async fn publish(lake: &Store, version: &str) -> Result<(), JobError> {
    lake.object_store()
        .put(
            &lake.path(&format!("{MODELS_DIR}/CURRENT")),
            PutPayload::from(format!("{version}\n")),
        )
        .await?;
    Ok(())
}

/// The versions under `models/als/` that hold any file, oldest first (names are the UTC times
/// of their trains, `-n` told apart).
pub async fn list(lake: &Store) -> Result<Vec<String>, JobError> {
    let root = lake.path(MODELS_DIR);
    let mut versions: Vec<String> = crate::lake::list(lake.object_store().as_ref(), &root)
        .await?
        .iter()
        .filter_map(|o| {
            let mut parts = o.location.prefix_match(&root)?;
            let first = parts.next()?;
            // A file directly under models/als/ (CURRENT) is no version.
            parts.next().map(|_| first.as_ref().to_string())
        })
        .collect();
    versions.sort_by_key(|v| order_key(v));
    versions.dedup();
    Ok(versions)
}

fn order_key(version: &str) -> (String, u64) {
    match version.rsplit_once('-') {
        Some((base, n)) if n.chars().all(|c| c.is_ascii_digit()) => {
            (base.to_string(), n.parse().unwrap_or(0))
        }
        _ => (version.to_string(), 0),
    }
}

/// Removes a version's folder.
pub async fn remove(lake: &Store, version: &str) -> Result<(), JobError> {
    super::prep::remove(lake, &format!("{MODELS_DIR}/{version}")).await
}

/// Removes every complete version (one with `metrics.json`) but the newest `keep` and the one
/// CURRENT names, and the incomplete ones (a train that failed or was killed) older than the
/// newest complete one: a train still running is newer. Returns the removed.
pub async fn prune(lake: &Store, keep: usize) -> Result<Vec<String>, JobError> {
    let current = super::model::current(lake).await?;
    let store = lake.object_store();
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for version in list(lake).await? {
        let metrics = lake.path(&format!("{MODELS_DIR}/{version}/metrics.json"));
        match store.head(&metrics).await {
            Ok(_) => complete.push(version),
            Err(object_store::Error::NotFound { .. }) => incomplete.push(version),
            Err(e) => return Err(e.into()),
        }
    }
    let newest = complete.last().map(|v| order_key(v));
    let old = complete.len().saturating_sub(keep.max(1));
    let mut removed = Vec::new();
    let stale = complete[..old]
        .iter()
        .chain(incomplete.iter().filter(|v| Some(order_key(v)) < newest));
    for version in stale {
        if current.as_deref() != Some(version.as_str()) {
            remove(lake, version).await?;
            removed.push(version.clone());
        }
    }
    Ok(removed)
}

/// A version's `metrics.json`.
async fn metrics(lake: &Store, version: &str) -> Result<serde_json::Value, JobError> {
    let rel = format!("{MODELS_DIR}/{version}/metrics.json");
    let got = lake.object_store().get(&lake.path(&rel)).await?;
    serde_json::from_slice(&got.bytes().await?)
        .map_err(|e| JobError::Invariant(format!("{}: {e}", lake.url(&rel))))
}

/// A version's evaluation (`None`: trained without one).
pub async fn evaluation(lake: &Store, version: &str) -> Result<Option<Evaluation>, JobError> {
    let m = metrics(lake, version).await?;
    Ok(serde_json::from_value(m["evaluation"].clone()).unwrap_or(None))
}

/// Whether a new version may replace the current one: its NDCG@10 is not worse than the
/// current one's by more than `max_drop` (a fraction of it). Why not, when not.
pub fn gate(
    new: Option<&Evaluation>,
    current: Option<&Evaluation>,
    max_drop: f64,
) -> Result<String, String> {
    match (new, current) {
        (_, None) => Ok("no evaluated model is serving".into()),
        (None, Some(_)) => {
            Err("the new version was trained without an evaluation, the serving one has one".into())
        }
        (Some(new), Some(current)) => {
            let (n, c) = (new.model.ndcg_at_10, current.model.ndcg_at_10);
            let floor = c * (1.0 - max_drop.max(0.0));
            if n >= floor {
                Ok(format!("NDCG@10 {n:.4} against {c:.4} serving"))
            } else {
                Err(format!(
                    "NDCG@10 {n:.4} is below {floor:.4} ({c:.4} serving, at most {:.0} % worse allowed)",
                    max_drop * 100.0
                ))
            }
        }
    }
}

/// One model file's ids and row-major factors, and k.
async fn read_factors(lake: &Store, rel: &str) -> Result<(Vec<String>, Vec<f32>, usize), JobError> {
    let (batches, _) = read_parquet(lake.object_store().as_ref(), &lake.path(rel)).await?;
    recsys_core::models::factors(&batches, &lake.url(rel)).map_err(JobError::Invariant)
}

/// Every (user, item, weight) of a version's `history/` (the weight: training plus test plays).
async fn read_history(lake: &Store, version: &str) -> Result<Vec<(i32, i32, f32)>, JobError> {
    let store = lake.object_store();
    let mut rows = Vec::new();
    let dir = lake.path(&format!("{MODELS_DIR}/{version}/history"));
    for file in crate::lake::list(store.as_ref(), &dir).await? {
        let (batches, _) = read_parquet(store.as_ref(), &file.location).await?;
        rows.extend(
            recsys_core::models::history(&batches, file.location.as_ref())
                .map_err(JobError::Invariant)?,
        );
    }
    Ok(rows)
}

/// Users of version `from` that version `to` (trained on a window they have no plays in) lacks
/// get a factor folded in from their plays in `from` against `to`'s item factors, and those
/// plays as history, so that serving neither forgets them nor keeps a stale vector. Run on an
/// unpublished `to`; returns the users carried over.
pub async fn carry_over(
    lake: &Store,
    from: &str,
    to: &str,
    params: &AlsParams,
) -> Result<usize, JobError> {
    let dir = format!("{MODELS_DIR}/{to}");
    let (old_users, _, _) =
        read_factors(lake, &format!("{MODELS_DIR}/{from}/users.parquet")).await?;
    let (old_items, _, _) =
        read_factors(lake, &format!("{MODELS_DIR}/{from}/items.parquet")).await?;
    let (mut users, mut x, ku) = read_factors(lake, &format!("{dir}/users.parquet")).await?;
    let (items, y, k) = read_factors(lake, &format!("{dir}/items.parquet")).await?;
    if ku != k && !users.is_empty() {
        return Err(JobError::Invariant(format!(
            "{}: user factors have rank {ku}, item factors {k}",
            lake.url(&dir)
        )));
    }
    let known: std::collections::HashSet<&str> = users.iter().map(String::as_str).collect();
    let item_index: HashMap<&str, u32> = items
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i as u32))
        .collect();
    // Each left-out user's plays, by the new item indexes (items the new version lacks drop).
    let mut plays: HashMap<i32, Vec<(u32, f32)>> = HashMap::new();
    for (u, i, w) in read_history(lake, from).await? {
        let (Some(user), Some(item)) = (old_users.get(u as usize), old_items.get(i as usize))
        else {
            continue;
        };
        if known.contains(user.as_str()) {
            continue;
        }
        if let Some(&item) = item_index.get(item.as_str()) {
            plays.entry(u).or_default().push((item, w));
        }
    }
    let fold = ItemFactors::new(
        k,
        y,
        params.reg,
        params.reg_scaled_by_count,
        params.alpha,
        params.log_epsilon,
    );
    let mut carried: Vec<(i32, Vec<(u32, f32)>)> = plays.into_iter().collect();
    carried.sort_by_key(|(u, _)| *u);
    let (mut rows, mut cols, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    let mut count = 0;
    for (u, ratings) in carried {
        let Some(vector) = fold.fold_in(&ratings) else {
            continue;
        };
        let row = users.len() as i32;
        users.push(old_users[u as usize].clone());
        x.extend(vector);
        for (item, w) in ratings {
            rows.push(row);
            cols.push(item as i32);
            weights.push(w);
        }
        count += 1;
    }
    if count == 0 {
        return Ok(0);
    }
    let store = lake.object_store();
    let schema = model_schema("user_id", k);
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(users.iter())),
            Arc::new(factors_array(x, k)?),
        ],
    )?;
    let history_schema = Arc::new(Schema::new(vec![
        Field::new("row", DataType::Int32, false),
        Field::new("col", DataType::Int32, false),
        Field::new("r", DataType::Float32, false),
        Field::new("t", DataType::Float32, false),
    ]));
    let zeros = Float32Array::from(vec![0.0; rows.len()]);
    let history = RecordBatch::try_new(
        history_schema.clone(),
        vec![
            Arc::new(Int32Array::from(rows)),
            Arc::new(Int32Array::from(cols)),
            Arc::new(Float32Array::from(weights)),
            Arc::new(zeros),
        ],
    )?;
    write_parquet_file(
        store.clone(),
        &lake.path(&format!("{dir}/history/carried.parquet")),
        history_schema,
        vec![history],
        Payload::Records,
        vec![],
    )
    .await?;
    write_parquet_file(
        store.clone(),
        &lake.path(&format!("{dir}/users.parquet")),
        schema,
        vec![batch],
        Payload::Vectors,
        vec![],
    )
    .await?;
    let mut m = metrics(lake, to).await?;
    m["data"]["carried_over"] = serde_json::json!({ "from": from, "users": count });
    let json = serde_json::to_vec_pretty(&m).map_err(|e| JobError::Invariant(e.to_string()))?;
    store
        .put(
            &lake.path(&format!("{dir}/metrics.json")),
            PutPayload::from(json),
        )
        .await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::als::metrics::Metrics;

    fn eval(ndcg: f64) -> Evaluation {
        let m = Metrics {
            users: 10,
            precision_at_10: 0.1,
            recall_at_10: 0.1,
            ndcg_at_10: ndcg,
            map_at_10: 0.1,
        };
        Evaluation {
            model: m,
            popularity: m,
        }
    }

    #[test]
    fn the_gate_allows_a_bounded_drop_only() {
        assert!(gate(Some(&eval(0.30)), None, 0.05).is_ok());
        assert!(gate(Some(&eval(0.30)), Some(&eval(0.30)), 0.0).is_ok());
        assert!(gate(Some(&eval(0.29)), Some(&eval(0.30)), 0.05).is_ok());
        let why = gate(Some(&eval(0.28)), Some(&eval(0.30)), 0.05).unwrap_err();
        assert!(why.contains("0.2800") && why.contains("0.3000"), "{why}");
        assert!(gate(None, Some(&eval(0.30)), 0.05).is_err());
    }

    #[test]
    fn versions_sort_by_time_then_number() {
        let mut v = vec![
            "20091201T101500Z-10",
            "20091201T101500Z-2",
            "20091201T101500Z",
            "20081201T000000Z",
        ];
        v.sort_by_key(|v| order_key(v));
        assert_eq!(
            v,
            [
                "20081201T000000Z",
                "20091201T101500Z",
                "20091201T101500Z-2",
                "20091201T101500Z-10"
            ]
        );
    }
}
