//! `recsys pipeline`: every step, end to end, on the embedded default (or whatever the flags
//! select), with a summary of what each step did and how long it took.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use recsys_core::schema::RAW_DIR;

use crate::data::{GenerateArgs, generate};
use crate::submit::{clean, clean_input, print_clean, print_sort, sort};
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

struct Step {
    name: &'static str,
    elapsed: Duration,
    rows: u64,
    detail: String,
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
    let lyrics = args.lyrics.available(&lake, args.input.is_none()).await?;
    if !lyrics {
        println!(
            "no lyrics source: lyrics and embeddings are skipped and the server is ALS only \
             (give one with --lrclib-url URL, or --lyrics-file FILE: JSON lines in the lake)"
        );
    }

    let cluster = args.cluster.connect(&lake_args.s3).await?;
    let tsv = clean_input(lake_args, &lake, Some(&input)).await?;
    let cleaned = clean(&cluster, &tsv, &lake).await?;
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
    let sorted = sort(&cluster, &lake, args.sort_files).await?;
    steps.push(Step {
        name: "sort",
        elapsed: sorted.elapsed,
        rows: sorted.rows,
        detail: format!("{} time-ranged files", sorted.files.len()),
    });

    let replay = crate::stream::ReplayArgs::with_speed(args.replay_speed);
    if replay.kafka.kafka.is_none() && replay.via.is_none() {
        // The pipeline rebuilds the lake from its input: a previous run's events go first.
        recsys_ingest::sink::clear(&lake, recsys_ingest::log::EMBEDDED_TOPIC).await?;
        // ...and the play counts aggregated from them (`recsys orchestrate`).
        recsys_ingest::counts::clear(&lake, recsys_ingest::log::EMBEDDED_TOPIC).await?;
    }
    let streamed = crate::stream::run_replay(lake_args, &replay).await?;
    if let Some(brokers) = &replay.kafka.kafka {
        // Production: the sink service writes the topic to events/; the steps below read it.
        wait_for_sink(&lake, brokers, &replay.kafka.topic, args.sink_wait_s).await?;
    }
    steps.push(Step {
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
    });

    let trained = crate::als::train(&cluster, &lake, &args.als).await?;
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

    // The catalog last: user documents carry the vectors of the model just trained.
    let catalog = args.catalog.open(&lake).await?;
    let etl = crate::catalog::etl(
        &cluster,
        &lake,
        crate::catalog::Source::Auto,
        recsys_jobs::etl::DEFAULT_FILES,
    )
    .await?;
    steps.push(Step {
        name: "etl",
        elapsed: etl.elapsed,
        rows: etl.manifest.plays,
        detail: format!(
            "{} songs, {} users → catalog/",
            etl.manifest.songs.rows, etl.manifest.users.rows
        ),
    });
    let (loaded, load_elapsed) =
        crate::catalog::load_catalog(catalog.as_ref(), &lake, &args.load, false).await?;
    steps.push(Step {
        name: "load",
        elapsed: load_elapsed,
        rows: loaded.songs.loaded + loaded.users.loaded,
        detail: catalog.describe(),
    });

    let vectors = args.vectors.open(&lake).await?;
    let embedded = if lyrics {
        lyrics_steps(
            &args,
            &cluster,
            &lake,
            catalog.as_ref(),
            vectors.as_ref(),
            &mut steps,
        )
        .await?
    } else {
        None
    };

    println!();
    print_clean(&cleaned);
    print_sort(&sorted, &lake);
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
    crate::catalog::print_etl(&etl);
    crate::catalog::print_load(catalog.as_ref(), &loaded, load_elapsed);
    if let Some(embedded) = &embedded {
        crate::lyrics::print_embed(embedded);
    }
    crate::als::print_summary(&trained, &lake);
    if embedded.is_some() {
        crate::lyrics::print_lyrics_neighbours(catalog.as_ref(), vectors.as_ref(), 2, 5).await?;
    }

    // Serving: the recommendation service on the embedded stores, verified end to end; its
    // logged events go to the embedded log like the streamed ones.
    let log = recsys_ingest::EmbeddedLog::open(
        lake.clone(),
        crate::stream::ReplayArgs::with_speed(0.0).flush.policy(),
    )
    .await?;
    let log: std::sync::Arc<recsys_ingest::EmbeddedLog> = std::sync::Arc::new(log);
    let keep = args.keep_serving;
    let served = crate::serve::serve_and_verify(
        &lake,
        catalog.into(),
        vectors.into(),
        log.clone(),
        embedded.is_some(),
        keep,
    )
    .await;
    log.shutdown().await?;
    served
}

/// The lyrics steps ([`crate::lyrics::lyrics_and_embeddings`]) with a line each in the summary;
/// the embedding report, `None` when the source found no lyrics for any song.
async fn lyrics_steps(
    args: &PipelineArgs,
    cluster: &recsys_jobs::Cluster,
    lake: &recsys_core::Store,
    catalog: &dyn recsys_catalog::Catalog,
    vectors: &dyn recsys_vectors::VectorStore,
    steps: &mut Vec<Step>,
) -> Result<Option<(recsys_embed::job::EmbedReport, Duration)>> {
    let run = crate::lyrics::lyrics_and_embeddings(
        cluster,
        lake,
        catalog,
        vectors,
        &args.lyrics,
        &args.model,
    )
    .await?;
    let (fetched, elapsed) = &run.fetched;
    steps.push(Step {
        name: "lyrics",
        elapsed: *elapsed,
        rows: fetched.songs(),
        detail: format!(
            "{} found, {} missing, {} instrumental, {} errors",
            fetched.found, fetched.missing, fetched.instrumental, fetched.errors
        ),
    });
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
                "MiniLM-L6 in burn on the cluster, {} already embedded, {} too short",
                report.already_done, report.too_short
            ),
        });
    }
    Ok(run.embedded)
}

/// Waits until the sink has written every event of `topic` (as of now) to the lake's `events/`.
async fn wait_for_sink(
    lake: &recsys_core::Store,
    brokers: &str,
    topic: &str,
    wait_s: u64,
) -> Result<()> {
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
