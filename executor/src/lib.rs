//! The recsys Ballista executor: Ballista's own executor process with every standard flag, and
//! our functions, plan codecs and object-store registry installed from `recsys_jobs::registry`.
//!
//! A thin process: functions, codecs and the runtime come from `recsys-jobs`, its own S3
//! settings from `recsys-core`; it depends on no other recsys crate (an executor links the
//! jobs' code and nothing downstream of them).

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::health::spawn_health_server;
use recsys_core::S3Options;
use recsys_jobs::registry;

/// Every standard `ballista-executor` flag (`--scheduler-host`, `--vcores`, `--work-dir`, …).
pub use ballista_executor::config::Config as ExecutorArgs;

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("invalid health address `{0}`: {1}")]
    Address(String, std::net::AddrParseError),
    #[error(transparent)]
    Ballista(#[from] ballista_core::error::BallistaError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
}

/// Runs the executor until it is stopped; `/healthz` and `/readyz` answer on the health port.
/// It reaches the lake with its `own` S3 settings (its environment or flags): jobs carry no
/// credentials.
pub async fn run(args: ExecutorArgs, own: &S3Options) -> Result<(), ExecutorError> {
    let health_bind = format!("{}:{}", args.bind_host, args.bind_health_port);
    let health_addr: SocketAddr = health_bind
        .parse()
        .map_err(|e| ExecutorError::Address(health_bind.clone(), e))?;
    let mut config: ExecutorProcessConfig = args.try_into()?;
    registry::configure_executor(&mut config, own)?;
    let (stop_health, health_stopped) = tokio::sync::oneshot::channel();
    let health = spawn_health_server(health_addr, config.health.clone(), health_stopped);
    tracing::info!(scheduler = %format!("{}:{}", config.scheduler_host, config.scheduler_port), "recsys executor starting");
    let result = start_executor_process(Arc::new(config)).await;
    let _ = stop_health.send(());
    let _ = health.await;
    Ok(result?)
}
