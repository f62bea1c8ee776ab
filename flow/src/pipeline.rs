//! The batch steps in their order: clean → sort → (the stream step, given by the caller) →
//! ALS → ETL → catalog load → lyrics, clean & sync and embeddings. `recsys pipeline` runs them
//! after generating (or being given) the raw log and serves what they built.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use recsys_catalog::Catalog;
use recsys_catalog::load::LoadReport;
use recsys_core::Store;
use recsys_jobs::Cluster;
use recsys_jobs::als::{AlsParams, AlsSummary, TrainOptions};
use recsys_jobs::clean::{CleanSummary, TsvInput, run_clean};
use recsys_jobs::etl::{DEFAULT_FILES, EtlSummary};
use recsys_jobs::sort::{SortSummary, run_sort};
use recsys_jobs::source::ListenSource;
use recsys_vectors::VectorStore;

use crate::FlowError;
use crate::lyrics::{LyricsRun, LyricsSource, lyrics_and_embeddings};
use crate::progress::{Progress, rate, spinning};

/// One line of a run's summary.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub elapsed: Duration,
    pub rows: u64,
    pub detail: String,
}

/// The steps' arguments.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Sorted files (default: one per 500 k rows).
    pub sort_files: Option<usize>,
    pub als: AlsParams,
    pub train: TrainOptions,
    /// Documents per catalog write.
    pub load_batch: usize,
    /// The lyrics source and MiniLM's folder; `None`: no lyrics, the server is ALS only.
    pub lyrics: Option<(LyricsSource, PathBuf)>,
}

/// What a run did: a summary line per step and each step's report.
pub struct PipelineRun {
    pub steps: Vec<Step>,
    pub cleaned: CleanSummary,
    pub sorted: SortSummary,
    pub trained: AlsSummary,
    pub etl: EtlSummary,
    pub loaded: (LoadReport, Duration),
    /// `None` without a lyrics source.
    pub lyrics: Option<LyricsRun>,
}

/// Cleans `input` into the lake's typed Parquet, quarantining malformed lines.
pub async fn clean(
    cluster: &Cluster,
    input: &TsvInput,
    lake: &Store,
    progress: &dyn Progress,
) -> Result<CleanSummary, FlowError> {
    let what = format!("clean on {}", cluster.describe());
    let summary = spinning(progress, &what, run_clean(cluster, input, lake)).await?;
    tracing::info!(
        lines = summary.lines,
        clean = summary.clean_rows,
        rejected = summary.rejected_total(),
        tasks = summary.tasks,
        files = summary.files_written,
        secs = format!("{:.2}", summary.elapsed.as_secs_f64()),
        rows_per_sec = format!("{:.0}", rate(summary.lines, summary.elapsed)),
        "cleaned"
    );
    Ok(summary)
}

/// Sorts the clean listens by time into `files` time-ranged files.
pub async fn sort(
    cluster: &Cluster,
    lake: &Store,
    files: Option<usize>,
    progress: &dyn Progress,
) -> Result<SortSummary, FlowError> {
    let what = format!("sort on {}", cluster.describe());
    let summary = spinning(progress, &what, run_sort(cluster, lake, files)).await?;
    tracing::info!(
        rows = summary.rows,
        files = summary.files.len(),
        secs = format!("{:.2}", summary.elapsed.as_secs_f64()),
        rows_per_sec = format!("{:.0}", rate(summary.rows, summary.elapsed)),
        "sorted"
    );
    Ok(summary)
}

/// Every batch step, in order, on `cluster`: clean and sort `input`, then `stream` (the events
/// the later steps read: a replay into the event log, waited for until it is in `events/`),
/// ALS, the ETL and its load into `catalog` (last, so that user documents carry the vectors of
/// the model just trained), and the lyrics steps into `catalog` and `vectors`.
#[allow(clippy::too_many_arguments)]
pub async fn run<S>(
    cluster: &Cluster,
    lake: &Store,
    input: &TsvInput,
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    config: &PipelineConfig,
    progress: &dyn Progress,
    stream: S,
) -> Result<PipelineRun, FlowError>
where
    S: Future<Output = Result<Step, Box<dyn std::error::Error + Send + Sync>>>,
{
    let mut steps = Vec::new();
    let cleaned = clean(cluster, input, lake, progress).await?;
    steps.push(Step {
        name: "clean",
        elapsed: cleaned.elapsed,
        rows: cleaned.lines,
        detail: format!(
            "{} clean, {} rejected, {} Parquet files",
            cleaned.clean_rows,
            cleaned.rejected_total(),
            cleaned.files_written
        ),
    });
    let sorted = sort(cluster, lake, config.sort_files, progress).await?;
    steps.push(Step {
        name: "sort",
        elapsed: sorted.elapsed,
        rows: sorted.rows,
        detail: format!("{} time-ranged files", sorted.files.len()),
    });
    steps.push(stream.await.map_err(FlowError::Stream)?);

    let trained = crate::als::train(cluster, lake, &config.als, &config.train).await?;
    steps.push(Step {
        name: "als",
        elapsed: trained.prepare + trained.train + trained.evaluate,
        rows: trained.listens,
        detail: format!(
            "{} iterations, rank {}, model {}",
            trained.iterations.len(),
            trained.params.rank,
            trained.version
        ),
    });

    let etl =
        crate::catalog::etl(cluster, lake, ListenSource::Auto, DEFAULT_FILES, progress).await?;
    steps.push(Step {
        name: "etl",
        elapsed: etl.elapsed,
        rows: etl.manifest.plays,
        detail: format!(
            "{} songs, {} users → catalog/",
            etl.manifest.songs.rows, etl.manifest.users.rows
        ),
    });
    let loaded =
        crate::catalog::load_catalog(catalog, lake, config.load_batch, false, progress).await?;
    steps.push(Step {
        name: "load",
        elapsed: loaded.1,
        rows: loaded.0.songs.loaded + loaded.0.users.loaded,
        detail: catalog.describe(),
    });

    let lyrics = match &config.lyrics {
        Some((source, model_dir)) => {
            let run = lyrics_and_embeddings(
                cluster,
                lake,
                catalog,
                vectors,
                source,
                model_dir.clone(),
                progress,
            )
            .await?;
            steps.extend(lyrics_steps(&run));
            Some(run)
        }
        None => None,
    };
    Ok(PipelineRun {
        steps,
        cleaned,
        sorted,
        trained,
        etl,
        loaded,
        lyrics,
    })
}

/// The summary lines of the lyrics steps.
fn lyrics_steps(run: &LyricsRun) -> Vec<Step> {
    let (fetched, elapsed) = &run.fetched;
    let mut steps = vec![Step {
        name: "lyrics",
        elapsed: *elapsed,
        rows: fetched.songs(),
        detail: format!(
            "{} found, {} missing, {} instrumental, {} errors",
            fetched.found, fetched.missing, fetched.instrumental, fetched.errors
        ),
    }];
    if let Some((_, removed, elapsed)) = run.removed {
        steps.push(Step {
            name: "clean-sync",
            elapsed,
            rows: removed,
            detail: "songs without lyrics removed from catalog and vectors".into(),
        });
    }
    if let Some((report, elapsed)) = &run.embedded {
        steps.push(Step {
            name: "embed",
            elapsed: *elapsed,
            rows: report.embedded,
            detail: format!(
                "MiniLM-L6 in burn on the cluster, {}, {} too short",
                report.earlier(),
                report.too_short
            ),
        });
    }
    steps
}
