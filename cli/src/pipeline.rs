//! `recsys pipeline`: every step, end to end, on the embedded default (or whatever the flags
//! select), with a summary of what each step did and how long it took. The steps and their
//! order are `recsys_flow::pipeline`'s; this adds the data (generated or given), the stream
//! step, the printing and serving.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use recsys_core::Store;
use recsys_core::schema::RAW_DIR;
use recsys_flow::pipeline::{PipelineConfig, Step};

use crate::data::{GenerateArgs, generate};
use crate::progress::Bars;
use crate::submit::{clean_input, print_clean, print_sort};
use crate::{ClusterArgs, LakeArgs};

#[derive(Debug, Args)]
pub struct PipelineArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub generate: GenerateArgs,
    /// Clean this TSV file or folder (e.g. the real Last.fm-1K) instead of generating data.
    #[arg(long, env = "RECSYS_INPUT")]
    pub input: Option<String>,
    /// Number of sorted files (default: one per 500 k rows).
    #[arg(long, env = "RECSYS_SORT_FILES")]
    pub sort_files: Option<usize>,
    /// Replay speed of the streaming step (data seconds per wall second; 0 = as fast as possible).
    #[arg(long, env = "RECSYS_PIPELINE_REPLAY_SPEED", default_value_t = 0.0)]
    pub replay_speed: f64,
    /// With Kafka (`RECSYS_KAFKA`), how long to wait for the sink service to write the replayed
    /// events to `events/` before training on them (seconds).
    #[arg(long, env = "RECSYS_PIPELINE_SINK_WAIT_S", default_value_t = 600)]
    pub sink_wait_s: u64,
    #[command(flatten)]
    pub als: crate::als::AlsArgs,
    #[command(flatten)]
    pub catalog: crate::catalog::CatalogArgs,
    #[command(flatten)]
    pub load: crate::catalog::LoadArgs,
    #[command(flatten)]
    pub lyrics: crate::lyrics::SourceArgs,
    #[command(flatten)]
    pub vectors: crate::lyrics::VectorArgs,
    #[command(flatten)]
    pub model: crate::lyrics::ModelArgs,
    /// After verifying the server, keep serving (web player, JSON API and gRPC) on this address
    /// until Ctrl-C, instead of stopping.
    #[arg(long, env = "RECSYS_PIPELINE_KEEP_SERVING", num_args = 0..=1, default_missing_value = "127.0.0.1:50051")]
    pub keep_serving: Option<std::net::SocketAddr>,
}

pub async fn run(lake_args: &LakeArgs, args: PipelineArgs) -> Result<()> {
    let started = Instant::now();
    let lake = lake_args.open()?;
    let mut steps = Vec::new();
    println!("recsys pipeline: lake {}", lake.location());

    let input = match &args.input {
        Some(input) => input.clone(),
        None => {
            let raw = lake.child(RAW_DIR);
            let t = Instant::now();
            let manifest = generate(&args.generate.config(), &raw).await?;
            steps.push(Step {
                name: "generate",
                elapsed: t.elapsed(),
                rows: manifest.lines,
                detail: format!(
                    "{} users, {} tracks, {} good + {} malformed lines, {} MB",
                    manifest.config.users,
                    manifest.config.tracks,
                    manifest.expected_clean_rows,
                    manifest.lines - manifest.expected_clean_rows,
                    manifest.bytes / 1_000_000
                ),
            });
            raw.location().to_string()
        }
    };

    // Lyrics come from LRCLIB, a lyrics file, or (the demo) the generator's file. Without any
    // the run says so now, then trains, loads and serves without lyrics and embeddings.
    let lyrics = if args.lyrics.available(&lake, args.input.is_none()).await? {
        Some((args.lyrics.source(), args.model.locate()?))
    } else {
        println!(
            "no lyrics source: lyrics and embeddings are skipped and the server is ALS only \
             (give one with --lrclib-url URL, or --lyrics-file FILE: JSON lines in the lake)"
        );
        None
    };

    let cluster = args.cluster.connect(&lake_args.s3).await?;
    let tsv = clean_input(lake_args, &lake, Some(&input)).await?;
    let catalog = args.catalog.open(&lake).await?;
    let vectors = args.vectors.open(&lake).await?;
    let config = PipelineConfig {
        sort_files: args.sort_files,
        als: args.als.params(),
        train: args.als.options(),
        load_batch: args.load.batch,
        lyrics,
    };
    let built = recsys_flow::pipeline::run(
        &cluster,
        &lake,
        &tsv,
        catalog.as_ref(),
        vectors.as_ref(),
        &config,
        &Bars,
        async { Ok(stream(lake_args, &lake, &args).await?) },
    )
    .await?;
    steps.extend(built.steps);
    let embedded = built.lyrics.as_ref().and_then(|l| l.embedded.as_ref());

    println!();
    print_clean(&built.cleaned);
    print_sort(&built.sorted, &lake);
    println!();
    println!(
        "{:<10} {:>9} {:>12} {:>14}  what",
        "step", "seconds", "rows", "rows/s"
    );
    for s in &steps {
        println!(
            "{:<10} {:>9.2} {:>12} {:>14.0}  {}",
            s.name,
            s.elapsed.as_secs_f64(),
            s.rows,
            crate::progress::rate(s.rows, s.elapsed),
            s.detail
        );
    }
    println!(
        "{:<10} {:>9.2}  (cluster: {})",
        "total",
        started.elapsed().as_secs_f64(),
        cluster.describe()
    );
    println!();
    crate::catalog::print_etl(&built.etl);
    crate::catalog::print_load(catalog.as_ref(), &built.loaded.0, built.loaded.1);
    if let Some(run) = &built.lyrics {
        crate::lyrics::print_lyrics_run(run, &args.lyrics, catalog.as_ref(), vectors.as_ref())
            .await?;
    }
    if let Some(embedded) = embedded {
        crate::lyrics::print_embed(embedded);
    }
    crate::als::print_summary(&built.trained, &lake);
    if embedded.is_some() {
        crate::lyrics::print_lyrics_neighbours(catalog.as_ref(), vectors.as_ref(), 2, 5).await?;
    }

    // Serving: the recommendation service on the pipeline's stores, verified end to end; its
    // logged events go where the streamed ones went (the embedded log, or Kafka and its sink).
    let replay = crate::stream::ReplayArgs::with_speed(0.0);
    let opened = crate::stream::open_log(lake_args, &replay.kafka, &replay.flush, None).await?;
    let keep = args.keep_serving;
    let served = crate::serve::serve_and_verify(
        &lake,
        catalog.into(),
        vectors.into(),
        opened.log.clone(),
        embedded.is_some(),
        keep,
    )
    .await;
    opened.log.close().await?;
    served
}

/// The stream step: the sorted listens replayed into the event log (the embedded one, whose
/// previous events and counts go first, or Kafka, whose sink is waited for).
async fn stream(lake_args: &LakeArgs, lake: &Store, args: &PipelineArgs) -> Result<Step> {
    let replay = crate::stream::ReplayArgs::with_speed(args.replay_speed);
    if replay.kafka.kafka.is_none() && replay.via.is_none() {
        // The pipeline rebuilds the lake from its input: a previous run's events go first.
        recsys_ingest::sink::clear(lake, recsys_ingest::log::EMBEDDED_TOPIC).await?;
        // ...and the play counts aggregated from them (`recsys orchestrate`).
        recsys_ingest::counts::clear(lake, recsys_ingest::log::EMBEDDED_TOPIC).await?;
    }
    let streamed = crate::stream::run_replay(lake_args, &replay).await?;
    if let Some(brokers) = &replay.kafka.kafka {
        // Production: the sink service writes the topic to events/; the steps below read it.
        wait_for_sink(lake, brokers, &replay.kafka.topic, args.sink_wait_s).await?;
    }
    Ok(Step {
        name: "stream",
        elapsed: streamed.elapsed,
        rows: streamed.events,
        detail: format!(
            "replayed at {}× into {}",
            if args.replay_speed > 0.0 {
                args.replay_speed.to_string()
            } else {
                "max".into()
            },
            if replay.kafka.kafka.is_some() {
                "Kafka"
            } else {
                "events/ (embedded log)"
            }
        ),
    })
}

/// Waits until the sink has written every event of `topic` (as of now) to the lake's `events/`.
async fn wait_for_sink(lake: &Store, brokers: &str, topic: &str, wait_s: u64) -> Result<()> {
    use recsys_ingest::consume::{end_offsets, wait_for_sink};
    let ends = end_offsets(brokers, topic, Duration::from_secs(30)).await?;
    let total: i64 = ends.values().sum();
    let bar = crate::progress::bar(total.max(0) as u64, "sink", "events");
    let missing = wait_for_sink(
        lake,
        topic,
        &ends,
        Duration::from_secs(wait_s),
        |done, _| bar.set_position(done),
    )
    .await?;
    bar.finish_and_clear();
    if missing > 0 {
        anyhow::bail!(
            "the sink has not written {missing} of the {total} events of Kafka topic `{topic}` \
             ({brokers}) to {} within {wait_s} s: is `recsys sink` running against this lake?",
            lake.url(recsys_core::schema::EVENTS_DIR)
        );
    }
    tracing::info!(
        events = total,
        topic,
        "the sink has written the topic to events/"
    );
    Ok(())
}
