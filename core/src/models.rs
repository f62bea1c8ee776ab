//! Where trained models live in the lake: `models/als/<version>/` (`users.parquet`,
//! `items.parquet`, `metrics.json`) and `models/als/CURRENT`, the version serving loads; and
//! `models/STORES_CHANGED`, the mark of a change to the songs serving may pick. Shared by the
//! jobs that write them and the server that loads them.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int32Type};
use object_store::ObjectStoreExt;

use crate::{Store, StoreError};

/// Folder of all ALS models.
pub const ALS_MODELS_DIR: &str = "models/als";

/// The version `models/als/CURRENT` names, if any.
pub async fn current_als(lake: &Store) -> Result<Option<String>, StoreError> {
    read_small(lake, &format!("{ALS_MODELS_DIR}/CURRENT")).await
}

/// Written (a new token each time) by every step that changes which songs the catalog holds or
/// which have a lyrics vector (clean & sync, embedding); a server that finds a token it has not
/// seen refreshes what it derived from those stores (the servable songs, its cache of lyrics
/// neighbours). The catalog and vector store may be MongoDB and Qdrant; the lake is what every
/// process shares.
pub const STORES_CHANGED: &str = "models/STORES_CHANGED";

/// Marks the catalog and vector store changed (see [`STORES_CHANGED`]).
pub async fn mark_stores_changed(lake: &Store) -> Result<(), StoreError> {
    let token = format!("{}-{}", crate::time::now_nanos(), std::process::id());
    lake.object_store()
        .put(&lake.path(STORES_CHANGED), token.into())
        .await
        .map(|_| ())
        .map_err(|e| lake.error(STORES_CHANGED, e))
}

/// The last [`mark_stores_changed`] token, if any.
pub async fn stores_changed(lake: &Store) -> Result<Option<String>, StoreError> {
    read_small(lake, STORES_CHANGED).await
}

/// A small text object of the lake, trimmed; `None` when it does not exist.
async fn read_small(lake: &Store, rel: &str) -> Result<Option<String>, StoreError> {
    match lake.object_store().get(&lake.path(rel)).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|e| lake.error(rel, e))?;
            Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string()))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(lake.error(rel, e)),
    }
}

/// The ids and row-major factors of a model file (`users.parquet`, `items.parquet`: id, then
/// `FixedSizeList<Float32, k>`), and k; `file` names it in errors.
pub fn factors(
    batches: &[RecordBatch],
    file: &str,
) -> Result<(Vec<String>, Vec<f32>, usize), String> {
    let mut ids = Vec::new();
    let mut values = Vec::new();
    let mut k = 0;
    for b in batches {
        let id = b
            .column(0)
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("{file}: column 0 is not a string id"))?;
        let list = b
            .column(1)
            .as_fixed_size_list_opt()
            .ok_or_else(|| format!("{file}: column 1 is not a fixed-size list of factors"))?;
        k = list.value_length() as usize;
        let v = list
            .values()
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| format!("{file}: factors are not float32"))?;
        let start = list.offset() * k;
        ids.extend((0..b.num_rows()).map(|r| id.value(r).to_string()));
        values.extend_from_slice(&v.values()[start..start + b.num_rows() * k]);
    }
    Ok((ids, values, k))
}

/// The plays of one file of a model's `history/` (`row` = user index, `col` = item index or −1,
/// `r` training and `t` test plays): (user, item, r + t); `file` names it in errors.
pub fn history(batches: &[RecordBatch], file: &str) -> Result<Vec<(i32, i32, f32)>, String> {
    let mut rows = Vec::new();
    for b in batches {
        let column = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| format!("{file}: no history column `{name}`"))
        };
        let (u, i, r, t) = (column("row")?, column("col")?, column("r")?, column("t")?);
        let (Some(u), Some(i), Some(r), Some(t)) = (
            u.as_primitive_opt::<Int32Type>(),
            i.as_primitive_opt::<Int32Type>(),
            r.as_primitive_opt::<Float32Type>(),
            t.as_primitive_opt::<Float32Type>(),
        ) else {
            return Err(format!(
                "{file}: history is not (row int32, col int32, r float32, t float32)"
            ));
        };
        rows.extend((0..b.num_rows()).map(|n| (u.value(n), i.value(n), r.value(n) + t.value(n))));
    }
    Ok(rows)
}
