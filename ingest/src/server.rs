//! The gRPC `IngestService`: `Publish` (client streaming, bulk producers) and `LogEvent` (unary,
//! apps), with health and reflection. Invalid events get `INVALID_ARGUMENT` naming the field;
//! accepted events are acknowledged once the log has them durably.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use recsys_proto::v1::ingest_service_server::{IngestService, IngestServiceServer};
use recsys_proto::v1::{ListenEvent, LogEventResponse, PublishResponse};
use tonic::{Request, Response, Status, Streaming};

use crate::event::{Event, EventBuilder};
use crate::log::{EventLog, LogError, Receipt};

/// Events per append while a `Publish` stream is read.
const APPEND_ROWS: usize = 4096;

/// The service over an [`EventLog`].
pub struct Ingest {
    log: Arc<dyn EventLog>,
}

impl Ingest {
    pub fn new(log: Arc<dyn EventLog>) -> Ingest {
        Ingest { log }
    }

    /// Appends what `builder` holds, keeping the receipt.
    async fn append(
        &self,
        builder: &mut EventBuilder,
        receipts: &mut Vec<Receipt>,
    ) -> Result<(), Status> {
        if !builder.is_empty() {
            receipts.push(
                self.log
                    .append(builder.finish())
                    .await
                    .map_err(unavailable)?,
            );
        }
        Ok(())
    }
}

fn unavailable(e: LogError) -> Status {
    Status::unavailable(e.to_string())
}

async fn settle(receipts: Vec<Receipt>) -> Result<(), Status> {
    for receipt in receipts {
        receipt.await.map_err(unavailable)?;
    }
    Ok(())
}

/// `LogEvent` of the ingest and recommendation services: validates one event (`INVALID_ARGUMENT`
/// naming the field) and returns it once `log` has it durably.
pub async fn log_one(log: &dyn EventLog, message: ListenEvent) -> Result<Event, Status> {
    let event = Event::try_from(message)
        .map_err(|invalid| Status::invalid_argument(invalid.to_string()))?;
    let mut builder = EventBuilder::default();
    builder.push(&event, 0, 0);
    log.append(builder.finish())
        .await
        .map_err(unavailable)?
        .await
        .map_err(unavailable)?;
    Ok(event)
}

#[tonic::async_trait]
impl IngestService for Ingest {
    async fn publish(
        &self,
        request: Request<Streaming<ListenEvent>>,
    ) -> Result<Response<PublishResponse>, Status> {
        let mut stream = request.into_inner();
        let mut builder = EventBuilder::default();
        let mut receipts = Vec::new();
        let mut accepted = 0u64;
        while let Some(message) = stream.message().await? {
            match Event::try_from(message) {
                Ok(event) => {
                    builder.push(&event, 0, 0);
                    accepted += 1;
                    if builder.len() >= APPEND_ROWS {
                        self.append(&mut builder, &mut receipts).await?;
                    }
                }
                Err(invalid) => {
                    // The events before the bad one are kept: make them durable, then say so.
                    self.append(&mut builder, &mut receipts).await?;
                    settle(receipts).await?;
                    return Err(Status::invalid_argument(format!(
                        "event #{accepted}: {invalid} (the {accepted} events before it were accepted)"
                    )));
                }
            }
        }
        self.append(&mut builder, &mut receipts).await?;
        settle(receipts).await?;
        Ok(Response::new(PublishResponse { accepted }))
    }

    async fn log_event(
        &self,
        request: Request<ListenEvent>,
    ) -> Result<Response<LogEventResponse>, Status> {
        log_one(self.log.as_ref(), request.into_inner()).await?;
        Ok(Response::new(LogEventResponse {}))
    }
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC server on {addr}: {source}")]
    Transport {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("gRPC listener: {0}")]
    Listener(#[from] std::io::Error),
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Serves `IngestService`, health and reflection on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    log: Arc<dyn EventLog>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<IngestServiceServer<Ingest>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(recsys_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(IngestServiceServer::new(Ingest::new(log)))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
        .map_err(|source| ServeError::Transport { addr, source })
}

/// Serves only the gRPC health service (the sink's container health check), reporting serving.
pub async fn serve_health(listener: tokio::net::TcpListener) -> Result<(), ServeError> {
    let addr = listener.local_addr()?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
        .map_err(|source| ServeError::Transport { addr, source })
}
