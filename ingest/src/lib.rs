//! Streaming ingestion: the event contract, the replayer, the gRPC ingest service, the event logs
//! (Kafka, or embedded) and the exactly-once Parquet sink.

pub mod consume;
pub mod event;
mod kafka_logs;
pub mod log;
pub mod replay;
pub mod server;
pub mod sink;

pub use event::{Action, Event, EventBuilder, InvalidEvent};
pub use log::{EmbeddedLog, EventLog, GrpcLog, KafkaLog, KafkaOptions, LogError};
pub use sink::{FlushPolicy, Sink, SinkError, SinkStats};
