//! Where jobs run: a remote Ballista cluster (`df://host:50050`) or an embedded one (scheduler and
//! executor in this process, on a loopback port). Either way a job is a physical plan planned
//! here, sent to the scheduler, split into stages and run by executors; the same code path runs
//! on a laptop and on the compose cluster.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use ballista_core::config::BALLISTA_SCHEDULER_MAX_PARTITIONS_PER_TASK;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use datafusion::execution::SessionState;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::PhysicalPlanNode;
use recsys_core::S3Options;

use crate::JobError;
use crate::registry::{RecsysOptions, physical_codec, session_config, session_state};

/// How long to wait for a scheduler to answer before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to a Ballista scheduler, plus the local session that plans jobs for it.
pub struct Cluster {
    scheduler_url: String,
    display_url: String,
    config: SessionConfig,
    state: SessionState,
    session_id: String,
    embedded: bool,
}

impl Cluster {
    /// Connects to `scheduler` (`df://host:port`), or starts an embedded cluster with `vcores`
    /// task slots when it is `None`.
    pub async fn connect(
        scheduler: Option<&str>,
        s3: &S3Options,
        vcores: usize,
    ) -> Result<Cluster, JobError> {
        match scheduler {
            Some(url) => Cluster::remote(url, s3, vcores).await,
            None => Cluster::embedded(s3, vcores).await,
        }
    }

    /// An in-process scheduler and executor; nothing to install, nothing left behind.
    pub async fn embedded(s3: &S3Options, vcores: usize) -> Result<Cluster, JobError> {
        let vcores = vcores.max(1);
        let config = Self::job_config(s3, vcores);
        let state = session_state(config.clone())?;
        let addr = ballista_scheduler::standalone::new_standalone_scheduler_from_state(&state)
            .await
            .map_err(|e| JobError::Cluster(format!("cannot start the embedded scheduler: {e}")))?;
        let url = format!("http://localhost:{}", addr.port());
        let client = connect(&url, "embedded scheduler").await?;
        ballista_executor::new_standalone_executor_from_state(client, vcores, &state)
            .await
            .map_err(|e| JobError::Cluster(format!("cannot start the embedded executor: {e}")))?;
        Ok(Cluster::new(url, "embedded".into(), config, state, true))
    }

    /// A running cluster. `vcores` is the total task slots to plan for (partition counts).
    pub async fn remote(url: &str, s3: &S3Options, vcores: usize) -> Result<Cluster, JobError> {
        let parsed = url::Url::parse(url)
            .map_err(|e| JobError::Cluster(format!("invalid scheduler URL `{url}`: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| JobError::Cluster(format!("scheduler URL `{url}` has no host")))?;
        let port = parsed.port().unwrap_or(50050);
        let grpc_url = format!("http://{host}:{port}");
        connect(&grpc_url, url).await?;
        let config = Self::job_config(s3, vcores.max(1));
        let state = session_state(config.clone())?;
        Ok(Cluster::new(
            grpc_url,
            url.to_string(),
            config,
            state,
            false,
        ))
    }

    fn new(
        scheduler_url: String,
        display_url: String,
        config: SessionConfig,
        state: SessionState,
        embedded: bool,
    ) -> Cluster {
        let session_id = format!(
            "recsys-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        Cluster {
            scheduler_url,
            display_url,
            config,
            state,
            session_id,
            embedded,
        }
    }

    fn job_config(s3: &S3Options, vcores: usize) -> SessionConfig {
        // Our plans are built stage by stage on purpose (e.g. the sort job's per-range sorts), so
        // the static distributed planner runs them as written; the adaptive one re-plans.
        session_config(RecsysOptions::from_s3(s3))
            .with_target_partitions(vcores)
            .with_ballista_standalone_parallelism(vcores)
            .with_ballista_adaptive_query_planner(false)
            // One task per partition: our partitions are units of work of similar size, and
            // packing several into one task leaves cores idle at the end of a stage.
            .set_usize(BALLISTA_SCHEDULER_MAX_PARTITIONS_PER_TASK, 1)
            .set_usize(
                "datafusion.execution.sort_in_place_threshold_bytes",
                512 << 20,
            )
    }

    /// `embedded` or the scheduler URL, for logs and summaries.
    pub fn describe(&self) -> &str {
        &self.display_url
    }

    pub fn is_embedded(&self) -> bool {
        self.embedded
    }

    /// Task slots plans are sized for.
    pub fn parallelism(&self) -> usize {
        self.config.target_partitions()
    }

    /// A local context with our functions and the lake's stores, for planning jobs.
    pub fn planner(&self) -> SessionContext {
        SessionContext::new_with_state(self.state.clone())
    }

    /// Runs `plan` on the cluster and collects its (small) output.
    pub async fn run(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Vec<RecordBatch>, JobError> {
        let codec = physical_codec();
        let stream = execute_physical_plan::<PhysicalPlanNode>(
            self.scheduler_url.clone(),
            &self.config.ballista_config(),
            plan,
            codec.as_ref(),
            self.session_id.clone(),
            self.config.clone(),
        )
        .await?;
        Ok(datafusion::physical_plan::common::collect(stream).await?)
    }
}

async fn connect(
    grpc_url: &str,
    shown: &str,
) -> Result<SchedulerGrpcClient<tonic::transport::Channel>, JobError> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        match tokio::time::timeout(
            Duration::from_secs(5),
            SchedulerGrpcClient::connect(grpc_url.to_string()),
        )
        .await
        {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                return Err(JobError::Cluster(format!(
                    "cannot reach the Ballista scheduler at {shown}: {e}"
                )));
            }
            Err(_) if tokio::time::Instant::now() >= deadline => {
                return Err(JobError::Cluster(format!(
                    "no answer from the Ballista scheduler at {shown} within {CONNECT_TIMEOUT:?}"
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
