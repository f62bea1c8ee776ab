//! `recsys serve` (the recommendation service over the configured stores) and `recsys verify`
//! (the end-to-end check of a live server).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use recsys_catalog::Catalog;
use recsys_core::Store;
use recsys_ingest::EventLog;
use recsys_proto::v1::{HomeFeedRequest, NextSongsRequest, Recommendations, Source};
use recsys_serve::http::WebAssets;
use recsys_serve::rank::Weights;
use recsys_serve::verify::{Client, verify};
use recsys_serve::{Options, Recommender, Stores};
use recsys_vectors::VectorStore;
use tracing::info;

use crate::LakeArgs;

/// How the service ranks and caches.
#[derive(Debug, Clone, Args)]
pub struct ServeTuning {
    /// Weight of the (min-max normalised) ALS score in next-song fusion.
    #[arg(long, env = "RECSYS_SERVE_ALS_WEIGHT", default_value_t = Weights::default().als)]
    pub als_weight: f32,
    /// Weight of the (min-max normalised) lyrics similarity in next-song fusion.
    #[arg(long, env = "RECSYS_SERVE_LYRICS_WEIGHT", default_value_t = Weights::default().lyrics)]
    pub lyrics_weight: f32,
    /// Songs whose lyrics neighbours are kept in memory.
    #[arg(long, env = "RECSYS_SERVE_NEIGHBOUR_CACHE", default_value_t = Options::default().neighbour_cache)]
    pub neighbour_cache: usize,
    /// Seconds the popularity list is reused before it is read from the catalog again.
    #[arg(long, env = "RECSYS_SERVE_POPULARITY_TTL_S", default_value_t = Options::default().popularity_ttl.as_secs())]
    pub popularity_ttl_s: u64,
    /// Seconds between checks of `models/als/CURRENT` for a new model version.
    #[arg(long, env = "RECSYS_SERVE_RELOAD_S", default_value_t = 30)]
    pub reload_s: u64,
}

impl ServeTuning {
    fn options(&self) -> Options {
        Options {
            weights: Weights {
                als: self.als_weight,
                lyrics: self.lyrics_weight,
            },
            neighbour_cache: self.neighbour_cache.max(1),
            popularity_ttl: Duration::from_secs(self.popularity_ttl_s),
        }
    }

    fn reload_every(&self) -> Duration {
        Duration::from_secs(self.reload_s.max(1))
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub catalog: crate::catalog::CatalogArgs,
}

/// The server's flags but its catalog (`recsys orchestrate --serve` shares its own).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address of the recommendation service: gRPC, the JSON API (`/api/v1`) and the web
    /// player (`/`).
    #[arg(long, env = "RECSYS_SERVE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Serve the web player's files from this folder instead of the copies built into the
    /// binary (while editing them: `serve/web`).
    #[arg(long, env = "RECSYS_WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tuning: ServeTuning,
    #[command(flatten)]
    pub vectors: crate::lyrics::VectorArgs,
    #[command(flatten)]
    pub kafka: crate::stream::KafkaArgs,
    #[command(flatten)]
    pub flush: crate::stream::FlushArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// The server to check.
    #[arg(
        long,
        env = "RECSYS_VERIFY_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// Also look for the logged event in `events/` of the lake (--data-dir / --object-store):
    /// the server's embedded log, or the Kafka sink's output.
    #[arg(long, env = "RECSYS_VERIFY_EVENTS")]
    pub events: bool,
    /// The server has no lyrics vectors (a pipeline run without a lyrics source): hybrid next
    /// songs are not expected.
    #[arg(long, env = "RECSYS_VERIFY_NO_LYRICS")]
    pub no_lyrics: bool,
}

/// Serves until SIGINT/SIGTERM.
pub async fn run_serve(lake: &LakeArgs, args: &ServeArgs) -> Result<()> {
    let store = lake.open()?;
    let catalog: Arc<dyn Catalog> = args.catalog.open(&store).await?.into();
    let vectors: Arc<dyn VectorStore> = args.server.vectors.open(&store).await?.into();
    let opened =
        crate::stream::open_log(lake, &args.server.kafka, &args.server.flush, None).await?;
    let shutdown = crate::stream::shutdown_signal();
    serve_until(&args.server, store, catalog, vectors, &opened, shutdown).await?;
    opened.log.close().await?;
    Ok(())
}

/// Serves over `catalog` and `vectors`, logging events to `opened`, until `shutdown` completes
/// (the caller closes the log).
pub async fn serve_until(
    args: &ServerArgs,
    store: Store,
    catalog: Arc<dyn Catalog>,
    vectors: Arc<dyn VectorStore>,
    opened: &crate::stream::OpenLog,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let rec = Recommender::open(
        Stores {
            lake: store,
            catalog: catalog.clone(),
            vectors: vectors.clone(),
            log: opened.log.clone(),
        },
        args.tuning.options(),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the recommendation service to {}", args.listen))?;
    info!(
        listen = %listener.local_addr()?,
        catalog = %catalog.describe(),
        vectors = %vectors.describe(),
        events = %opened.describe,
        model = %rec.model().map(|m| m.version.clone()).unwrap_or_else(|| "none (popularity only)".into()),
        "recommendation service ready"
    );
    recsys_serve::service::serve(
        listener,
        Arc::new(rec),
        WebAssets {
            dir: args.web_dir.clone(),
        },
        args.tuning.reload_every(),
        shutdown,
    )
    .await?;
    Ok(())
}

pub async fn run_verify(lake: &LakeArgs, args: &VerifyArgs) -> Result<()> {
    let events = if args.events {
        Some(lake.open()?)
    } else {
        None
    };
    let client = Client::connect(&args.endpoint).await?;
    let report = verify(&client, events.as_ref(), !args.no_lyrics).await;
    println!("recsys verify {}\n{report}", args.endpoint);
    if !report.passed() {
        bail!("verification of {} failed", args.endpoint);
    }
    Ok(())
}

/// The pipeline's last step: serves the embedded stores on a loopback port, verifies the server
/// and prints samples of what it recommends; with `keep`, then goes on serving there (the web
/// player included) until SIGINT/SIGTERM.
pub async fn serve_and_verify(
    lake: &Store,
    catalog: Arc<dyn Catalog>,
    vectors: Arc<dyn VectorStore>,
    log: Arc<dyn EventLog>,
    lyrics: bool,
    keep: Option<SocketAddr>,
) -> Result<()> {
    let rec = Arc::new(
        Recommender::open(
            Stores {
                lake: lake.clone(),
                catalog,
                vectors,
                log,
            },
            Options::default(),
        )
        .await?,
    );
    let at = keep.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = tokio::net::TcpListener::bind(at)
        .await
        .with_context(|| format!("binding the pipeline's server to {at}"))?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(recsys_serve::service::serve(
        listener,
        rec,
        WebAssets::default(),
        Duration::from_secs(30),
        async {
            stopped.await.ok();
        },
    ));
    let client = Client::connect(&endpoint).await?;
    let report = verify(&client, Some(lake), lyrics).await;
    println!("\nrecsys verify {endpoint} (the pipeline's server)\n{report}");
    let sampled = print_samples(&client).await;
    if keep.is_some() && report.passed() && sampled.is_ok() {
        println!(
            "\nListen at {endpoint}/ (the web player), operators at {endpoint}/status, the JSON \
             API at {endpoint}/api/v1 and gRPC at {endpoint}. Ctrl-C stops the server."
        );
        crate::stream::shutdown_signal().await;
    }
    stop.send(()).ok();
    server.await??;
    sampled?;
    if !report.passed() {
        bail!("verification of the pipeline's server failed");
    }
    Ok(())
}

fn print_list(title: &str, list: &Recommendations) {
    println!("\n{title}");
    for (rank, r) in list.songs.iter().enumerate() {
        let Some(s) = &r.song else { continue };
        let source = Source::try_from(r.source)
            .map(|s| s.as_str_name().trim_start_matches("SOURCE_").to_lowercase())
            .unwrap_or_default();
        println!(
            "  {:>2}. {:<40} {:<28} {source:<10} {:.3}",
            rank + 1,
            s.title,
            s.artist,
            r.score
        );
    }
}

/// Home feeds of two users with an ALS factor and the next songs after the first song of the
/// first feed.
async fn print_samples(client: &Client) -> Result<()> {
    let mut recs = client.recs.clone();
    let users = recs
        .list_users(recsys_proto::v1::ListUsersRequest {
            limit: 100,
            after: String::new(),
        })
        .await?
        .into_inner()
        .users;
    let known = users.iter().filter(|u| u.long_term_source == "als").take(2);
    for (i, user) in known.enumerate() {
        let feed = recs
            .home_feed(HomeFeedRequest {
                user_id: user.id.clone(),
                limit: 10,
                refresh: true,
                exclude_heard: false,
            })
            .await?
            .into_inner();
        print_list(&format!("home feed of {}:", user.id), &feed);
        let current = feed.songs.first().and_then(|r| r.song.clone());
        if let (0, Some(current)) = (i, current) {
            let next = recs
                .next_songs(NextSongsRequest {
                    user_id: user.id.clone(),
                    current_song_id: current.id.clone(),
                    limit: 10,
                    refresh: true,
                })
                .await?
                .into_inner();
            print_list(
                &format!(
                    "next songs for {} after \"{}\" by {}:",
                    user.id, current.title, current.artist
                ),
                &next,
            );
        }
    }
    Ok(())
}
