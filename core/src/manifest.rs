//! `catalog/MANIFEST.json`: what the latest complete ETL wrote. The ETL deletes it before it
//! touches the catalog tables and writes it last, so a reader never pairs it with half a run.

use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};

/// The manifest's place in the lake.
pub const MANIFEST: &str = "catalog/MANIFEST.json";

/// One table of an ETL run: its files (lake-relative paths, in load order) and rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFiles {
    pub files: Vec<String>,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtlManifest {
    /// Unique per run: a loader's resume point is only valid for the run it started on.
    pub run_id: String,
    /// Where the plays came from (`listens` or `events`).
    pub source: String,
    /// The latest play (µs): `plays_7d` counts plays of the 7 UTC days ending with its day.
    pub anchor_us: i64,
    pub plays: u64,
    pub songs: TableFiles,
    pub users: TableFiles,
}

impl EtlManifest {
    /// The manifest of the latest complete ETL in `lake`, if any.
    pub async fn read(lake: &Store) -> Result<Option<EtlManifest>, StoreError> {
        let path = lake.path(MANIFEST);
        match lake.object_store().get(&path).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(|e| lake.error(MANIFEST, e))?;
                serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                    StoreError::Invalid(format!(
                        "{} is not an ETL manifest: {e}",
                        lake.url(MANIFEST)
                    ))
                })
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(lake.error(MANIFEST, e)),
        }
    }

    /// Writes the manifest (last step of an ETL).
    pub async fn write(&self, lake: &Store) -> Result<(), StoreError> {
        let json = serde_json::to_vec_pretty(self).expect("a manifest serialises");
        lake.object_store()
            .put(&lake.path(MANIFEST), json.into())
            .await
            .map_err(|e| lake.error(MANIFEST, e))?;
        Ok(())
    }

    /// Deletes the manifest (first step of an ETL).
    pub async fn remove(lake: &Store) -> Result<(), StoreError> {
        match lake.object_store().delete(&lake.path(MANIFEST)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(lake.error(MANIFEST, e)),
        }
    }
}
