//! Where trained models live in the lake: `models/als/<version>/` (`users.parquet`,
//! `items.parquet`, `metrics.json`) and `models/als/CURRENT`, the version serving loads. Shared by
//! the job that writes them and the server that loads them.

use object_store::ObjectStoreExt;

use crate::{Store, StoreError};

/// Folder of all ALS models.
pub const ALS_MODELS_DIR: &str = "models/als";

/// The version `models/als/CURRENT` names, if any.
pub async fn current_als(lake: &Store) -> Result<Option<String>, StoreError> {
    let rel = format!("{ALS_MODELS_DIR}/CURRENT");
    match lake.object_store().get(&lake.path(&rel)).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|e| lake.error(&rel, e))?;
            Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string()))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(lake.error(&rel, e)),
    }
}
