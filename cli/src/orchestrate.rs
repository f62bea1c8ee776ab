//! `recsys orchestrate`: keeps the catalog's play counts, models, lyrics and the event lake
//! current, unattended (the jobs are `recsys_flow::orchestrate`'s); `recsys status`: what it did
//! and what the system holds.

use anyhow::{Context, Result};
use clap::builder::PossibleValuesParser;
use clap::{Args, ValueEnum};
use recsys_catalog::Catalog;
use recsys_catalog::jobs::{JOBS, record};
use recsys_flow::orchestrate::{self as flow, Job, KafkaConfig, Orchestrator, Schedule};
use recsys_ingest::compact::Period;
use recsys_ingest::counts;
use recsys_ingest::log::EMBEDDED_TOPIC;
use recsys_vectors::VectorStore;

use crate::catalog::CatalogArgs;
use crate::{ClusterArgs, LakeArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WindowClock {
    /// Today (UTC): a live system.
    Wall,
    /// The newest event's day: replayed historical data (the embedded demo).
    Newest,
}

#[derive(Debug, Args)]
pub struct OrchestrateArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Run this job once now and exit with its outcome.
    #[arg(long, env = "RECSYS_ORCHESTRATE_ONCE", value_parser = PossibleValuesParser::new(JOBS))]
    pub once: Option<String>,
    /// Seconds between runs of the counts job.
    #[arg(long, env = "RECSYS_COUNTS_EVERY_S", default_value_t = 900.0)]
    pub counts_every_s: f64,
    /// Daily time (UTC, HH:MM) of the window roll.
    #[arg(long, env = "RECSYS_ROLL_AT", default_value = "00:05")]
    pub roll_at: String,
    /// Random delay added to each interval run, as a fraction of its interval (spreads load).
    #[arg(long, env = "RECSYS_JOB_JITTER", default_value_t = 0.1)]
    pub jitter: f64,
    /// Which clock ends the 7-day window: `wall` (a live system) or `newest` (replayed data).
    #[arg(
        long,
        env = "RECSYS_WINDOW_CLOCK",
        value_enum,
        default_value = "newest"
    )]
    pub window_clock: WindowClock,
    /// Daily time (UTC, HH:MM) of the compaction of closed dates' event files.
    #[arg(long, env = "RECSYS_COMPACT_AT", default_value = "03:00")]
    pub compact_at: String,
    /// Fewest consecutive files of a partition and date worth compacting.
    #[arg(long, env = "RECSYS_COMPACT_MIN_FILES", default_value_t = 8)]
    pub compact_min_files: usize,
    /// Most events (offsets) one compacted file holds.
    #[arg(long, env = "RECSYS_COMPACT_MAX_EVENTS", default_value_t = 2_000_000)]
    pub compact_max_events: i64,
    /// What one compacted file holds at most: a `day` (a live system's many files a day) or a
    /// `month` (few events a day, as replayed history: each day is one small file already).
    #[arg(long, env = "RECSYS_COMPACT_PERIOD", value_enum, default_value = "day")]
    pub compact_period: CompactPeriod,
    /// Daily time (UTC, HH:MM) of the ALS retrain.
    #[arg(long, env = "RECSYS_RETRAIN_AT", default_value = "02:00")]
    pub retrain_at: String,
    /// Days of plays the retrain reads, ending at the window clock (`--window-clock`).
    #[arg(long, env = "RECSYS_RETRAIN_WINDOW_DAYS", default_value_t = 90)]
    pub retrain_window_days: u32,
    /// How much worse (a fraction of the serving version's NDCG@10) a retrained version may be
    /// and still be published.
    #[arg(long, env = "RECSYS_RETRAIN_MAX_NDCG_DROP", default_value_t = 0.05)]
    pub retrain_max_ndcg_drop: f64,
    /// Model versions kept (the serving one always is).
    #[arg(long, env = "RECSYS_KEEP_MODELS", default_value_t = 3)]
    pub keep_models: usize,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub als: crate::als::AlsArgs,
    /// Daily time (UTC, HH:MM) of the enrichment: lyrics looked up for the songs that have
    /// none yet, clean & sync, and their embeddings into the vector store.
    #[arg(long, env = "RECSYS_ENRICH_AT", default_value = "01:00")]
    pub enrich_at: String,
    #[command(flatten)]
    pub lyrics: crate::lyrics::SourceArgs,
    /// Seconds between runs of the supervise job: what the event log holds that `events/` does
    /// not yet (Kafka's lag), and how long ago the newest event file was written.
    #[arg(long, env = "RECSYS_SUPERVISE_EVERY_S", default_value_t = 60.0)]
    pub supervise_every_s: f64,
    /// The supervise job fails (an alert in `recsys status`) when events wait in Kafka and no
    /// event file has been written for this many seconds.
    #[arg(long, env = "RECSYS_SINK_STALE_S", default_value_t = 600)]
    pub sink_stale_s: u64,
    /// With Kafka: run the sink (Kafka → `events/`, every partition, resuming where `events/`
    /// ends) in this process, restarted with backoff (1 s doubling to 1 min) when it fails.
    #[arg(long, env = "RECSYS_ORCHESTRATE_SINK", requires = "kafka")]
    pub sink: bool,
    /// Seconds a job's lease in `job_metadata` lasts unless renewed (every quarter of it, while
    /// the job runs): another orchestrator sharing the catalog, or `--once` beside this one,
    /// does not run the job meanwhile. A holder that died on this host is taken over at once,
    /// one elsewhere when its lease runs out (keep the hosts' clocks within a fraction of it).
    #[arg(long, env = "RECSYS_JOB_LEASE_S", default_value_t = 120.0)]
    pub lease_s: f64,
    /// Also run the gRPC ingest service (as `recsys ingest`) on this address, appending to
    /// the same event log as `--serve` (the embedded log has one writer per lake), restarted
    /// with backoff when it fails; `recsys replay --via grpc://ADDR` streams into it.
    #[arg(long, env = "RECSYS_ORCHESTRATE_INGEST_LISTEN")]
    pub ingest_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub model: crate::lyrics::ModelArgs,
    /// Also serve (gRPC, JSON API, web player on `--listen`) from this process: on the embedded
    /// stores, which one process holds at a time, the way to run the live system on one
    /// machine. The web player's events reach `events/` (or Kafka with `--kafka`), and the
    /// server hot-reloads what the retrain publishes.
    #[arg(long, env = "RECSYS_ORCHESTRATE_SERVE")]
    pub serve: bool,
    #[command(flatten)]
    pub server: crate::serve::ServerArgs,
}

impl OrchestrateArgs {
    /// The jobs' configuration: the flags, checked.
    fn config(&self, lake_args: &LakeArgs) -> Result<flow::Config> {
        let daily = |flag: &str, text: &str| Schedule::daily_at(text).context(flag.to_string());
        Ok(flow::Config {
            // In `Job::ALL`'s order.
            schedules: [
                Schedule::every_s(self.counts_every_s),
                daily("--roll-at", &self.roll_at)?,
                daily("--compact-at", &self.compact_at)?,
                daily("--retrain-at", &self.retrain_at)?,
                daily("--enrich-at", &self.enrich_at)?,
                Schedule::every_s(self.supervise_every_s),
            ],
            jitter: self.jitter,
            window_clock: match self.window_clock {
                WindowClock::Wall => flow::WindowClock::Wall,
                WindowClock::Newest => flow::WindowClock::Newest,
            },
            topic: self.server.kafka.topic.clone(),
            compact_min_files: self.compact_min_files,
            compact_max_events: self.compact_max_events,
            compact_period: match self.compact_period {
                CompactPeriod::Day => Period::Day,
                CompactPeriod::Month => Period::Month,
            },
            retrain_window_days: self.retrain_window_days,
            retrain_max_ndcg_drop: self.retrain_max_ndcg_drop,
            keep_models: self.keep_models,
            cluster: self.cluster.config(&lake_args.s3),
            als: self.als.params(),
            train: self.als.options(),
            lyrics: self.lyrics.source(),
            model_dir: self.model.model_dir.clone(),
            kafka: self.server.kafka.kafka.clone().map(|brokers| KafkaConfig {
                brokers,
                sink: self.sink,
                policy: self.server.flush.policy(),
            }),
            sink_stale_s: self.sink_stale_s,
            lease_ms: (self.lease_s * 1_000.0) as i64,
            ingest_listen: self.ingest_listen,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompactPeriod {
    Day,
    Month,
}

pub async fn run(lake_args: &LakeArgs, args: OrchestrateArgs) -> Result<()> {
    let lake = lake_args.open()?;
    let config = args.config(lake_args)?;
    let catalog: std::sync::Arc<dyn Catalog> = args.catalog.open(&lake).await?.into();
    let vectors: std::sync::Arc<dyn VectorStore> = args.server.vectors.open(&lake).await?.into();
    let o = std::sync::Arc::new(Orchestrator::new(
        lake.clone(),
        catalog.clone(),
        vectors.clone(),
        config,
    ));
    if let Some(name) = &args.once {
        let job = Job::ALL
            .into_iter()
            .find(|j| j.name() == name)
            .context("a job the value parser knows")?;
        let detail = o.run_recorded(job).await?;
        println!("{name}: {detail}");
        return Ok(());
    }
    tracing::info!(
        lake = %lake.location(),
        catalog = %catalog.describe(),
        counts_every_s = args.counts_every_s,
        roll_at = %args.roll_at,
        compact_at = %args.compact_at,
        retrain_at = %args.retrain_at,
        enrich_at = %args.enrich_at,
        "orchestrator running"
    );
    // The sink and the ingest service are stopped by a signal of their own so that they
    // write what they hold; the server and the ingest service share one event log.
    let (stop_services, services_stopped) = tokio::sync::watch::channel(false);
    let (mut tasks, sink) = o.spawn(services_stopped.clone());
    let opened = match args.serve || args.ingest_listen.is_some() {
        true => Some(
            crate::stream::open_log(lake_args, &args.server.kafka, &args.server.flush, None)
                .await?,
        ),
        false => None,
    };
    let ingest = opened
        .as_ref()
        .and_then(|l| o.spawn_ingest(l.log.clone(), services_stopped));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = opened.clone().filter(|_| args.serve).map(|log| {
        tokio::spawn(async move {
            let shutdown = async {
                stopped.await.ok();
            };
            crate::serve::serve_until(&args.server, lake, catalog, vectors, &log, shutdown).await
        })
    });
    // SIGTERM/SIGINT: the jobs stop where they are; every write they make is atomic (one put
    // per aggregate file, catalog values set, not added; a model is published by one put of
    // CURRENT after all its files), so a stop mid-run loses nothing and the next start resumes.
    // A server that fails (its address taken, a store missing) stops the orchestrator too.
    let failed = tokio::select! {
        done = async {
            match server.as_mut() {
                Some(server) => server.await,
                None => std::future::pending().await,
            }
        } => Some(done),
        () = crate::stream::shutdown_signal() => None,
    };
    tasks.shutdown().await;
    o.release_leases().await;
    stop_services.send(true).ok();
    if let Some(sink) = sink {
        sink.await.context("the in-process sink")?;
    }
    if let Some(ingest) = ingest {
        ingest.await.context("the in-process ingest service")?;
    }
    let served = match (failed, server) {
        (Some(done), _) => done,
        (None, Some(server)) => {
            stop.send(()).ok();
            server.await
        }
        (None, None) => Ok(Ok(())),
    };
    if let Some(opened) = opened {
        opened.log.close().await.context("closing the event log")?;
    }
    served?.context("the server of `recsys orchestrate --serve`")?;
    tracing::info!("orchestrator stopped");
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Print JSON for scripts.
    #[arg(long, env = "RECSYS_STATUS_JSON")]
    pub json: bool,
    /// The event log's topic.
    #[arg(long, env = "RECSYS_KAFKA_TOPIC", default_value = EMBEDDED_TOPIC)]
    pub topic: String,
}

pub async fn status(lake_args: &LakeArgs, args: StatusArgs) -> Result<()> {
    let lake = lake_args.open()?;
    let catalog = args.catalog.open(&lake).await?;
    let mut records = Vec::new();
    for job in Job::ALL {
        records.push((job, record(catalog.as_ref(), job.name()).await?));
    }
    let jobs: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(job, r)| Ok((job.name().to_string(), serde_json::to_value(r)?)))
        .collect::<Result<_>>()?;
    let model = recsys_core::models::current_als(&lake).await?;
    let metrics = match &model {
        Some(v) => {
            let rel = format!("{}/{v}/metrics.json", recsys_core::models::ALS_MODELS_DIR);
            match object_store::ObjectStoreExt::get(&*lake.object_store(), &lake.path(&rel)).await {
                Ok(got) => serde_json::from_slice::<serde_json::Value>(&got.bytes().await?).ok(),
                Err(_) => None,
            }
        }
        None => None,
    };
    let stats = catalog.stats().await?;
    let held = recsys_ingest::sink::written_files(&lake, &args.topic).await?;
    let held_events: i64 = held.iter().map(|(_, f, l)| l - f + 1).sum();
    let counted_events = counts::counted(&lake, &args.topic).await?;
    let out = serde_json::json!({
        "jobs": jobs,
        "model": { "version": model, "metrics": metrics },
        "catalog": { "songs": stats.songs, "users": stats.users, "users_with_vector": stats.users_with_vector },
        "events": { "files": held.len(), "held": held_events, "counted": counted_events, "lag": held_events - counted_events },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "recsys status: lake {}, catalog {}",
        lake.location(),
        catalog.describe()
    );
    println!(
        "\n{:<12} {:<8} {:>10} {:>20}  detail",
        "job", "outcome", "seconds", "last success (UTC)"
    );
    for (job, r) in records {
        match r {
            Some(r) => println!(
                "{:<12} {:<8} {:>10.2} {:>20}  {}",
                job.name(),
                r.outcome,
                r.duration_ms as f64 / 1000.0,
                r.last_success_ms.map_or("never".into(), when),
                r.detail
            ),
            None => println!("{:<12} {:<8}", job.name(), "never run"),
        }
    }
    println!(
        "\nmodel: {}",
        model.as_deref().unwrap_or("none (popularity only)")
    );
    if let Some(m) = &metrics {
        let e = &m["evaluation"];
        if let (Some(model), Some(popularity)) = (
            e["model"]["ndcg_at_10"].as_f64(),
            e["popularity"]["ndcg_at_10"].as_f64(),
        ) {
            println!("  NDCG@10 {model:.4} (popularity {popularity:.4})");
        }
        let d = &m["data"];
        println!(
            "  {} users trained, {} carried over; {} items; plays {}",
            d["users"],
            d["carried_over"]["users"].as_u64().unwrap_or(0),
            d["items"],
            match (d["window"]["since"].as_str(), d["window"]["end"].as_str()) {
                (Some(since), Some(end)) => format!("from {since} to {end}"),
                _ => "of all time".into(),
            }
        );
    }
    println!(
        "catalog: {} songs, {} users ({} with a vector)",
        stats.songs, stats.users, stats.users_with_vector
    );
    println!(
        "events: {} files, {held_events} events, {counted_events} counted (lag {})",
        held.len(),
        held_events - counted_events
    );
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a time in ms.
fn when(ms: i64) -> String {
    let mut out = Vec::new();
    recsys_core::time::format_timestamp_secs(ms * 1000, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}
