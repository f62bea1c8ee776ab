//! What the operator page (`/status`) shows: the model being served with its evaluation against
//! popularity and its loss chart (both written by the training), catalog counts and lyrics
//! coverage, and the orchestrator's jobs (their records in the catalog's `job_metadata`). Each part reports its own error, so one unreachable store does not hide the rest.

use object_store::ObjectStoreExt;
use recsys_catalog::LyricsStatus;
use recsys_core::models::ALS_MODELS_DIR;
use serde_json::{Value, json};

use crate::ServeError;
use crate::recommender::Recommender;

/// A file of the served model's folder, `None` when no model is served or the file is absent.
async fn model_file(rec: &Recommender, name: &str) -> Result<Option<bytes::Bytes>, ServeError> {
    let Some(model) = rec.model() else {
        return Ok(None);
    };
    let lake = &rec.stores().lake;
    let rel = format!("{ALS_MODELS_DIR}/{}/{name}", model.version);
    match lake.object_store().get(&lake.path(&rel)).await {
        Ok(got) => Ok(Some(got.bytes().await.map_err(|e| lake.error(&rel, e))?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(lake.error(&rel, e).into()),
    }
}

/// The loss chart (SVG) of the model being served.
pub async fn loss_chart(rec: &Recommender) -> Result<Option<bytes::Bytes>, ServeError> {
    model_file(rec, "loss.svg").await
}

fn or_error(r: Result<Value, ServeError>) -> Value {
    r.unwrap_or_else(|e| json!({"error": e.to_string()}))
}

async fn model(rec: &Recommender) -> Result<Value, ServeError> {
    let Some(m) = rec.model() else {
        return Ok(Value::Null);
    };
    let metrics = match model_file(rec, "metrics.json").await? {
        Some(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        None => Value::Null,
    };
    Ok(json!({
        "version": m.version,
        "rank": m.k,
        "items": m.item_ids.len(),
        "servable_items": m.servable(),
        "evaluation": metrics.get("evaluation"),
        "params": metrics.get("params"),
        "data": metrics.get("data"),
        "iterations": metrics.get("iterations").and_then(Value::as_array).map(Vec::len),
        "seconds": metrics.get("seconds"),
    }))
}

async fn catalog(rec: &Recommender) -> Result<Value, ServeError> {
    let stats = rec.stores().catalog.stats().await?;
    let lyrics: serde_json::Map<String, Value> = stats
        .lyrics
        .iter()
        .map(|(s, n)| (s.as_str().to_string(), json!(n)))
        .collect();
    let coverage = if stats.songs == 0 {
        0.0
    } else {
        stats.with_lyrics(LyricsStatus::Found) as f64 / stats.songs as f64
    };
    Ok(json!({
        "store": rec.stores().catalog.describe(),
        "songs": stats.songs,
        "users": stats.users,
        "users_with_vector": stats.users_with_vector,
        "lyrics_pending": stats.lyrics_pending,
        "lyrics": lyrics,
        "lyrics_coverage": coverage,
    }))
}

/// Each orchestrator job's last run (`null`: never run).
async fn jobs(rec: &Recommender) -> Result<Value, ServeError> {
    let mut out = serde_json::Map::new();
    for job in recsys_catalog::jobs::JOBS {
        let record = recsys_catalog::jobs::record(rec.stores().catalog.as_ref(), job).await?;
        out.insert(job.into(), json!(record));
    }
    Ok(Value::Object(out))
}

/// Everything `/api/v1/status` answers.
pub async fn report(rec: &Recommender) -> Value {
    let (model, catalog, jobs) = tokio::join!(model(rec), catalog(rec), jobs(rec));
    json!({
        "model": or_error(model),
        "catalog": or_error(catalog),
        "jobs": or_error(jobs),
        "vectors": rec.stores().vectors.describe(),
    })
}
