//! `recsys sink`: a Kafka consumer-group member feeding the exactly-once [`Sink`].
//!
//! Rebalances: partitions assigned to this member re-read the store (another member may have
//! written them); revoked partitions drop their unwritten buffers (never committed, so their new
//! owner reads them again). Callbacks run only inside `recv`, and the loop applies them before
//! any write, so a member never writes a partition it no longer owns. Files of one hand-over
//! are written concurrently (`FlushPolicy::in_flight`), but every write has finished before
//! the loop calls `recv` again: a partition revoked there has no file still being written, so
//! its next owner sees everything this member wrote.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use recsys_core::Store;
use tracing::{info, warn};

use crate::event::{EventBuilder, EventRef};
use crate::kafka_logs::KafkaLogs;
use crate::sink::{FlushPolicy, Sink, SinkError, SinkStats};

/// Errors of the consumer loop; each names the brokers or the object concerned.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("Kafka at `{brokers}`: {source}")]
    Kafka {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    /// Static group membership (`group.instance.id`): a restarted member takes its partitions
    /// back at once instead of waiting for the old session to expire.
    pub instance_id: Option<String>,
    /// Own every partition of the topic (no group membership), starting where the store ends.
    pub assign_all: bool,
    pub policy: FlushPolicy,
    /// Stop once this many events have been written in this run (a catch-up job, the benchmark).
    pub stop_after: Option<u64>,
    /// Longest the broker may hold a fetch request open (`fetch.wait.max.ms`).
    pub fetch_wait_ms: u64,
}

/// Default of [`ConsumeOptions::fetch_wait_ms`]. Kafka answers a fetch as soon as it has data,
/// so the wait only bounds how often an idle sink asks (50 times a second here). tansu 0.6
/// holds every fetch for about this long even when it has data, so librdkafka's default of
/// 500 ms capped the sink there at ~265 k events/s.
pub const DEFAULT_FETCH_WAIT_MS: u64 = 20;

/// `fetch.queue.backoff.ms`: librdkafka stops fetching a partition whose local queue is over
/// `queued.min.messages` and looks again after this long. Its default (1 s) left the sink idle
/// after every burst it had prefetched, once fetches were fast.
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// Counters of a sink run.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConsumeStats {
    pub sink: SinkStats,
    pub messages: u64,
    /// Messages that were not valid events (logged with partition, offset and reason).
    pub invalid: u64,
    /// Messages at offsets already collected or written, dropped.
    pub redelivered: u64,
}

enum Change {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

struct Rebalances {
    topic: String,
    changes: Mutex<Vec<Change>>,
    logs: KafkaLogs,
}

impl Rebalances {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for Rebalances {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.logs.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.logs.error(error, reason);
    }
}

impl ConsumerContext for Rebalances {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = self.partitions(tpl);
            self.changes
                .lock()
                .expect("not poisoned")
                .push(Change::Revoked(parts));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = self.partitions(tpl);
                self.changes
                    .lock()
                    .expect("not poisoned")
                    .push(Change::Assigned(parts));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance failed"),
        }
    }
}

/// Rows a partition's builder collects before they go to the sink as one batch.
const BATCH_ROWS: usize = 8192;

struct Member {
    consumer: StreamConsumer<Rebalances>,
    context: Arc<Rebalances>,
    sink: Sink,
    options: ConsumeOptions,
    owned: HashSet<i32>,
    builders: BTreeMap<i32, EventBuilder>,
    stats: ConsumeStats,
}

impl Member {
    fn kafka_err(&self, source: KafkaError) -> ConsumeError {
        ConsumeError::Kafka {
            brokers: self.options.brokers.clone(),
            source,
        }
    }

    /// Applies the rebalances that happened inside the last `recv`.
    async fn apply_rebalances(&mut self) -> Result<(), ConsumeError> {
        let changes = std::mem::take(&mut *self.context.changes.lock().expect("not poisoned"));
        for change in changes {
            match change {
                Change::Revoked(parts) => {
                    info!(?parts, "partitions revoked");
                    for p in &parts {
                        self.owned.remove(p);
                        self.builders.remove(p);
                    }
                    self.sink.forget(&parts);
                }
                Change::Assigned(parts) => {
                    self.sink.reload(&parts).await?;
                    for p in &parts {
                        self.owned.insert(*p);
                        self.builders.remove(p);
                    }
                    let resume: Vec<_> = parts
                        .iter()
                        .map(|p| (p, self.sink.next_offset(*p)))
                        .collect();
                    info!(
                        ?resume,
                        "partitions assigned (partition, next offset from the store)"
                    );
                }
            }
        }
        Ok(())
    }

    /// Moves a partition's collected rows into the sink; commits what the sink wrote.
    async fn hand_over(&mut self, partition: i32) -> Result<(), ConsumeError> {
        let Some(builder) = self.builders.get_mut(&partition) else {
            return Ok(());
        };
        if builder.is_empty() {
            return Ok(());
        }
        let batch = builder.finish();
        let mut written = self.sink.push(partition, batch).await?;
        written.extend(self.sink.finish_writes().await?);
        self.commit(&written, CommitMode::Async)
    }

    /// Commits offsets after `written` (the files are durable).
    fn commit(&self, written: &[(i32, i64)], mode: CommitMode) -> Result<(), ConsumeError> {
        if written.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for (p, last) in written {
            tpl.add_partition_offset(&self.options.topic, *p, Offset::Offset(last + 1))
                .map_err(|e| self.kafka_err(e))?;
        }
        self.consumer
            .commit(&tpl, mode)
            .map_err(|e| self.kafka_err(e))
    }

    /// Applies pending rebalances, then moves every partition's collected rows to the sink.
    async fn hand_over_all(&mut self) -> Result<(), ConsumeError> {
        self.apply_rebalances().await?;
        let parts: Vec<i32> = self.builders.keys().copied().collect();
        for p in parts {
            self.hand_over(p).await?;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), ConsumeError> {
        self.hand_over_all().await?;
        let mut written = self.sink.flush_due().await?;
        written.extend(self.sink.finish_writes().await?);
        self.commit(&written, CommitMode::Async)
    }

    async fn on_message(
        &mut self,
        partition: i32,
        offset: i64,
        payload: &[u8],
    ) -> Result<(), ConsumeError> {
        if !self.owned.contains(&partition) {
            return Ok(());
        }
        self.stats.messages += 1;
        // A fetch may hand back messages below the position asked for (tansu does after a
        // seek): anything at or below what is collected or written is a redelivery.
        let next = self
            .builders
            .get(&partition)
            .and_then(EventBuilder::last_offset)
            .map_or_else(|| self.sink.next_offset(partition), |o| o + 1);
        if offset < next {
            self.stats.redelivered += 1;
            return Ok(());
        }
        match EventRef::parse(payload) {
            Ok(event) => {
                let builder = self.builders.entry(partition).or_default();
                builder.push_ref(&event, partition, offset);
                if builder.len() >= BATCH_ROWS {
                    self.hand_over(partition).await?;
                }
            }
            Err(invalid) => {
                self.stats.invalid += 1;
                warn!(partition, offset, %invalid, "skipping a message that is not a valid event");
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), ConsumeError> {
        self.hand_over_all().await?;
        let written = self.sink.flush_all().await?;
        self.commit(&written, CommitMode::Sync)
    }
}

/// Consumes `options.topic` into `store` until `shutdown` resolves, then writes what is buffered.
pub async fn run_sink(
    store: Store,
    options: ConsumeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<ConsumeStats, ConsumeError> {
    let kafka_err = |source| ConsumeError::Kafka {
        brokers: options.brokers.clone(),
        source,
    };
    let mut config = ClientConfig::new();
    if let Some(id) = &options.instance_id {
        config.set("group.instance.id", id);
    }
    let consumer: StreamConsumer<Rebalances> = config
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", &options.group)
        .set("client.id", "recsys-sink")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("max.poll.interval.ms", "300000")
        .set("fetch.wait.max.ms", options.fetch_wait_ms.to_string())
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
        .create_with_context(Rebalances {
            topic: options.topic.clone(),
            changes: Mutex::default(),
            logs: KafkaLogs::default(),
        })
        .map_err(kafka_err)?;
    let context = consumer.context().clone();
    let mut sink = Sink::open(store, &options.topic, options.policy.clone()).await?;
    let mut owned = HashSet::new();
    if options.assign_all {
        let metadata = consumer
            .fetch_metadata(Some(&options.topic), Duration::from_secs(10))
            .map_err(kafka_err)?;
        let mut tpl = TopicPartitionList::new();
        for topic in metadata
            .topics()
            .iter()
            .filter(|t| t.name() == options.topic)
        {
            for p in topic.partitions() {
                tpl.add_partition_offset(
                    &options.topic,
                    p.id(),
                    Offset::Offset(sink.next_offset(p.id())),
                )
                .map_err(kafka_err)?;
                owned.insert(p.id());
            }
        }
        let all: Vec<i32> = owned.iter().copied().collect();
        sink.reload(&all).await?;
        info!(
            partitions = owned.len(),
            "assigned every partition, each from where the store ends"
        );
        consumer.assign(&tpl).map_err(kafka_err)?;
    } else {
        consumer.subscribe(&[&options.topic]).map_err(kafka_err)?;
    }
    let tick_every = (options.policy.interval / 4).max(Duration::from_millis(20));
    let mut member = Member {
        consumer,
        context,
        sink,
        options,
        owned,
        builders: BTreeMap::new(),
        stats: ConsumeStats::default(),
    };
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // The message's bytes, copied so the message (borrowing the consumer) is released first.
    let mut payload = Vec::new();
    // When the brokers became unreachable, while they are.
    let mut outage: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => member.on_tick().await?,
            message = member.consumer.recv() => {
                let message = match message {
                    Ok(message) => message,
                    // Brokers unreachable: librdkafka reconnects by itself; the sink waits
                    // with what it holds rather than ending.
                    Err(KafkaError::MessageConsumption(code)) if unreachable(code) => {
                        if outage.is_none() {
                            tracing::warn!(
                                brokers = %member.options.brokers,
                                %code,
                                "sink: Kafka unreachable, waiting for it"
                            );
                            outage = Some(Instant::now());
                        }
                        continue;
                    }
                    Err(e) => return Err(member.kafka_err(e)),
                };
                if let Some(since) = outage.take() {
                    tracing::info!(
                        after_s = since.elapsed().as_secs(),
                        "sink: Kafka reachable again"
                    );
                }
                let (partition, offset) = (message.partition(), message.offset());
                payload.clear();
                payload.extend_from_slice(message.payload().unwrap_or_default());
                drop(message);
                member.apply_rebalances().await?;
                member.on_message(partition, offset, &payload).await?;
            }
        }
        let written = member.sink.stats().rows
            + member.sink.buffered_rows() as u64
            + member
                .builders
                .values()
                .map(|b| b.len() as u64)
                .sum::<u64>();
        if member.options.stop_after.is_some_and(|n| written >= n) {
            break;
        }
    }
    member.finish().await?;
    member.stats.sink = member.sink.stats();
    Ok(member.stats)
}

/// Whether a consumer error only says that brokers cannot be reached right now.
fn unreachable(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::Resolve
            | RDKafkaErrorCode::NetworkException
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::CoordinatorNotAvailable
    )
}

/// The end offset (the next offset to be written) of every partition of `topic`.
pub async fn end_offsets(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, ConsumeError> {
    let (brokers, topic) = (brokers.to_string(), topic.to_string());
    let failed = {
        let brokers = brokers.clone();
        move |source| ConsumeError::Kafka {
            brokers: brokers.clone(),
            source,
        }
    };
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set_log_level(RDKafkaLogLevel::Error)
            .create()
            .map_err(&failed)?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(&failed)?;
        let mut ends = BTreeMap::new();
        for t in metadata.topics().iter().filter(|t| t.name() == topic) {
            for p in t.partitions() {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, p.id(), timeout)
                    .map_err(&failed)?;
                ends.insert(p.id(), high);
            }
        }
        Ok(ends)
    })
    .await
    .expect("the watermark lookup does not panic")
}

/// Waits until the sink has written every offset below `ends` of `topic` into `store`'s
/// `events/` (checking every second), or `timeout` has passed; `progress(written, total)` after
/// each check. Returns the offsets still missing (0 when caught up).
pub async fn wait_for_sink(
    store: &Store,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    timeout: Duration,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, SinkError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let total: u64 = ends.values().map(|&e| e.max(0) as u64).sum();
    loop {
        let written = crate::sink::next_offsets(&crate::sink::written_files(store, topic).await?);
        let done: u64 = ends
            .iter()
            .map(|(p, &end)| written.get(p).copied().unwrap_or(0).min(end).max(0) as u64)
            .sum();
        progress(done, total);
        if done >= total || tokio::time::Instant::now() >= deadline {
            return Ok(total - done);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
