//! Lyrics: enrichment from LRCLIB or a lyrics file, clean & sync, and embeddings through the
//! cluster into the vector store.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use recsys_catalog::{Catalog, LyricsStatus};
use recsys_core::Store;
use recsys_core::schema::{EMBEDDINGS_DIR, RAW_DIR};
use recsys_embed::clean::{remove_songs, songs_without_lyrics};
use recsys_embed::enrich::{EnrichCounts, EnrichOptions, enrich, songs_to_look_up};
use recsys_embed::job::{
    EmbedJobError, EmbedJobOptions, EmbedReport, SHARDS_DIR, ShardRunner, run_embed,
};
use recsys_embed::lyrics::{Lrclib, LyricsApi, LyricsFile};
use recsys_jobs::Cluster;
use recsys_vectors::VectorStore;

use crate::FlowError;
use crate::progress::{Progress, rate};

/// Where lyrics come from: LRCLIB's API, or a file of LRCLIB records in the lake.
#[derive(Debug, Clone)]
pub struct LyricsSource {
    /// LRCLIB API base URL; without it the file is read.
    pub lrclib_url: Option<String>,
    /// The lyrics file, relative to the lake; `None`: the generator's `raw/lyrics.jsonl`.
    pub lyrics_file: Option<String>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl LyricsSource {
    /// The source, for messages.
    pub fn describe(&self) -> String {
        match &self.lrclib_url {
            Some(url) => url.clone(),
            None => self.file(),
        }
    }

    fn file(&self) -> String {
        self.lyrics_file
            .clone()
            .unwrap_or_else(|| format!("{RAW_DIR}/{}", recsys_datasets::LYRICS_FILE))
    }

    async fn open(&self, lake: &Store) -> Result<Box<dyn LyricsApi>, FlowError> {
        Ok(match &self.lrclib_url {
            Some(url) => Box::new(Lrclib::new(url, self.timeout.max(Duration::from_secs(1)))?),
            None => Box::new(LyricsFile::open(lake, &self.file()).await?),
        })
    }

    /// Whether there is a source: an LRCLIB URL, or the lyrics file in the lake. A file named
    /// explicitly must exist; the default one counts only when `generated` (the generator just
    /// wrote it: a file left by an earlier run would not describe this input).
    pub async fn available(&self, lake: &Store, generated: bool) -> Result<bool, FlowError> {
        if self.lrclib_url.is_some() {
            return Ok(true);
        }
        if self.lyrics_file.is_none() && !generated {
            return Ok(false);
        }
        let file = self.file();
        match object_store::ObjectStoreExt::head(&*lake.object_store(), &lake.path(&file)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) if self.lyrics_file.is_none() => Ok(false),
            Err(e) => Err(FlowError::LyricsFile {
                file,
                source: Box::new(lake.error(&self.file(), e)),
            }),
        }
    }
}

/// Looks up lyrics for every catalog song not looked up yet.
pub async fn fetch(
    lake: &Store,
    catalog: &dyn Catalog,
    source: &LyricsSource,
    options: &EnrichOptions,
    progress: &dyn Progress,
) -> Result<(EnrichCounts, Duration), FlowError> {
    let api = source.open(lake).await?;
    let todo = songs_to_look_up(&catalog.stats().await?, options);
    tracing::info!(source = %api.describe(), catalog = %catalog.describe(), songs = todo, "lyrics: looking up");
    let started = Instant::now();
    let bar = progress.bar("lyrics", todo, "songs");
    let counts = enrich(catalog, api.as_ref(), options, &|c| {
        bar.set_position(c.songs());
        bar.set_message(format!(
            "found {} missing {} instrumental {} errors {} · {:.0} req/s",
            c.found,
            c.missing,
            c.instrumental,
            c.errors,
            rate(c.requests, started.elapsed())
        ));
    })
    .await?;
    drop(bar);
    let elapsed = started.elapsed();
    tracing::info!(
        found = counts.found,
        missing = counts.missing,
        instrumental = counts.instrumental,
        errors = counts.errors,
        requests = counts.requests,
        retries = counts.retries,
        songs_per_sec = format!("{:.0}", rate(counts.songs(), elapsed)),
        "lyrics: done"
    );
    Ok((counts, elapsed))
}

/// Clean & sync: the songs without lyrics (missing or instrumental) leave the vector store and
/// the catalog. Returns how many there were and how many were removed.
pub async fn clean_sync(
    lake: &Store,
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
) -> Result<(usize, u64), FlowError> {
    let ids = songs_without_lyrics(catalog).await?;
    let removed = remove(lake, catalog, vectors, &ids).await?;
    tracing::info!(
        without_lyrics = ids.len(),
        removed,
        catalog = %catalog.describe(),
        vectors = %vectors.describe(),
        "clean-sync: done"
    );
    Ok((ids.len(), removed))
}

/// Removes songs `ids` from the vector store, then the catalog, and tells servers so
/// (`models/STORES_CHANGED`): they stop picking them without waiting for a new model.
pub async fn remove(
    lake: &Store,
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    ids: &[String],
) -> Result<u64, FlowError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let removed = remove_songs(catalog, vectors, ids).await?;
    recsys_core::models::mark_stores_changed(lake).await?;
    Ok(removed)
}

/// Shards embedded by the batch job `EmbedExec` on a Ballista cluster, a wave of two shards per
/// task slot per job.
struct ClusterShards<'a> {
    cluster: &'a Cluster,
    lake: &'a Store,
    batch: usize,
    model_dir: PathBuf,
}

#[async_trait::async_trait]
impl ShardRunner for ClusterShards<'_> {
    fn wave(&self) -> usize {
        2 * self.cluster.parallelism()
    }

    async fn embed(&self, shards: &[u64]) -> Result<u64, EmbedJobError> {
        let done = recsys_jobs::embed::run_embed(
            self.cluster,
            self.lake,
            SHARDS_DIR,
            EMBEDDINGS_DIR,
            shards,
            self.batch,
            Some(self.model_dir.as_path()),
        )
        .await
        .map_err(|e| EmbedJobError::Runner(e.to_string()))?;
        Ok(done.iter().map(|d| d.tokens).sum())
    }
}

/// Embeds, on `cluster`, the lyrics of the songs that have no vector yet, into `vectors`
/// (MiniLM's files in `model_dir`).
pub async fn embed(
    cluster: &Cluster,
    lake: &Store,
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    model_dir: PathBuf,
    options: &EmbedJobOptions,
    progress: &dyn Progress,
) -> Result<(EmbedReport, Duration), FlowError> {
    let runner = ClusterShards {
        cluster,
        lake,
        batch: options.batch,
        model_dir,
    };
    let with_lyrics = catalog.stats().await?.with_lyrics(LyricsStatus::Found);
    let bar = progress.bar("embed", with_lyrics, "songs");
    let started = Instant::now();
    let report = run_embed(catalog, vectors, &runner, lake, options, &|r, elapsed| {
        bar.set_position(r.songs);
        bar.set_message(format!(
            "{} embedded · {:.1} texts/s · {:.0} tokens/s",
            r.embedded,
            rate(r.embedded, elapsed),
            rate(r.tokens, elapsed)
        ));
    })
    .await?;
    drop(bar);
    if report.embedded + report.restored > 0 {
        // New lyrics neighbours: servers refresh their cache of them.
        recsys_core::models::mark_stores_changed(lake).await?;
    }
    let elapsed = started.elapsed();
    tracing::info!(
        embedded = report.embedded,
        already_done = report.already_done,
        restored = report.restored,
        too_short = report.too_short,
        parts = report.parts_written,
        texts_per_sec = format!("{:.1}", rate(report.embedded, elapsed)),
        store = %vectors.describe(),
        "embed: done"
    );
    Ok((report, elapsed))
}

/// What [`lyrics_and_embeddings`] did.
pub struct LyricsRun {
    pub fetched: (EnrichCounts, Duration),
    /// Songs without lyrics, songs clean & sync removed, and how long it took; `None` when the
    /// source had lyrics for none of the catalog's songs.
    pub removed: Option<(usize, u64, Duration)>,
    pub embedded: Option<(EmbedReport, Duration)>,
}

/// Lyrics: enrichment of the songs not looked up yet, then clean & sync (songs without lyrics
/// leave catalog and vector store), then embeddings of the songs that have none yet. Clean &
/// sync and embeddings are skipped (both `None`) when the source has lyrics for none of the
/// catalog's songs: it does not describe this catalog, and clean & sync would empty it.
pub async fn lyrics_and_embeddings(
    cluster: &Cluster,
    lake: &Store,
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    source: &LyricsSource,
    model_dir: PathBuf,
    progress: &dyn Progress,
) -> Result<LyricsRun, FlowError> {
    let fetched = fetch(lake, catalog, source, &EnrichOptions::default(), progress).await?;
    let stats = catalog.stats().await?;
    if stats.songs > 0 && stats.with_lyrics(LyricsStatus::Found) == 0 {
        tracing::warn!(
            source = %source.describe(),
            songs = stats.songs,
            "the lyrics source has lyrics for none of the catalog's songs: clean & sync and \
             embeddings are skipped (they would empty the catalog)"
        );
        return Ok(LyricsRun {
            fetched,
            removed: None,
            embedded: None,
        });
    }
    let t = Instant::now();
    let (without, removed) = clean_sync(lake, catalog, vectors).await?;
    let removed = Some((without, removed, t.elapsed()));
    let embedded = embed(
        cluster,
        lake,
        catalog,
        vectors,
        model_dir,
        &EmbedJobOptions::default(),
        progress,
    )
    .await?;
    Ok(LyricsRun {
        fetched,
        removed,
        embedded: Some(embedded),
    })
}
