//! `recsys replay`, `recsys ingest` and `recsys sink`: the streaming half of the pipeline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgAction, Args};
use recsys_core::time::format_timestamp_secs;
use recsys_ingest::consume::{ConsumeOptions, ConsumeStats, DEFAULT_FETCH_WAIT_MS, run_sink};
use recsys_ingest::replay::{ReplayOptions, ReplayStats, replay, sorted_files};
use recsys_ingest::{EmbeddedLog, EventLog, FlushPolicy, GrpcLog, KafkaLog, KafkaOptions};
use tracing::info;

use crate::LakeArgs;

/// The Kafka connection; without `--kafka`, events go to the embedded log (straight into `events/`).
#[derive(Debug, Clone, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, e.g. `kafka:9092`.
    #[arg(long, env = "RECSYS_KAFKA")]
    pub kafka: Option<String>,
    /// Topic of listening events.
    #[arg(long, env = "RECSYS_KAFKA_TOPIC", default_value = "music_log")]
    pub topic: String,
    /// Producer compression (`none`, `lz4`, `zstd`, `gzip`, `snappy`).
    #[arg(long, env = "RECSYS_KAFKA_COMPRESSION", default_value = "lz4")]
    pub compression: String,
    /// Idempotent producer (`enable.idempotence`): retries never duplicate or reorder.
    #[arg(long, env = "RECSYS_KAFKA_IDEMPOTENCE", default_value_t = true, action = ArgAction::Set)]
    pub idempotence: bool,
    /// Bound of the producer's queue (messages); a full queue slows the sender down.
    #[arg(long, env = "RECSYS_KAFKA_QUEUE_MESSAGES", default_value_t = 200_000)]
    pub queue_messages: usize,
    /// Milliseconds an event may wait for Kafka's acknowledgement before it is refused (a
    /// logged event answers `UNAVAILABLE` then, never "ok" for an event Kafka did not take).
    #[arg(long, env = "RECSYS_KAFKA_DELIVERY_TIMEOUT_MS", default_value_t = recsys_ingest::log::DELIVERY_TIMEOUT_MS)]
    pub delivery_timeout_ms: u64,
}

impl KafkaArgs {
    fn options(&self, brokers: &str) -> KafkaOptions {
        KafkaOptions {
            brokers: brokers.to_string(),
            topic: self.topic.clone(),
            compression: self.compression.clone(),
            idempotence: self.idempotence,
            queue_messages: self.queue_messages,
            delivery_timeout_ms: self.delivery_timeout_ms,
        }
    }
}

/// When the sink writes a file.
#[derive(Debug, Clone, Args)]
pub struct FlushArgs {
    /// Rows per partition that trigger a write.
    #[arg(long, env = "RECSYS_FLUSH_ROWS", default_value_t = 500_000)]
    pub flush_rows: usize,
    /// Longest time (ms) an event waits in the sink's buffer before it is written.
    #[arg(long, env = "RECSYS_FLUSH_INTERVAL_MS", default_value_t = 1000)]
    pub flush_interval_ms: u64,
    /// Files the sink writes concurrently (the Kafka sink waits for them before it polls
    /// again, so a partition never changes owner with a write in flight).
    #[arg(long, env = "RECSYS_WRITE_CONCURRENCY", default_value_t = 4)]
    pub write_concurrency: usize,
}

impl FlushArgs {
    pub fn policy(&self) -> FlushPolicy {
        FlushPolicy {
            rows: self.flush_rows.max(1),
            interval: Duration::from_millis(self.flush_interval_ms),
            in_flight: self.write_concurrency.max(1),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Time compression: data seconds per wall second (20000 = 20000× real time); 0 = as fast as possible.
    #[arg(long, env = "RECSYS_REPLAY_SPEED", default_value_t = 20000.0)]
    pub speed: f64,
    /// Longest sleep (ms) between two events; longer gaps in the data are skipped.
    #[arg(long, env = "RECSYS_REPLAY_MAX_SLEEP_MS", default_value_t = 2000)]
    pub max_sleep_ms: u64,
    /// Stop after this many events.
    #[arg(long, env = "RECSYS_REPLAY_LIMIT")]
    pub limit: Option<u64>,
    /// Send through a running ingest service instead, e.g. `grpc://ingest:50070`.
    #[arg(long, env = "RECSYS_REPLAY_VIA", conflicts_with = "kafka")]
    pub via: Option<String>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub flush: FlushArgs,
}

impl ReplayArgs {
    /// The defaults (and environment) of `recsys replay`, at `speed`: what the pipeline runs.
    pub fn with_speed(speed: f64) -> ReplayArgs {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            replay: ReplayArgs,
        }
        let mut args = <Defaults as clap::Parser>::parse_from(["replay"]).replay;
        args.speed = speed;
        args
    }
}

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Address of the gRPC ingest service.
    #[arg(long, env = "RECSYS_INGEST_LISTEN", default_value = "127.0.0.1:50070")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub flush: FlushArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "RECSYS_KAFKA")]
    pub kafka: String,
    /// Topic of listening events.
    #[arg(long, env = "RECSYS_KAFKA_TOPIC", default_value = "music_log")]
    pub topic: String,
    /// Consumer group: run several sinks with one group to share the partitions.
    #[arg(long, env = "RECSYS_SINK_GROUP", default_value = "recsys-sink")]
    pub group: String,
    /// Static membership id (`group.instance.id`, e.g. the host name): a restarted sink gets its
    /// partitions back at once.
    #[arg(long, env = "RECSYS_SINK_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Consume every partition without joining a group (one sink; resumes from the lake).
    #[arg(long, env = "RECSYS_SINK_ASSIGN_ALL", conflicts_with = "instance_id")]
    pub assign_all: bool,
    /// Stop once this many events have been written (a catch-up run).
    #[arg(long, env = "RECSYS_SINK_STOP_AFTER")]
    pub stop_after: Option<u64>,
    /// Longest (ms) the broker may hold a fetch when it has no data (`fetch.wait.max.ms`).
    #[arg(long, env = "RECSYS_SINK_FETCH_WAIT_MS", default_value_t = DEFAULT_FETCH_WAIT_MS)]
    pub fetch_wait_ms: u64,
    /// Serve the gRPC health service here (for container health checks).
    #[arg(long, env = "RECSYS_SINK_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub flush: FlushArgs,
}

/// A log as the flags select it.
#[derive(Clone)]
pub struct OpenLog {
    pub log: Arc<dyn EventLog>,
    pub describe: String,
}

pub async fn open_log(
    lake: &LakeArgs,
    kafka: &KafkaArgs,
    flush: &FlushArgs,
    via: Option<&str>,
) -> Result<OpenLog> {
    if let Some(endpoint) = via {
        let log = GrpcLog::connect(endpoint).await?;
        return Ok(OpenLog {
            log: Arc::new(log),
            describe: format!("ingest service {endpoint}"),
        });
    }
    if let Some(brokers) = &kafka.kafka {
        let log = KafkaLog::connect(kafka.options(brokers)).await?;
        return Ok(OpenLog {
            log: Arc::new(log),
            describe: format!("Kafka {brokers} topic {}", kafka.topic),
        });
    }
    let store = lake.open()?;
    let embedded = EmbeddedLog::open(store.clone(), flush.policy()).await?;
    Ok(OpenLog {
        log: Arc::new(embedded),
        describe: format!("embedded log → {}/events", store.location()),
    })
}

/// Replays the sorted listens into the selected log, with a progress bar (events/s, data clock).
pub async fn run_replay(lake: &LakeArgs, args: &ReplayArgs) -> Result<ReplayStats> {
    let store = lake.open()?;
    let opened = open_log(lake, &args.kafka, &args.flush, args.via.as_deref()).await?;
    let total: u64 = sorted_files(&store).await?.iter().map(|(_, n)| n).sum();
    let total = args.limit.map_or(total, |l| l.min(total));
    info!(events = total, speed = args.speed, to = %opened.describe, "replaying");
    let bar = crate::progress::bar(total, "replay", "events");
    let options = ReplayOptions {
        speed: args.speed,
        max_sleep: Duration::from_millis(args.max_sleep_ms),
        limit: args.limit,
        batch_rows: 8192,
    };
    let mut clock = Vec::with_capacity(20);
    let stats = replay(&store, opened.log.as_ref(), &options, |events, ts| {
        bar.set_position(events);
        clock.clear();
        format_timestamp_secs(ts, &mut clock);
        bar.set_message(format!("data clock {}", String::from_utf8_lossy(&clock)));
    })
    .await?;
    bar.finish_and_clear();
    info!(
        events = stats.events,
        seconds = format!("{:.2}", stats.elapsed.as_secs_f64()),
        events_per_s = format!("{:.0}", crate::progress::rate(stats.events, stats.elapsed)),
        data_days = format!("{:.1}", stats.data_span_us as f64 / 86_400e6),
        "replay done (every event durable)"
    );
    Ok(stats)
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Serves the gRPC ingest service until SIGINT/SIGTERM.
pub async fn run_ingest(lake: &LakeArgs, args: &IngestArgs) -> Result<()> {
    let opened = open_log(lake, &args.kafka, &args.flush, None).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the ingest service to {}", args.listen))?;
    info!(listen = %listener.local_addr()?, to = %opened.describe, "ingest service ready");
    recsys_ingest::server::serve(listener, opened.log.clone(), shutdown_signal()).await?;
    opened.log.close().await?;
    Ok(())
}

/// Consumes Kafka into `events/` until SIGINT/SIGTERM.
pub async fn run_sink_command(lake: &LakeArgs, args: &SinkArgs) -> Result<ConsumeStats> {
    let store = lake.open()?;
    info!(brokers = %args.kafka, topic = %args.topic, group = %args.group, lake = %store.location(), "sink starting");
    let options = ConsumeOptions {
        brokers: args.kafka.clone(),
        topic: args.topic.clone(),
        group: args.group.clone(),
        instance_id: args.instance_id.clone(),
        assign_all: args.assign_all,
        policy: args.flush.policy(),
        stop_after: args.stop_after,
        fetch_wait_ms: args.fetch_wait_ms,
    };
    if let Some(addr) = args.health_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the sink's health service to {addr}"))?;
        tokio::spawn(recsys_ingest::server::serve_health(listener));
    }
    let stats = run_sink(store, options, shutdown_signal()).await?;
    info!(
        messages = stats.messages,
        invalid = stats.invalid,
        rows = stats.sink.rows,
        files = stats.sink.files,
        duplicates_dropped = stats.sink.duplicates + stats.redelivered,
        "sink stopped"
    );
    Ok(stats)
}
