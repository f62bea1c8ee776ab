//! Streaming ingestion: the event contract, the replayer, the gRPC ingest service, the event logs
//! (Kafka, or embedded) and the exactly-once Parquet sink.
//!
//! Events flow from `sorted/` (the replayer) or clients (the gRPC service) into an event log
//! and out of it into `events/date=…/`. It depends on `recsys-core` and `recsys-proto` only: it
//! must not depend on the batch jobs, the catalog, the vector store or serving (serving depends
//! on it to log events, not the reverse).

pub mod compact;
pub mod consume;
pub mod counts;
pub mod event;
mod kafka_logs;
pub mod log;
pub mod replay;
pub mod server;
pub mod sink;

pub use event::{Action, Event, EventBuilder, InvalidEvent};
pub use log::{EmbeddedLog, EventLog, GrpcLog, KafkaLog, KafkaOptions, LogError};
pub use sink::{FlushPolicy, Sink, SinkError, SinkStats};
