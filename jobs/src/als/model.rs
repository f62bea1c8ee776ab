//! The model store: `models/als/<version>/` holds `users.parquet` and `items.parquet` (id +
//! `FixedSizeList<Float32, k>`), `metrics.json`, `loss.svg` and `history/` (every user's plays
//! by the dense indexes of the two factor files); `models/als/CURRENT` names the
//! version serving loads. CURRENT is switched last, after every file of the version has been
//! written and read back, so a crashed train never leaves it pointing at half a model.

use object_store::{ObjectStoreExt, PutPayload};
use recsys_core::Store;
use serde_json::json;

use super::factors::model_batch;
use super::{AlsSummary, IterationStat, MODELS_DIR};
use crate::JobError;
use crate::lake::read_parquet;
use crate::write::{Payload, write_parquet_file};

/// A new version name: the UTC time of the train (`20091201T101500Z`), made unique.
pub async fn new_version(lake: &Store) -> Result<String, JobError> {
    let mut stamp = Vec::new();
    recsys_core::time::format_timestamp_secs(recsys_core::time::now_micros(), &mut stamp);
    let base: String = String::from_utf8_lossy(&stamp)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let store = lake.object_store();
    for n in 0.. {
        let version = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let listed = crate::lake::list(
            store.as_ref(),
            &lake.path(&format!("{MODELS_DIR}/{version}")),
        )
        .await?;
        if listed.is_empty() {
            return Ok(version);
        }
    }
    unreachable!("an unused version name exists")
}

/// The version `models/als/CURRENT` names, if any.
pub async fn current(lake: &Store) -> Result<Option<String>, JobError> {
    Ok(recsys_core::models::current_als(lake).await?)
}

/// Writes the model files, moves the users' rating blocks from `by_user` (`row` = user index,
/// `col` = item index or −1, training and test plays) to `history/` and verifies the factors;
/// [`super::versions::publish`] then points CURRENT at it.
pub async fn store(
    lake: &Store,
    summary: &AlsSummary,
    train_fraction: f64,
    by_user: &str,
) -> Result<(), JobError> {
    let dir = format!("{MODELS_DIR}/{}", summary.version);
    let store = lake.object_store();
    for block in crate::lake::list(store.as_ref(), &lake.path(by_user)).await? {
        let name = block.location.filename().unwrap_or_default().to_string();
        store
            .rename(
                &block.location,
                &lake.path(&format!("{dir}/history/{name}")),
            )
            .await?;
    }
    let m = &summary.model;
    let users = model_batch("user_id", &m.user_ids, &m.users)?;
    let items = model_batch("track_id", &m.item_ids, &m.items)?;
    for (name, batch) in [("users.parquet", users), ("items.parquet", items)] {
        let path = lake.path(&format!("{dir}/{name}"));
        let rows = batch.num_rows();
        write_parquet_file(
            store.clone(),
            &path,
            batch.schema(),
            vec![batch],
            Payload::Vectors,
            vec![],
        )
        .await?;
        let (back, _) = read_parquet(store.as_ref(), &path).await?;
        let got: usize = back.iter().map(|b| b.num_rows()).sum();
        if got != rows {
            return Err(JobError::Invariant(format!(
                "{path} holds {got} rows after writing {rows}"
            )));
        }
    }
    let metrics = json!({
        "version": summary.version,
        "params": summary.params,
        "data": {
            "window": summary.window.map(|(since, end)| json!({
                "since": recsys_core::time::date_string(since),
                "end": recsys_core::time::date_string(end),
            })),
            "listens": summary.listens,
            "ratings": summary.ratings,
            "users": m.user_ids.len(),
            "items": m.item_ids.len(),
            "training_pairs": summary.nnz,
            "train_fraction": train_fraction,
        },
        "iterations": summary.iterations,
        "evaluation": summary.evaluation,
        "seconds": {
            "prepare": summary.prepare.as_secs_f64(),
            "train": summary.train.as_secs_f64(),
            "evaluate": summary.evaluate.as_secs_f64(),
        },
    });
    let json =
        serde_json::to_vec_pretty(&metrics).map_err(|e| JobError::Invariant(e.to_string()))?;
    store
        .put(
            &lake.path(&format!("{dir}/metrics.json")),
            PutPayload::from(json),
        )
        .await?;
    store
        .put(
            &lake.path(&format!("{dir}/loss.svg")),
            PutPayload::from(chart(&summary.iterations)),
        )
        .await?;
    Ok(())
}

/// A small SVG: loss (line) and seconds (bars) per iteration.
pub fn chart(stats: &[IterationStat]) -> String {
    let (w, h, pad) = (640.0, 320.0, 48.0);
    let n = stats.len().max(1) as f64;
    let max_loss = stats
        .iter()
        .map(|s| s.loss)
        .fold(f64::MIN, f64::max)
        .max(1e-9);
    let min_loss = stats
        .iter()
        .map(|s| s.loss)
        .fold(f64::MAX, f64::min)
        .min(max_loss);
    let max_secs = stats
        .iter()
        .map(|s| s.seconds)
        .fold(0.0, f64::max)
        .max(1e-9);
    let x = |i: usize| pad + (w - 2.0 * pad) * (i as f64 + 0.5) / n;
    let y_loss = |l: f64| {
        let span = (max_loss - min_loss).max(max_loss * 1e-9);
        h - pad - (h - 2.0 * pad) * (l - min_loss) / span
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{pad}\" y=\"20\" font-size=\"14\">ALS: loss (line) and seconds (bars) per iteration</text>\n"
    );
    for (i, s) in stats.iter().enumerate() {
        let bh = (h - 2.0 * pad) * s.seconds / max_secs;
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#cde\"><title>{:.3} s</title></rect>\n",
            x(i) - 0.3 * (w - 2.0 * pad) / n,
            h - pad - bh,
            0.6 * (w - 2.0 * pad) / n,
            bh,
            s.seconds
        ));
    }
    let points: Vec<String> = stats
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{:.1},{:.1}", x(i), y_loss(s.loss)))
        .collect();
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#c33\" stroke-width=\"2\" points=\"{}\"/>\n",
        points.join(" ")
    ));
    svg.push_str(&format!(
        "<text x=\"{pad}\" y=\"{:.0}\">iterations 1–{}; loss {:.4e} → {:.4e}; max {:.2} s</text>\n</svg>\n",
        h - 16.0,
        stats.len(),
        stats.first().map_or(0.0, |s| s.loss),
        stats.last().map_or(0.0, |s| s.loss),
        max_secs
    ));
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_a_point_per_iteration() {
        let stats: Vec<IterationStat> = (1..=5)
            .map(|i| IterationStat {
                iteration: i,
                loss: 100.0 / i as f64,
                seconds: 0.5,
            })
            .collect();
        let svg = chart(&stats);
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect x=").count(), 5);
        assert!(svg.contains("polyline"));
    }
}
