//! The lake's tables by name, for SQL over the cluster: the scheduler registers them as the
//! default schema `lake` of every session it builds, so an Arrow Flight SQL client (ADBC, JDBC,
//! pyarrow, `recsys sql`) writes `SELECT … FROM listens` without knowing where the files are.
//!
//! A table is looked up when a query names it, so it always shows the lake as it is then: new
//! sort runs, new events, the model `models/als/CURRENT` names at that moment. Its schema is
//! the files' own.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use recsys_core::Store;
use recsys_core::models::ALS_MODELS_DIR;
use recsys_core::schema::{
    CATALOG_SONGS_DIR, CATALOG_USERS_DIR, EMBEDDINGS_DIR, REJECTS_DIR, SORTED_DIR,
};

/// The schema's name, also every lake session's default schema.
pub const SCHEMA: &str = "lake";

/// Every table: its name and what it holds.
pub const TABLES: &[(&str, &str)] = &[
    ("listens", "the sorted listens (sorted/listens)"),
    (
        "events",
        "the streamed events (events/, with their UTC `date` as a column)",
    ),
    ("songs", "the ETL's songs master data (catalog/songs)"),
    ("users", "the ETL's users master data (catalog/users)"),
    (
        "rejects",
        "the lines clean rejected, with reasons (rejects/)",
    ),
    (
        "user_factors",
        "the serving ALS model's user factors (models/als/CURRENT)",
    ),
    (
        "item_factors",
        "the serving ALS model's item factors (models/als/CURRENT)",
    ),
    (
        "lyrics_embeddings",
        "the MiniLM lyrics vectors (embeddings/lyrics)",
    ),
];

/// The lake's tables, looked up on use.
pub struct LakeSchema {
    lake: Store,
    /// A session without this schema, to list files and read their schemas with.
    state: SessionState,
}

impl std::fmt::Debug for LakeSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LakeSchema({})", self.lake.location())
    }
}

impl LakeSchema {
    pub fn new(lake: Store, state: SessionState) -> LakeSchema {
        LakeSchema { lake, state }
    }

    /// The folder (or, for a model, the file) of table `name` in the lake; `None` for a name
    /// that is not a table, or a model table before the first model.
    async fn location(&self, name: &str) -> Result<Option<String>> {
        let model_file = |file: &'static str| async move {
            let current = recsys_core::models::current_als(&self.lake)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            Ok::<_, DataFusionError>(current.map(|v| format!("{ALS_MODELS_DIR}/{v}/{file}")))
        };
        Ok(match name {
            "listens" => Some(format!("{SORTED_DIR}/")),
            "songs" => Some(format!("{CATALOG_SONGS_DIR}/")),
            "users" => Some(format!("{CATALOG_USERS_DIR}/")),
            "rejects" => Some(format!("{REJECTS_DIR}/")),
            "lyrics_embeddings" => Some(format!("{EMBEDDINGS_DIR}/")),
            "user_factors" => model_file("users.parquet").await?,
            "item_factors" => model_file("items.parquet").await?,
            _ => None,
        })
    }
}

#[async_trait]
impl SchemaProvider for LakeSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|(name, _)| name.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name == "events" {
            // The event files but those a compacted file covers: see `event_files`.
            let table = crate::source::events_table(&self.state, &self.lake)
                .await
                .map_err(|e| DataFusionError::Plan(format!("table `events`: {e}")))?;
            return Ok(Some(table));
        }
        let Some(location) = self.location(name).await? else {
            return Ok(None);
        };
        let url = ListingTableUrl::parse(self.lake.url(&location))?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .infer_schema(&self.state)
            .await
            .map_err(|e| {
                DataFusionError::Plan(format!(
                    "table `{name}` ({}): {e}",
                    self.lake.url(&location)
                ))
            })?;
        Ok(Some(Arc::new(ListingTable::try_new(config)?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.iter().any(|(n, _)| *n == name)
    }
}
