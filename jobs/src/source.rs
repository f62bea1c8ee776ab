//! Where the listening history of a batch job comes from: the sorted listens of the clean/sort
//! path, or the events the stream wrote (`events/date=…/`), which carry actions and durations.

use arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use recsys_core::Store;
use recsys_core::schema::{EVENTS_DIR, SORTED_DIR};
use serde::{Deserialize, Serialize};

use crate::JobError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenSource {
    /// The streamed events (`events/`) when there are any, else the sorted listens.
    Auto,
    /// The sorted listens (`sorted/listens/`): every row is one play.
    Listens,
    /// The streamed events, with their actions (`listen | complete | skip`) and durations.
    Events,
}

impl ListenSource {
    /// The source `Auto` stands for in `lake`.
    pub async fn resolve(self, lake: &Store) -> Result<ListenSource, JobError> {
        if self != ListenSource::Auto {
            return Ok(self);
        }
        let events =
            crate::lake::list(lake.object_store().as_ref(), &lake.path(EVENTS_DIR)).await?;
        Ok(
            if events
                .iter()
                .any(|o| o.location.as_ref().ends_with(".parquet"))
            {
                ListenSource::Events
            } else {
                ListenSource::Listens
            },
        )
    }

    /// Registers this (resolved) source's files in `ctx` as table `name`.
    pub async fn register(
        self,
        ctx: &SessionContext,
        lake: &Store,
        name: &str,
    ) -> Result<(), JobError> {
        match self {
            ListenSource::Events => {
                // Events sit in `date=YYYY-MM-DD/` folders: a partition column, so they are read.
                let options = ParquetReadOptions::default()
                    .table_partition_cols(vec![("date".to_string(), DataType::Utf8)]);
                ctx.register_parquet(name, lake.url(&format!("{EVENTS_DIR}/")), options)
                    .await?
            }
            _ => {
                register_sorted(ctx, lake, name).await?;
            }
        }
        Ok(())
    }
}

/// Registers the sorted listens in `ctx` as table `name`.
pub async fn register_sorted(
    ctx: &SessionContext,
    lake: &Store,
    name: &str,
) -> Result<(), JobError> {
    ctx.register_parquet(
        name,
        lake.url(&format!("{SORTED_DIR}/")),
        ParquetReadOptions::default(),
    )
    .await?;
    Ok(())
}
