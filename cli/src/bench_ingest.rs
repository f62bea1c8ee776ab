//! `recsys bench ingest`: the streaming path at full speed. The embedded log (replay → sink, no
//! broker), and with `--kafka` the broker path: replay → Kafka → sink running side by side in
//! this process, on a fresh topic and consumer group. Targets from the streaming issue:
//! ≥ 1 M events/s embedded, ≥ 250 k events/s through the broker, flat memory.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use recsys_ingest::consume::{ConsumeOptions, ConsumeStats, DEFAULT_FETCH_WAIT_MS, run_sink};
use recsys_ingest::log::EMBEDDED_TOPIC;
use recsys_ingest::log::Receipt;
use recsys_ingest::replay::{ReplayOptions, replay};
use recsys_ingest::sink::{check_coverage, clear};
use recsys_ingest::{EmbeddedLog, EventLog, KafkaLog, KafkaOptions, LogError};

use crate::LakeArgs;
use crate::bench::{peak_memory_mb, reset_peak_memory, sorted_bench_lake};
use crate::stream::FlushArgs;

#[derive(Debug, Args)]
pub struct IngestBench {
    /// Events to replay (a generated log of this size is made when missing).
    #[arg(long, env = "RECSYS_BENCH_ROWS", default_value_t = 2_000_000)]
    pub rows: u64,
    /// Kafka bootstrap servers: also measure the broker path (creates a fresh 3-partition topic).
    #[arg(long, env = "RECSYS_BENCH_KAFKA")]
    pub kafka: Option<String>,
    /// Producer compression for the broker path.
    #[arg(long, env = "RECSYS_KAFKA_COMPRESSION", default_value = "lz4")]
    pub compression: String,
    #[command(flatten)]
    pub flush: FlushArgs,
}

const EMBEDDED_TARGET: f64 = 1_000_000.0;
const BROKER_TARGET: f64 = 250_000.0;

fn row(path: &str, what: &str, events: u64, secs: f64, target: Option<f64>, peak_mb: u64) {
    let rate = events as f64 / secs.max(1e-9);
    let vs = target.map_or(String::new(), |t| format!("{:.2}× target", rate / t));
    println!("{path:<10} {what:<22} {events:>10} {secs:>8.2} {rate:>12.0} {peak_mb:>8}  {vs}");
}

pub async fn run(lake_args: &LakeArgs, args: IngestBench) -> Result<()> {
    let lake = sorted_bench_lake(lake_args, args.rows).await?;
    let options = ReplayOptions {
        speed: 0.0,
        max_sleep: Duration::from_secs(2),
        limit: Some(args.rows),
        batch_rows: 8192,
    };
    println!(
        "bench ingest: {} events, flush every {} rows / {} ms",
        args.rows, args.flush.flush_rows, args.flush.flush_interval_ms
    );
    println!(
        "{:<10} {:<22} {:>10} {:>8} {:>12} {:>8}",
        "path", "measured", "events", "seconds", "events/s", "peak MB"
    );

    // The source alone: reading sorted/ into event batches, acknowledged at once.
    reset_peak_memory();
    let t = Instant::now();
    let read = replay(&lake, &Discard, &options, |_, _| {}).await?;
    row(
        "source",
        "read sorted/ only",
        read.events,
        t.elapsed().as_secs_f64(),
        None,
        peak_memory_mb(),
    );

    clear(&lake, EMBEDDED_TOPIC).await?;
    reset_peak_memory();
    let log = EmbeddedLog::open(lake.clone(), args.flush.policy()).await?;
    let t = Instant::now();
    let stats = replay(&lake, &log, &options, |_, _| {}).await?;
    let secs = t.elapsed().as_secs_f64();
    let written: u64 = check_coverage(&lake, EMBEDDED_TOPIC)
        .await
        .map_err(anyhow::Error::msg)?
        .values()
        .sum();
    if written != stats.events {
        bail!("embedded log wrote {written} of {} events", stats.events);
    }
    row(
        "embedded",
        "replay → events/",
        stats.events,
        secs,
        Some(EMBEDDED_TARGET),
        peak_memory_mb(),
    );

    let Some(brokers) = args.kafka.clone() else {
        println!("(broker path: pass --kafka host:port)");
        return Ok(());
    };
    let topic = format!(
        "music_log_bench_{}",
        recsys_core::time::now_micros() / recsys_core::time::MICROS_PER_SEC
    );
    create_topic(&brokers, &topic, 3).await?;
    let producer = KafkaLog::connect(KafkaOptions {
        brokers: brokers.clone(),
        topic: topic.clone(),
        compression: args.compression.clone(),
        idempotence: true,
        queue_messages: 200_000,
        delivery_timeout_ms: recsys_ingest::log::DELIVERY_TIMEOUT_MS,
    })
    .await?;
    // End to end: the sink consumes while the replay produces.
    reset_peak_memory();
    let t = Instant::now();
    let sink = tokio::spawn(drain(
        lake.clone(),
        brokers.clone(),
        topic.clone(),
        format!("{topic}-e2e"),
        args.rows,
        args.flush.policy(),
    ));
    let produced = replay(&lake, &producer, &options, |_, _| {}).await?;
    let produce_secs = t.elapsed().as_secs_f64();
    let consumed = sink.await.context("sink task")??;
    let end_to_end = t.elapsed().as_secs_f64();
    let peak = peak_memory_mb();
    row(
        "kafka",
        "producer (acked)",
        produced.events,
        produce_secs,
        Some(BROKER_TARGET),
        peak,
    );
    row(
        "kafka",
        "end to end → events/",
        produced.events,
        end_to_end,
        Some(BROKER_TARGET),
        peak,
    );
    // Sink alone: a new group drains the full topic into a scratch lake.
    reset_peak_memory();
    let scratch = lake.child("bench-drain");
    clear(&scratch, &topic).await?;
    let t = Instant::now();
    let drained = drain(
        scratch.clone(),
        brokers.clone(),
        topic.clone(),
        format!("{topic}-drain"),
        args.rows,
        args.flush.policy(),
    )
    .await?;
    row(
        "kafka",
        "sink alone",
        drained.sink.rows,
        t.elapsed().as_secs_f64(),
        Some(BROKER_TARGET),
        peak_memory_mb(),
    );
    clear(&scratch, &topic).await?;
    println!(
        "sink: {} files, {} rows, {} duplicates dropped, {} invalid messages",
        consumed.sink.files, consumed.sink.rows, consumed.sink.duplicates, consumed.invalid
    );
    Ok(())
}

/// Runs a sink (its own consumer group) until it has written `expected` events of `topic`.
async fn drain(
    lake: recsys_core::Store,
    brokers: String,
    topic: String,
    group: String,
    expected: u64,
    policy: recsys_ingest::FlushPolicy,
) -> Result<ConsumeStats> {
    let options = ConsumeOptions {
        brokers,
        topic: topic.clone(),
        group,
        instance_id: None,
        assign_all: false,
        policy,
        stop_after: Some(expected),
        fetch_wait_ms: DEFAULT_FETCH_WAIT_MS,
    };
    let timeout = tokio::time::sleep(Duration::from_secs(600));
    let stats = run_sink(lake.clone(), options, timeout).await?;
    let covered: u64 = check_coverage(&lake, &topic)
        .await
        .map_err(anyhow::Error::msg)?
        .values()
        .sum();
    if covered != expected {
        bail!("the sink wrote {covered} of {expected} events");
    }
    Ok(stats)
}

/// A log that drops everything: measures the replay's own cost.
struct Discard;

#[async_trait::async_trait]
impl EventLog for Discard {
    async fn append(&self, _: arrow::array::RecordBatch) -> Result<Receipt, LogError> {
        Ok(Box::pin(async { Ok(()) }))
    }

    async fn close(&self) -> Result<(), LogError> {
        Ok(())
    }
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .with_context(|| format!("Kafka admin client for `{brokers}`"))?;
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .with_context(|| format!("creating topic `{topic}` on `{brokers}`"))?;
    for result in results {
        result.map_err(|(t, e)| anyhow::anyhow!("creating topic `{t}` on `{brokers}`: {e}"))?;
    }
    Ok(())
}
