//! Where accepted events go: Kafka (production) or the embedded log, which hands them straight to
//! the [`Sink`] (no broker). Both acknowledge an append only once its events are durable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arrow::array::{Int32Array, Int64Array, RecordBatch};
use async_trait::async_trait;
use futures::FutureExt;
use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use recsys_core::Store;
use recsys_core::schema::{col, event_schema};
use recsys_proto::v1;
use recsys_proto::v1::ingest_service_client::IngestServiceClient;
use tokio::sync::{mpsc, oneshot};

use crate::event::EventColumns;
use crate::kafka_logs::KafkaLogs;
use crate::sink::{FlushPolicy, Sink, SinkError, SinkStats};

/// Errors of an event log. Every variant names the broker or store concerned.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("Kafka at `{brokers}`: {source}")]
    Kafka {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error(
        "Kafka at `{brokers}` has no topic `{topic}` (create it first, e.g. with 3 partitions)"
    )]
    NoTopic { brokers: String, topic: String },
    #[error(transparent)]
    Sink(#[from] Arc<SinkError>),
    #[error("ingest service at `{endpoint}`: {reason}")]
    Grpc { endpoint: String, reason: String },
    #[error("the embedded log has stopped")]
    Stopped,
    #[error(
        "the embedded log of {lake} is being written by another process (it has one writer: send \
         events to that process, e.g. `recsys replay --via` its ingest service, or use Kafka)"
    )]
    InUse { lake: String },
    #[error("locking {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves once the events of one append are durable.
pub type Receipt = BoxFuture<'static, Result<(), LogError>>;

/// An append-only log of events.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Appends `batch` ([`event_schema`]; its partition and offset columns are assigned by the
    /// log). Waits while the log is full (back-pressure); the receipt resolves once durable.
    async fn append(&self, batch: RecordBatch) -> Result<Receipt, LogError>;

    /// Finishes: everything appended is durable when this returns.
    async fn close(&self) -> Result<(), LogError>;
}

/// Kafka producer settings.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    pub topic: String,
    /// `none`, `lz4`, `zstd`, …
    pub compression: String,
    /// Idempotent producer: retries never duplicate or reorder a partition's messages.
    pub idempotence: bool,
    /// Bound of the producer's queue, in messages; a full queue makes `append` wait.
    pub queue_messages: usize,
    /// How long an appended event may wait for Kafka to acknowledge it (`message.timeout.ms`)
    /// before its receipt fails: the bound on an append while the brokers are unreachable.
    pub delivery_timeout_ms: u64,
}

/// [`KafkaOptions::delivery_timeout_ms`]'s default: a listener's logged event is refused after
/// this long, never accepted and lost.
pub const DELIVERY_TIMEOUT_MS: u64 = 10_000;

/// Events to Kafka as JSON, keyed by `user_id` (a user's events stay in order on one partition).
pub struct KafkaLog {
    /// Replaced by a new producer after a fatal error (see [`KafkaLog::producer`]).
    producer: std::sync::RwLock<FutureProducer<KafkaLogs>>,
    /// Set by a delivery the broker refused for the producer's identity.
    renew: Arc<AtomicBool>,
    options: KafkaOptions,
}

/// Delivery errors that say the broker no longer accepts the producer's id or epoch (a broker
/// restarted without its producer state fences it): every later send would fail the same way.
fn identity_refused(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::UnknownProducerId
                | RDKafkaErrorCode::InvalidProducerIdMapping
        )
    )
}

fn new_producer(options: &KafkaOptions) -> Result<FutureProducer<KafkaLogs>, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("client.id", "recsys-ingest")
        .set("enable.idempotence", options.idempotence.to_string())
        .set("compression.type", &options.compression)
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("batch.size", "1048576")
        .set(
            "queue.buffering.max.messages",
            options.queue_messages.to_string(),
        )
        .set("queue.buffering.max.kbytes", "65536")
        .set(
            "message.timeout.ms",
            options.delivery_timeout_ms.to_string(),
        )
        .create_with_context(KafkaLogs::default())
}

impl KafkaLog {
    /// Connects and checks that the topic exists (failing fast, naming the brokers).
    pub async fn connect(options: KafkaOptions) -> Result<KafkaLog, LogError> {
        let kafka_err = |source| LogError::Kafka {
            brokers: options.brokers.clone(),
            source,
        };
        let producer = new_producer(&options).map_err(kafka_err)?;
        let probe = producer.clone();
        let topic = options.topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            probe
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
        })
        .await
        .expect("metadata task does not panic")
        .map_err(kafka_err)?;
        let known = metadata.topics().iter().any(|t| {
            t.name() == options.topic && t.error().is_none() && !t.partitions().is_empty()
        });
        if !known {
            return Err(LogError::NoTopic {
                brokers: options.brokers.clone(),
                topic: options.topic.clone(),
            });
        }
        Ok(KafkaLog {
            producer: std::sync::RwLock::new(producer),
            renew: Arc::default(),
            options,
        })
    }

    /// The producer, a new one when the current one has failed fatally or the broker refused
    /// its identity ([`identity_refused`]). Either fails every later send until the producer is
    /// recreated; the events it held have already failed their receipts, so nothing is
    /// acknowledged and lost.
    fn producer(&self) -> Result<FutureProducer<KafkaLogs>, LogError> {
        let current = self.producer.read().expect("not poisoned").clone();
        if current.client().fatal_error().is_none() && !self.renew.load(Ordering::Acquire) {
            return Ok(current);
        }
        let mut slot = self.producer.write().expect("not poisoned");
        // Another append may have replaced it meanwhile.
        let fatal = slot.client().fatal_error();
        if fatal.is_some() || self.renew.swap(false, Ordering::AcqRel) {
            let reason = fatal.map_or(
                "the broker refused its producer id".into(),
                |(code, why)| format!("{code}: {why}"),
            );
            tracing::warn!(
                brokers = %self.options.brokers,
                reason,
                "Kafka producer failed; starting a new one"
            );
            *slot = new_producer(&self.options).map_err(|source| LogError::Kafka {
                brokers: self.options.brokers.clone(),
                source,
            })?;
        }
        Ok(slot.clone())
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    async fn append(&self, batch: RecordBatch) -> Result<Receipt, LogError> {
        let producer = self.producer()?;
        let cols = EventColumns::new(&batch);
        let mut deliveries = Vec::with_capacity(cols.len());
        for row in 0..cols.len() {
            let event = cols.event(row);
            let payload = serde_json::to_vec(&event).expect("events serialise");
            let mut record = FutureRecord::to(&self.options.topic)
                .key(&event.user_id)
                .payload(&payload);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // Back-pressure: wait for the broker to drain the bounded queue.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    Err((source, _)) => {
                        return Err(LogError::Kafka {
                            brokers: self.options.brokers.clone(),
                            source,
                        });
                    }
                }
            }
        }
        let brokers = self.options.brokers.clone();
        let renew = self.renew.clone();
        Ok(async move {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((source, _))) => {
                        if identity_refused(&source) {
                            renew.store(true, Ordering::Release);
                        }
                        return Err(LogError::Kafka {
                            brokers: brokers.clone(),
                            source,
                        });
                    }
                    Err(_) => {
                        return Err(LogError::Kafka {
                            brokers: brokers.clone(),
                            source: KafkaError::Canceled,
                        });
                    }
                }
            }
            Ok(())
        }
        .boxed())
    }

    async fn close(&self) -> Result<(), LogError> {
        let producer = self.producer.read().expect("not poisoned").clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
            .await
            .expect("flush task does not panic")
            .map_err(|source| LogError::Kafka {
                brokers: self.options.brokers.clone(),
                source,
            })
    }
}

/// The topic name the embedded log writes under (one partition, 0).
pub const EMBEDDED_TOPIC: &str = "music_log";

enum Command {
    Append(RecordBatch, oneshot::Sender<Result<(), LogError>>),
    Close(oneshot::Sender<Result<SinkStats, LogError>>),
}

/// The embedded log: appends get consecutive offsets in partition 0 and go straight into a
/// [`Sink`]; an append is acknowledged when the file holding its last event is written (group
/// commit: one write acknowledges every append it holds).
pub struct EmbeddedLog {
    commands: mpsc::Sender<Command>,
}

/// The lock file of a local lake's embedded log, in the lake's folder.
pub const WRITER_LOCK: &str = "embedded-log.lock";

/// The embedded log's one writer: an OS lock on `<lake>/embedded-log.lock`, held while the log
/// runs (released by the OS when its process dies). Two writers would number events from the
/// same offset and one's files would replace the other's. S3 lakes have no such lock: one
/// process writes their embedded log, or events go through Kafka.
fn writer_lock(store: &Store) -> Result<Option<std::fs::File>, LogError> {
    let Some(dir) = store.local_dir() else {
        return Ok(None);
    };
    let path = dir.join(WRITER_LOCK);
    let lock_err = |source| LogError::Lock {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::InUse {
            lake: store.location().to_string(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
    }
}

impl EmbeddedLog {
    /// Opens the sink on `store` and starts the log's task; [`LogError::InUse`] when another
    /// process (or log) writes the embedded log of the same local lake.
    pub async fn open(store: Store, policy: FlushPolicy) -> Result<EmbeddedLog, LogError> {
        let lock = writer_lock(&store)?;
        let interval = policy.interval;
        let mut sink = Sink::open(store, EMBEDDED_TOPIC, policy)
            .await
            .map_err(Arc::new)?;
        sink.reload(&[0]).await.map_err(Arc::new)?;
        let (commands, rx) = mpsc::channel(16);
        tokio::spawn(run_embedded(sink, rx, interval, lock));
        Ok(EmbeddedLog { commands })
    }

    /// Writes what is buffered, stops the task and returns what the sink did.
    pub async fn shutdown(&self) -> Result<SinkStats, LogError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Close(tx))
            .await
            .map_err(|_| LogError::Stopped)?;
        rx.await.map_err(|_| LogError::Stopped)?
    }
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn append(&self, batch: RecordBatch) -> Result<Receipt, LogError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Append(batch, tx))
            .await
            .map_err(|_| LogError::Stopped)?;
        Ok(async move { rx.await.map_err(|_| LogError::Stopped)? }.boxed())
    }

    async fn close(&self) -> Result<(), LogError> {
        self.shutdown().await.map(|_| ())
    }
}

/// `batch` with partition 0 and offsets `first..`.
fn with_offsets(batch: &RecordBatch, first: i64) -> RecordBatch {
    let n = batch.num_rows();
    let schema = event_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            col::LOG_PARTITION => Arc::new(Int32Array::from(vec![0; n])) as _,
            col::LOG_OFFSET => Arc::new(Int64Array::from_iter_values(first..first + n as i64)) as _,
            name => batch.column_by_name(name).expect("event schema").clone(),
        })
        .collect();
    RecordBatch::try_new(schema, columns).expect("event schema")
}

/// The log's task; it holds the writer lock until it stops (released before a close is
/// acknowledged, so that the next writer can open the log at once).
async fn run_embedded(
    mut sink: Sink,
    mut commands: mpsc::Receiver<Command>,
    interval: Duration,
    lock: Option<std::fs::File>,
) {
    // Appends waiting for their last offset to be written, in offset order.
    let mut waiting: std::collections::VecDeque<(i64, oneshot::Sender<Result<(), LogError>>)> =
        Default::default();
    let mut tick = tokio::time::interval((interval / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Append(batch, ack)) => {
                    if batch.num_rows() == 0 {
                        let _ = ack.send(Ok(()));
                        continue;
                    }
                    let first = sink.next_offset(0);
                    waiting.push_back((first + batch.num_rows() as i64 - 1, ack));
                    sink.push(0, with_offsets(&batch, first)).await.map(|_| ())
                }
                Some(Command::Close(done)) => {
                    let result = sink.flush_all().await.map(|_| ()).map_err(Arc::new);
                    settle(&mut waiting, sink.written(0), result.clone());
                    drop(lock);
                    let _ = done.send(result.map(|()| sink.stats()).map_err(LogError::Sink));
                    return;
                }
                None => {
                    let result = sink.flush_all().await.map(|_| ()).map_err(Arc::new);
                    settle(&mut waiting, sink.written(0), result);
                    return;
                }
            },
            _ = tick.tick() => sink.flush_due().await.map(|_| ()),
        };
        let failed = result.is_err();
        settle(&mut waiting, sink.written(0), result.map_err(Arc::new));
        if failed {
            // Fail-stop: later appends get `Stopped` instead of offsets beyond a failed write.
            return;
        }
    }
}

/// Acknowledges the appends now written; on a failed write, fails every append not written.
fn settle(
    waiting: &mut std::collections::VecDeque<(i64, oneshot::Sender<Result<(), LogError>>)>,
    written: Option<i64>,
    result: Result<(), Arc<SinkError>>,
) {
    let written = written.unwrap_or(-1);
    while waiting.front().is_some_and(|(last, _)| *last <= written) {
        let (_, ack) = waiting.pop_front().expect("checked");
        let _ = ack.send(Ok(()));
    }
    if let Err(e) = result {
        for (_, ack) in waiting.drain(..) {
            let _ = ack.send(Err(LogError::Sink(e.clone())));
        }
    }
}

/// Events through a remote `IngestService` (`recsys replay --via grpc://…`): each append is one
/// `Publish` stream, at most [`GRPC_IN_FLIGHT`] at a time.
pub struct GrpcLog {
    client: IngestServiceClient<tonic::transport::Channel>,
    endpoint: String,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Concurrent `Publish` calls of one [`GrpcLog`].
pub const GRPC_IN_FLIGHT: usize = 8;

impl GrpcLog {
    /// Connects to `endpoint` (`grpc://host:port` or `http://host:port`) within 10 s.
    pub async fn connect(endpoint: &str) -> Result<GrpcLog, LogError> {
        let url = endpoint.replacen("grpc://", "http://", 1);
        let grpc_err = |reason: String| LogError::Grpc {
            endpoint: endpoint.to_string(),
            reason,
        };
        let channel = tonic::transport::Endpoint::from_shared(url)
            .map_err(|e| grpc_err(e.to_string()))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .connect()
            .await
            .map_err(|e| grpc_err(format!("cannot connect: {e}")))?;
        Ok(GrpcLog {
            client: IngestServiceClient::new(channel),
            endpoint: endpoint.to_string(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(GRPC_IN_FLIGHT)),
        })
    }
}

#[async_trait]
impl EventLog for GrpcLog {
    async fn append(&self, batch: RecordBatch) -> Result<Receipt, LogError> {
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| LogError::Stopped)?;
        let cols = EventColumns::new(&batch);
        let events: Vec<v1::ListenEvent> = (0..cols.len())
            .map(|row| v1::ListenEvent::from(&cols.event(row)))
            .collect();
        let mut client = self.client.clone();
        let endpoint = self.endpoint.clone();
        let call = tokio::spawn(async move {
            let result = client.publish(tokio_stream::iter(events)).await;
            drop(permit);
            result
        });
        Ok(async move {
            match call.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(LogError::Grpc {
                    endpoint,
                    reason: status.to_string(),
                }),
                Err(_) => Err(LogError::Stopped),
            }
        }
        .boxed())
    }

    async fn close(&self) -> Result<(), LogError> {
        // Every receipt is awaited by the caller; nothing is buffered here.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_lakes_embedded_log_has_one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        let policy = FlushPolicy {
            rows: 100,
            interval: Duration::from_millis(50),
            in_flight: 1,
        };
        let first = EmbeddedLog::open(store.clone(), policy.clone())
            .await
            .unwrap();
        // The lock is the OS's, per open file: a second log in this process meets it as
        // another process would.
        let Err(e) = EmbeddedLog::open(store.clone(), policy.clone()).await else {
            panic!("a second writer opened the log");
        };
        assert!(matches!(e, LogError::InUse { .. }), "{e}");
        assert!(e.to_string().contains(store.location()), "{e}");
        first.shutdown().await.unwrap();
        let next = EmbeddedLog::open(store, policy).await.unwrap();
        next.shutdown().await.unwrap();
    }
}
