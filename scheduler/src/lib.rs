//! The recsys Ballista scheduler: Ballista's own scheduler process with every standard flag, and
//! our functions and plan codecs installed from `recsys_jobs::registry`.
//!
//! A thin process: the configuration and codecs come from `recsys-jobs`, its own S3 settings
//! from `recsys-core`; it depends on no other recsys crate (no event log, catalog, vector store
//! or serving in a scheduler).

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use recsys_core::S3Options;
use recsys_jobs::registry;

/// Every standard `ballista-scheduler` flag (`--bind-port`, `--scheduler-policy`, …).
pub use ballista_scheduler::config::Config as SchedulerArgs;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("invalid bind address `{0}`: {1}")]
    Address(String, std::net::AddrParseError),
    #[error(transparent)]
    Ballista(#[from] ballista_core::error::BallistaError),
}

/// Runs the scheduler until it is stopped. It reaches the lake (to plan SQL over it) with its
/// `own` S3 settings, never with credentials a client sent; with `lake`, every session has the
/// lake's tables by name (`recsys_jobs::tables`), which Flight SQL clients query when
/// `--flight-sql` is on.
pub async fn run(
    args: SchedulerArgs,
    own: &S3Options,
    lake: Option<recsys_core::Store>,
) -> Result<(), SchedulerError> {
    let bind = format!("{}:{}", args.bind_host, args.bind_port);
    let addr: SocketAddr = bind
        .parse()
        .map_err(|e| SchedulerError::Address(bind.clone(), e))?;
    let mut config: SchedulerConfig = args.try_into()?;
    registry::configure_scheduler(&mut config, own, lake);
    let cluster = BallistaCluster::new_from_config(&config).await?;
    tracing::info!(%addr, "recsys scheduler listening");
    start_server(cluster, addr, Arc::new(config)).await?;
    Ok(())
}
