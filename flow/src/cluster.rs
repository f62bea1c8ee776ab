//! Which cluster batch jobs run on: a remote Ballista scheduler or the embedded one.

use recsys_core::S3Options;
use recsys_jobs::{Cluster, JobError};

/// Where batch jobs run (the `recsys` command's cluster flags).
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// `df://host:50050`; `None`: an embedded cluster in this process.
    pub scheduler: Option<String>,
    /// Task slots to plan for; 0: this machine's cores for the embedded cluster, the registered
    /// executors' slots for a remote one.
    pub vcores: usize,
    /// Every executor mounts the lake's local folder at the same path.
    pub shared_lake: bool,
    /// Times a failed Ballista job is submitted again.
    pub retries: usize,
    /// How this process (and an embedded cluster's executors) reach an S3 lake.
    pub s3: S3Options,
}

impl ClusterConfig {
    /// Connects to the scheduler (or starts the embedded cluster).
    pub async fn connect(&self) -> Result<Cluster, JobError> {
        let vcores = match (&self.scheduler, self.vcores) {
            (None, 0) => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            (_, n) => n,
        };
        Ok(Cluster::connect(
            self.scheduler.as_deref(),
            &self.s3,
            vcores,
            self.shared_lake,
        )
        .await?
        .with_retries(self.retries))
    }
}
