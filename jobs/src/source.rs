//! Where the listening history of a batch job comes from: the sorted listens of the clean/sort
//! path, or the events the stream wrote (`events/date=…/`), which carry actions and durations.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::catalog::view::ViewTable;
use datafusion::common::Column;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::provider_as_source;
use datafusion::execution::SessionState;
use datafusion::functions::expr_fn::to_char;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
use datafusion::prelude::{ParquetReadOptions, SessionContext, col, lit};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::file::statistics::Statistics;
use recsys_core::Store;
use recsys_core::event_files;
use recsys_core::schema::{EVENTS_DIR, SORTED_DIR, col};
use serde::{Deserialize, Serialize};

use crate::JobError;
use crate::lake::LakeFileReader;

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

    /// This (resolved) source's files: [`event_files()`] or [`sorted_files()`].
    pub async fn files(self, lake: &Store) -> Result<Vec<ObjectMeta>, JobError> {
        match self {
            ListenSource::Events => event_files(lake).await,
            _ => sorted_files(lake).await,
        }
    }

    /// Registers this (resolved) source's files in `ctx` as table `name`.
    pub async fn register(
        self,
        ctx: &SessionContext,
        lake: &Store,
        name: &str,
    ) -> Result<(), JobError> {
        let files = self.files(lake).await?;
        self.register_files(ctx, lake, name, &files).await
    }

    /// Registers `files` of this (resolved) source (see [`ListenSource::files`]) in `ctx` as
    /// table `name`: a job that also reads the files itself sees the events the table holds,
    /// also while the sink adds more. The sorted listens change only when rebuilt: all of them.
    pub async fn register_files(
        self,
        ctx: &SessionContext,
        lake: &Store,
        name: &str,
        files: &[ObjectMeta],
    ) -> Result<(), JobError> {
        match self {
            ListenSource::Events => {
                ctx.register_table(name, files_table(&ctx.state(), lake, files).await?)?;
            }
            _ => {
                register_sorted(ctx, lake, name).await?;
            }
        }
        Ok(())
    }
}

/// The event files that hold `lake`'s events: every Parquet file under `events/` but those a
/// compacted file covers (see [`recsys_core::event_files`]), in name order.
pub async fn event_files(lake: &Store) -> Result<Vec<ObjectMeta>, JobError> {
    let objects = crate::lake::list(lake.object_store().as_ref(), &lake.path(EVENTS_DIR)).await?;
    let mut by_topic: BTreeMap<String, Vec<(usize, event_files::FileRange)>> = BTreeMap::new();
    let mut keep = vec![true; objects.len()];
    for (i, o) in objects.iter().enumerate() {
        let name = o.location.filename().unwrap_or_default();
        if !name.ends_with(".parquet") {
            keep[i] = false;
        } else if let Some((topic, p, first, last)) = event_files::parse_any(name) {
            by_topic
                .entry(topic.to_string())
                .or_default()
                .push((i, (p, first, last)));
        }
    }
    for files in by_topic.into_values() {
        for chain in event_files::chains(files).into_values() {
            for i in chain.covered {
                keep[i] = false;
            }
        }
    }
    Ok(objects
        .into_iter()
        .zip(keep)
        .filter(|(_, keep)| *keep)
        .map(|(o, _)| o)
        .collect())
}

/// The sorted listens' Parquet files, in name order.
pub async fn sorted_files(lake: &Store) -> Result<Vec<ObjectMeta>, JobError> {
    let mut objects =
        crate::lake::list(lake.object_store().as_ref(), &lake.path(SORTED_DIR)).await?;
    objects.retain(|o| o.location.as_ref().ends_with(".parquet"));
    Ok(objects)
}

/// The rows and the latest `ts` of `files` (no latest when they hold no row), from their
/// Parquet footers alone; `None` when a row group has no exact `ts` maximum (another writer) or
/// nulls in `ts`, so that a query must tell.
pub async fn footer_stats(
    lake: &Store,
    files: &[ObjectMeta],
) -> Result<Option<(u64, Option<i64>)>, JobError> {
    let store = lake.object_store();
    // Readers made first: a stream over a borrowing closure would not be `Send` for every
    // lifetime, which the orchestrator's spawned jobs need.
    let readers: Vec<LakeFileReader> = files
        .iter()
        .map(|o| LakeFileReader::new(store.clone(), o.location.clone(), o.size))
        .collect();
    let footers: Vec<_> = futures::stream::iter(readers)
        .map(|mut reader| async move { reader.get_metadata(None).await })
        .buffered(16)
        .try_collect()
        .await?;
    let (mut rows, mut latest) = (0u64, None::<i64>);
    for meta in &footers {
        let Some(ts) = meta
            .file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .position(|c| c.path().string() == col::TS)
        else {
            return Ok(None);
        };
        for group in meta.row_groups() {
            rows += group.num_rows() as u64;
            if group.num_rows() == 0 {
                continue;
            }
            let max = match group.column(ts).statistics() {
                Some(Statistics::Int64(s)) if s.max_is_exact() && s.null_count_opt() == Some(0) => {
                    s.max_opt().copied()
                }
                _ => None,
            };
            let Some(max) = max else {
                return Ok(None);
            };
            latest = Some(latest.map_or(max, |l| l.max(max)));
        }
    }
    Ok(Some((rows, latest)))
}

/// The streamed events as a table: the files of [`event_files()`], with their UTC `date` (the
/// folder they sit in) as a column.
pub async fn events_table(
    state: &SessionState,
    lake: &Store,
) -> Result<Arc<dyn TableProvider>, JobError> {
    files_table(state, lake, &event_files(lake).await?).await
}

/// The event `files` as a table, with their UTC `date` (the folder they sit in) as a column.
async fn files_table(
    state: &SessionState,
    lake: &Store,
    files: &[ObjectMeta],
) -> Result<Arc<dyn TableProvider>, JobError> {
    let urls: Vec<String> = files
        .iter()
        .map(|o| lake.url(&lake.relative(o.location.as_ref())))
        .collect();
    if urls.is_empty() {
        return Err(JobError::NoInput(format!(
            "no event files in {}",
            lake.url(&format!("{EVENTS_DIR}/"))
        )));
    }
    let urls = urls
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<Result<Vec<_>, _>>()?;
    // The session's Parquet options (string types among them), as `register_parquet` takes.
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .infer_schema(state)
        .await?;
    let files = Arc::new(ListingTable::try_new(config)?);
    let mut columns: Vec<Expr> = files
        .schema()
        .fields()
        .iter()
        .map(|f| Expr::Column(Column::from_name(f.name())))
        .collect();
    columns.push(to_char(col(col::TS), lit("%Y-%m-%d")).alias("date"));
    let plan = LogicalPlanBuilder::scan("event_files", provider_as_source(files), None)?
        .project(columns)?
        .build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
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
