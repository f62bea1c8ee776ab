//! Where jobs run: a remote Ballista cluster (`df://host:50050`) or an embedded one (scheduler and
//! executor in this process, on a loopback port). Either way a job is a physical plan planned
//! here, sent to the scheduler, split into stages and run by executors; the same code path runs
//! on a laptop and on the compose cluster.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use ballista_core::config::{
    BALLISTA_SCHEDULER_MAX_PARTITIONS_PER_TASK, BALLISTA_SHUFFLE_COMPRESSION_CODEC,
};
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::protobuf::PhysicalPlanNode;
use recsys_core::{S3Options, Store};

use crate::JobError;
use crate::registry::{RecsysOptions, physical_codec, session_config, session_state};

/// Runs a write job until its output checks out, at most [`CHECKED_WRITE_ATTEMPTS`] times: a
/// Ballista 55 job that lost an executor can come out with rows doubled (seen with kill -9
/// during our jobs), and such a write is done again. `write` returns `Ok(Err(why))` for output
/// that does not check out; every write replaces its previous attempt's files.
pub(crate) async fn checked_write<T, F, Fut>(what: &str, mut write: F) -> Result<T, JobError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>, JobError>>,
{
    let mut attempt = 1;
    loop {
        let why = match write().await? {
            Ok(done) => return Ok(done),
            Err(why) => why,
        };
        if attempt == CHECKED_WRITE_ATTEMPTS {
            return Err(JobError::Invariant(format!(
                "{what}: {why}, after {attempt} attempts"
            )));
        }
        tracing::warn!(
            what,
            why,
            attempt,
            "a write came out wrong; writing it again"
        );
        attempt += 1;
    }
}

/// How many times [`checked_write`] tries.
const CHECKED_WRITE_ATTEMPTS: usize = 3;

/// How long to wait for a scheduler to answer before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Failure detection for a small cluster (Ballista's own defaults take minutes): executors send
/// a heartbeat every [`HEARTBEAT_S`] seconds; the scheduler checks every [`EXPIRE_CHECK_S`]
/// seconds and declares an executor lost after [`EXECUTOR_TIMEOUT_S`] seconds of silence, then
/// runs its tasks elsewhere. `recsys scheduler` and `recsys executor` default to these; their
/// flags (`--executor-timeout-seconds`, `--expire-dead-executor-interval-seconds`,
/// `--executor-heartbeat-interval-seconds`) change them.
pub const HEARTBEAT_S: u64 = 2;
pub const EXECUTOR_TIMEOUT_S: u64 = 10;
pub const EXPIRE_CHECK_S: u64 = 2;
/// The embedded scheduler's executor timeout: ten years, i.e. never (see `start_embedded`).
const EMBEDDED_EXECUTOR_TIMEOUT_S: u64 = 10 * 365 * 86_400;

/// A connection to a Ballista scheduler, plus the local session that plans jobs for it.
pub struct Cluster {
    scheduler_url: String,
    display_url: String,
    config: SessionConfig,
    session_id: String,
    /// This process's own S3 settings (credentials included), for planning here; jobs carry
    /// only their non-secret part.
    own: S3Options,
    /// Whether the executors can read this process's local folders: the embedded cluster, or
    /// a remote one whose every executor mounts them at the same paths (`--shared-lake`).
    shares_folders: bool,
    /// How many times a failed Ballista job is submitted again (see [`Cluster::with_retries`]).
    retries: usize,
    /// Jobs run so far, for their names (`<session>-<n>`) on the scheduler.
    jobs_run: std::sync::atomic::AtomicU64,
    /// The embedded cluster's stop: why its scheduler or executor stopped, once one has (its
    /// jobs fail then instead of waiting for tasks nobody runs). `None` for a remote cluster.
    embedded_stopped: Option<tokio::sync::watch::Receiver<Option<String>>>,
}

impl Cluster {
    /// Connects to `scheduler` (`df://host:port`, see [`Cluster::remote`]), or starts an
    /// embedded cluster with `vcores` task slots when it is `None`.
    pub async fn connect(
        scheduler: Option<&str>,
        s3: &S3Options,
        vcores: usize,
        shared_folders: bool,
    ) -> Result<Cluster, JobError> {
        match scheduler {
            Some(url) => Cluster::remote(url, s3, vcores, shared_folders).await,
            None => Cluster::embedded(s3, vcores).await,
        }
    }

    /// A scheduler and an executor running inside this process, exactly as the standalone
    /// processes do (same configuration, loopback gRPC, push-based scheduling), with `vcores`
    /// task slots; nothing to install, nothing left behind.
    pub async fn embedded(s3: &S3Options, vcores: usize) -> Result<Cluster, JobError> {
        // The ports are picked free and bound moments later by Ballista: another socket can take
        // one in between, so a start that fails is tried again on fresh ports.
        const ATTEMPTS: usize = 3;
        let vcores = vcores.max(1);
        let mut attempt = 1;
        loop {
            match start_embedded(s3, vcores).await {
                Ok((url, stopped)) => {
                    let mut cluster = Cluster::new(url, EMBEDDED.into(), s3, vcores, true);
                    // Shuffles stay on this machine's disk (its page cache, mostly): compressing
                    // them (lz4 by default) saves no transfer. Measured on the ETL at 4 M events:
                    // 2.15–2.45 s without, 2.25–2.65 s with.
                    cluster.config = cluster
                        .config
                        .set_str(BALLISTA_SHUFFLE_COMPRESSION_CODEC, "none");
                    cluster.embedded_stopped = Some(stopped);
                    return Ok(cluster);
                }
                Err(e) if attempt < ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "the embedded cluster did not start; trying fresh ports");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A running cluster. `vcores` is the total task slots to plan for (partition counts); 0
    /// asks the scheduler for the task slots of the executors registered with it (waiting up to
    /// 15 s for the first one). `shared_folders` says every executor mounts this machine's lake
    /// folder at the same path; otherwise only an S3 lake is accepted (see
    /// [`Cluster::check_lake`]).
    pub async fn remote(
        url: &str,
        s3: &S3Options,
        vcores: usize,
        shared_folders: bool,
    ) -> Result<Cluster, JobError> {
        let grpc_url = scheduler_endpoint(url)?;
        connect(&grpc_url, url).await?;
        let vcores = match vcores {
            0 => registered_slots(&grpc_url, url).await?,
            n => n,
        };
        Ok(Cluster::new(
            grpc_url,
            url.to_string(),
            s3,
            vcores,
            shared_folders,
        ))
    }

    /// The executors registered with the scheduler now.
    pub async fn executors(&self) -> Result<Vec<ExecutorInfo>, JobError> {
        rest(&self.scheduler_url, &self.display_url, "executors").await
    }

    /// The jobs the scheduler knows (running, queued and recently finished).
    pub async fn jobs(&self) -> Result<Vec<JobInfo>, JobError> {
        rest(&self.scheduler_url, &self.display_url, "jobs").await
    }

    /// The tasks of job `job_id` (`GET /api/job/<id>/stages`): when each ran and for how long.
    pub async fn job_tasks(&self, job_id: &str) -> Result<Vec<TaskRun>, JobError> {
        let stages: JobStages = rest(
            &self.scheduler_url,
            &self.display_url,
            &format!("job/{job_id}/stages"),
        )
        .await?;
        Ok(stages
            .stages
            .into_iter()
            .flat_map(|s| s.tasks.into_iter().flatten())
            .collect())
    }

    fn new(
        scheduler_url: String,
        display_url: String,
        s3: &S3Options,
        vcores: usize,
        shares_folders: bool,
    ) -> Cluster {
        let session_id = format!(
            "recsys-{}-{}",
            std::process::id(),
            recsys_core::time::now_nanos()
        );
        Cluster {
            scheduler_url,
            display_url,
            config: Self::job_config(s3, vcores),
            session_id,
            own: s3.clone(),
            shares_folders,
            retries: 0,
            jobs_run: Default::default(),
            embedded_stopped: None,
        }
    }

    /// Submits a failed Ballista job again, up to `retries` times, once the scheduler answers
    /// and has executors again (a scheduler restarted mid-job forgets the job, which then
    /// fails). Every job of ours reads the lake and writes deterministic objects that replace
    /// their previous attempt's, so a retry repeats only the failed job: a multi-job step (the
    /// sort's ranges, ALS's iterations) resumes at the job that failed, not from the start.
    pub fn with_retries(mut self, retries: usize) -> Cluster {
        self.retries = retries;
        self
    }

    /// Fails unless this cluster's executors can reach `lake`: a remote cluster's executors run
    /// on other hosts and cannot read a folder of this one, unless it was declared shared.
    pub fn check_lake(&self, lake: &Store) -> Result<(), JobError> {
        if self.shares_folders || lake.base_url().scheme() != "file" {
            return Ok(());
        }
        Err(JobError::Cluster(format!(
            "the cluster at {} cannot work on the local folder `{}`: its executors run on other \
             hosts and would not find it. Put the lake on S3 (--object-store \
             s3://bucket/prefix), or pass --shared-lake if every executor mounts this folder at \
             the same path",
            self.display_url,
            lake.location()
        )))
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

    /// Task slots plans are sized for.
    pub fn parallelism(&self) -> usize {
        self.config.target_partitions()
    }

    /// A fresh local context (its own catalog) with our functions and the lake's stores, for
    /// planning jobs.
    pub fn planner(&self) -> Result<SessionContext, JobError> {
        Ok(SessionContext::new_with_state(session_state(
            self.config.clone(),
            &self.own,
        )?))
    }

    /// Plans `df` and runs it on the cluster, collecting its (small) output.
    pub async fn run_df(
        &self,
        df: datafusion::prelude::DataFrame,
    ) -> Result<Vec<RecordBatch>, JobError> {
        self.run(df.create_physical_plan().await?).await
    }

    /// Runs `plan` on the cluster and collects its (small) output, retrying a failed job (see
    /// [`Cluster::with_retries`]).
    pub async fn run(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Vec<RecordBatch>, JobError> {
        let failed = |attempts, error| JobError::Job {
            scheduler: self.display_url.clone(),
            attempts,
            source: Box::new(error),
        };
        let mut attempt = 1;
        loop {
            let error = match self.run_once(plan.clone()).await {
                Ok(batches) => return Ok(batches),
                Err(e) => e,
            };
            if attempt > self.retries {
                return Err(failed(attempt, error));
            }
            tracing::warn!(
                attempt,
                retries = self.retries,
                scheduler = %self.display_url,
                %error,
                "a Ballista job failed; submitting it again once the scheduler has executors"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(e) = registered_slots(&self.scheduler_url, &self.display_url).await {
                return Err(failed(attempt, e));
            }
            attempt += 1;
        }
    }

    async fn run_once(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Vec<RecordBatch>, JobError> {
        // The client fetches every result partition over its own new Flight connection, one
        // after the other (~40 ms each here): a last one-task stage that gathers the (small)
        // output costs one executor poll instead.
        let plan: Arc<dyn ExecutionPlan> = if plan.properties().partitioning.partition_count() > 1 {
            Arc::new(CoalescePartitionsExec::new(plan))
        } else {
            plan
        };
        let n = self
            .jobs_run
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}-{n}", self.session_id);
        let config = self.config.clone().with_ballista_job_name(&name);
        let codec = physical_codec();
        let job = async {
            let stream = execute_physical_plan::<PhysicalPlanNode>(
                self.scheduler_url.clone(),
                &config.ballista_config(),
                plan,
                codec.as_ref(),
                self.session_id.clone(),
                config.clone(),
            )
            .await?;
            Ok(datafusion::physical_plan::common::collect(stream).await?)
        };
        if let Some(stopped) = &self.embedded_stopped {
            // Nothing of an in-process cluster is lost while it runs; if it stops, it is gone.
            let mut stopped = stopped.clone();
            return tokio::select! {
                done = job => done,
                why = stopped.wait_for(Option::is_some) => Err(JobError::Cluster(format!(
                    "the embedded cluster stopped during the job: {}",
                    why.ok().and_then(|w| w.clone()).unwrap_or_else(|| "its runtime ended".into())
                ))),
            };
        }
        tokio::select! {
            done = job => done,
            stalled = self.watch(&name) => Err(stalled),
        }
    }

    /// Returns (after cancelling it) when job `name` is stalled: still running, none of its
    /// tasks running and nothing changed for [`STALL_S`] seconds when some failed with a lost
    /// executor ([`QUEUED_STALL_S`] when none did). Ballista 55 left jobs so after an executor
    /// loss (the slots of cancelled tasks never given back; our scheduler is built with that
    /// fixed, see `vendor/README.md`), and a client would wait forever: a safety net for what
    /// else may do it. A stalled job fails instead, and [`Cluster::run`] submits it again when
    /// retries are allowed.
    async fn watch(&self, name: &str) -> JobError {
        let mut seen: Option<(String, Vec<String>)> = None;
        let mut since = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let Ok(jobs) = self.jobs().await else {
                continue;
            };
            let Some(job) = jobs.into_iter().find(|j| j.job_name == name) else {
                continue;
            };
            let Ok(tasks) = self.job_tasks(&job.job_id).await else {
                continue;
            };
            let states: Vec<String> = tasks.iter().map(|t| t.status.to_string()).collect();
            let idle = job.status == "Running" && !tasks.iter().any(TaskRun::running);
            let now = Some((job.status.clone(), states));
            if !idle || now != seen {
                seen = now;
                since = std::time::Instant::now();
                continue;
            }
            let lost = tasks.iter().any(|t| t.status.get("Failed").is_some());
            let limit = if lost { STALL_S } else { QUEUED_STALL_S };
            if since.elapsed() >= Duration::from_secs(limit) {
                let _ = reqwest::Client::new()
                    .patch(format!("{}/api/job/{}", self.scheduler_url, job.job_id))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                return JobError::Cluster(format!(
                    "Ballista job {} on {} stalled: no task of it ran for {limit} s{}; cancelled \
                     it (if this repeats, restart the scheduler)",
                    job.job_id,
                    self.display_url,
                    if lost {
                        " after tasks were lost with an executor"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
}

/// How long a job may sit with failed tasks and none running before it counts as stalled
/// (twice the executor timeout: a lost executor's tasks are rescheduled once it times out).
pub const STALL_S: u64 = 2 * EXECUTOR_TIMEOUT_S;

/// How long a job may sit with no task running (and none failed) before it counts as stalled:
/// long enough to wait for another client's job on a shared cluster.
pub const QUEUED_STALL_S: u64 = 120;

/// What an in-process cluster is called in logs.
const EMBEDDED: &str = "embedded";

/// An executor as the scheduler's REST API (`GET /api/executors`) lists it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ExecutorInfo {
    pub id: String,
    pub host: String,
    pub port: u16,
    /// When its last heartbeat arrived, milliseconds since the Unix epoch.
    pub last_seen: Option<u64>,
    pub specification: ExecutorSlots,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ExecutorSlots {
    /// Task slots: tasks it runs at once.
    pub vcores: u32,
}

/// A job as the scheduler's REST API (`GET /api/jobs`) lists it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct JobInfo {
    pub job_id: String,
    #[serde(default)]
    pub job_name: String,
    /// `Queued`, `Running`, `Completed` or `Failed`.
    pub status: String,
    /// The status with its detail (elapsed time, failure).
    #[serde(default)]
    pub job_status: String,
    #[serde(default)]
    pub num_stages: u64,
    #[serde(default)]
    pub completed_stages: u64,
}

#[derive(Debug, serde::Deserialize)]
struct JobStages {
    stages: Vec<StageTasks>,
}

#[derive(Debug, serde::Deserialize)]
struct StageTasks {
    #[serde(default)]
    tasks: Vec<Option<TaskRun>>,
}

/// One task of a job as the scheduler reports it (times in milliseconds since the Unix epoch).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TaskRun {
    /// `"Running"`, `"Successful"` or `{"Failed": {"reason", "error"}}`.
    pub status: serde_json::Value,
    pub start_exec_time: u64,
    pub end_exec_time: u64,
    /// Execution time on its executor, in milliseconds.
    pub exec_duration: u64,
}

impl TaskRun {
    pub fn running(&self) -> bool {
        self.status == "Running"
    }
}

/// The most tasks of `tasks` that ran at the same moment.
pub fn peak_concurrency(tasks: &[TaskRun]) -> usize {
    let mut edges: Vec<(u64, i32)> = tasks
        .iter()
        .filter(|t| t.end_exec_time >= t.start_exec_time && t.start_exec_time > 0)
        .flat_map(|t| [(t.start_exec_time, 1), (t.end_exec_time, -1)])
        .collect();
    // An end before a start at the same millisecond: touching tasks did not overlap.
    edges.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        peak = peak.max(now);
    }
    peak as usize
}

/// `GET <scheduler>/api/<what>`, as JSON.
async fn rest<T: serde::de::DeserializeOwned>(
    grpc_url: &str,
    shown: &str,
    what: &str,
) -> Result<T, JobError> {
    let url = format!("{grpc_url}/api/{what}");
    let failed = |e: reqwest::Error| {
        JobError::Cluster(format!(
            "cannot list the {what} of the Ballista scheduler at {shown} ({url}): {e}"
        ))
    };
    let body = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(failed)?
        .bytes()
        .await
        .map_err(failed)?;
    serde_json::from_slice(&body).map_err(|e| {
        JobError::Cluster(format!(
            "the Ballista scheduler at {shown} answered {url} with unexpected JSON: {e}"
        ))
    })
}

/// The scheduler's gRPC endpoint (`http://host:port`, port 50050 when not given) for a
/// scheduler URL such as `df://host:port`; the scheduler serves gRPC, its REST API and Flight
/// SQL on that one port.
pub fn scheduler_endpoint(url: &str) -> Result<String, JobError> {
    let parsed = url::Url::parse(url)
        .map_err(|e| JobError::Cluster(format!("invalid scheduler URL `{url}`: {e}")))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| JobError::Cluster(format!("scheduler URL `{url}` has no host")))?;
    Ok(format!("http://{host}:{}", parsed.port().unwrap_or(50050)))
}

/// The task slots of the executors registered with the scheduler, once there is one (a
/// scheduler that does not answer yet is asked again until [`CONNECT_TIMEOUT`]).
async fn registered_slots(grpc_url: &str, shown: &str) -> Result<usize, JobError> {
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let executors: Vec<ExecutorInfo> = match rest(grpc_url, shown, "executors").await {
            Ok(executors) => executors,
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let slots: usize = executors
            .iter()
            .map(|e| e.specification.vcores as usize)
            .sum();
        if slots > 0 {
            tracing::info!(
                executors = executors.len(),
                slots,
                scheduler = shown,
                "planning for the cluster's task slots"
            );
            return Ok(slots);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JobError::Cluster(format!(
                "no executor registered with the Ballista scheduler at {shown} within \
                 {CONNECT_TIMEOUT:?}: start one (`recsys executor --scheduler-host …`)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts an embedded scheduler and executor on free loopback ports; returns the scheduler's
/// gRPC URL once the executor has registered, and a channel that says why once one of them
/// stopped. Either task stopping while starting (a port taken meanwhile) ends the wait at once
/// with its error, and stops the other task.
async fn start_embedded(
    s3: &S3Options,
    vcores: usize,
) -> Result<(String, tokio::sync::watch::Receiver<Option<String>>), JobError> {
    use ballista_core::config::TaskSchedulingPolicy::PushStaged;
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    use ballista_scheduler::config::SchedulerConfig;
    let io =
        |e: std::io::Error| JobError::Cluster(format!("cannot start the embedded cluster: {e}"));
    let scheduler_port = free_port().map_err(io)?;
    let mut scheduler = SchedulerConfig::default().with_scheduler_policy(PushStaged);
    scheduler.bind_host = "127.0.0.1".into();
    scheduler.external_host = "127.0.0.1".into();
    scheduler.bind_port = scheduler_port;
    // An executor in this process cannot be lost, but Ballista judges liveness by wall-clock
    // heartbeat times: a clock that jumps ahead (an NTP step, a laptop waking from sleep) would
    // expire it and stop it for good. So it never times out.
    // Nor do its jobs give up on it (if it stops, `Cluster::run_once` hears why and fails them).
    scheduler.executor_timeout_seconds = EMBEDDED_EXECUTOR_TIMEOUT_S;
    scheduler.expire_dead_executor_interval_seconds = EXPIRE_CHECK_S;
    scheduler.no_executors_grace_period_seconds = EMBEDDED_EXECUTOR_TIMEOUT_S;
    crate::registry::configure_scheduler(&mut scheduler, s3, None);
    let cluster = ballista_scheduler::cluster::BallistaCluster::new_from_config(&scheduler).await?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], scheduler_port));
    let mut scheduler_task = AbortOnDrop(tokio::spawn(async move {
        ballista_scheduler::scheduler_process::start_server(cluster, addr, Arc::new(scheduler))
            .await
            .map_err(|e| stopped("scheduler", e))
    }));
    let url = format!("http://127.0.0.1:{scheduler_port}");
    tokio::select! {
        connected = connect(&url, "embedded scheduler") => { connected?; }
        stopped = &mut scheduler_task.0 => return Err(stopped_early("scheduler", stopped)),
    }

    let work = tempfile::tempdir().map_err(io)?;
    // The shuffle (Flight) port is bound here, before the executor starts: Ballista binds it
    // only after registering, and a port picked free a moment before can be taken by then
    // (an outgoing connection's), which stops the executor after it registered.
    let flight = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let flight_port = flight.local_addr().map_err(io)?.port();
    let mut executor = ExecutorProcessConfig {
        bind_host: "127.0.0.1".into(),
        external_host: Some("127.0.0.1".into()),
        port: flight_port,
        grpc_port: free_port().map_err(io)?,
        scheduler_host: "127.0.0.1".into(),
        scheduler_port,
        scheduler_connect_timeout_seconds: 15,
        vcores,
        task_scheduling_policy: PushStaged,
        executor_heartbeat_interval_seconds: HEARTBEAT_S,
        work_dir: Some(work.path().to_string_lossy().into_owned()),
        ..ExecutorProcessConfig::default()
    };
    crate::registry::configure_executor(&mut executor, s3)?;
    executor.override_arrow_flight_service = Some(flight_service(
        flight,
        executor.grpc_max_encoding_message_size as usize,
        executor.grpc_max_decoding_message_size as usize,
    ));
    let health = executor.health.clone();
    let mut executor_task = AbortOnDrop(tokio::spawn(async move {
        let _work = work;
        start_executor_process(Arc::new(executor))
            .await
            .map_err(|e| stopped("executor", e))
    }));
    let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
    while !health.is_ready() {
        if executor_task.0.is_finished() {
            return Err(stopped_early("executor", (&mut executor_task.0).await));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(JobError::Cluster(
                "the embedded executor did not register in time".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both run for the rest of the process; if one stops, the cluster's jobs hear why.
    let (stop, stopped) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let why = tokio::select! {
            r = &mut scheduler_task.0 => format!("its scheduler: {}", why_stopped(r)),
            r = &mut executor_task.0 => format!("its executor: {}", why_stopped(r)),
        };
        let _ = stop.send(Some(why));
    });
    Ok((url, stopped))
}

/// The embedded executor's Flight service (shuffle reads) on `listener`, already bound, with
/// what Ballista's own would do otherwise.
fn flight_service(
    listener: std::net::TcpListener,
    max_encoding: usize,
    max_decoding: usize,
) -> Arc<ballista_executor::ArrowFlightServerProvider> {
    use arrow_flight::flight_service_server::FlightServiceServer;
    use ballista_core::error::BallistaError;
    use ballista_executor::flight_service::BallistaFlightService;
    let listener = std::sync::Mutex::new(Some(listener));
    Arc::new(move |work_dir, _address, mut shutdown, grpc| {
        let listener = listener.lock().ok().and_then(|mut l| l.take());
        tokio::spawn(async move {
            let listener = listener
                .ok_or_else(|| BallistaError::General("the Flight service started twice".into()))?;
            listener.set_nonblocking(true)?;
            // tonic sets no option on a listener it did not bind: without TCP_NODELAY
            // every result fetch waited ~40 ms for the client's delayed ACK.
            let incoming = tonic::transport::server::TcpIncoming::from(
                tokio::net::TcpListener::from_std(listener)?,
            )
            .with_nodelay(Some(true));
            ballista_core::utils::create_grpc_server(&grpc)
                .add_service(
                    FlightServiceServer::new(BallistaFlightService::new(work_dir))
                        .max_decoding_message_size(max_decoding)
                        .max_encoding_message_size(max_encoding),
                )
                .serve_with_incoming_shutdown(incoming, shutdown.recv())
                .await
                .map_err(BallistaError::TonicError)
        })
    })
}

/// A task that is stopped when the handle is dropped (a failed start leaves nothing running).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs why an embedded task stopped (it may be long after the start, when nobody awaits it)
/// and returns the reason.
fn stopped(what: &str, error: impl std::fmt::Display) -> String {
    tracing::error!("embedded {what} stopped: {error}");
    error.to_string()
}

fn stopped_early(what: &str, result: EmbeddedEnd) -> JobError {
    JobError::Cluster(format!(
        "the embedded {what} stopped while starting: {}",
        why_stopped(result)
    ))
}

/// How an embedded scheduler's or executor's task ended.
type EmbeddedEnd = Result<Result<(), String>, tokio::task::JoinError>;

fn why_stopped(result: EmbeddedEnd) -> String {
    match result {
        Ok(Ok(())) => "stopped".to_string(),
        Ok(Err(e)) => e,
        Err(e) => e.to_string(),
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

/// A Ballista cluster of separate processes on 127.0.0.1: one scheduler and `executors`
/// executors of a recsys binary (`recsys scheduler` / `recsys executor`), each executor with
/// one task slot and its own work folder. Used by the tests and the benchmarks; the processes
/// are killed when this is dropped.
pub struct ProcessCluster {
    url: String,
    children: Vec<std::process::Child>,
    _work: tempfile::TempDir,
}

impl ProcessCluster {
    pub fn start(binary: &std::path::Path, executors: usize) -> Result<ProcessCluster, JobError> {
        let io =
            |e: std::io::Error| JobError::Cluster(format!("cannot start a local cluster: {e}"));
        let work = tempfile::tempdir().map_err(io)?;
        let port = free_port().map_err(io)?;
        let spawn =
            |args: Vec<String>, log: &std::path::Path| -> Result<std::process::Child, JobError> {
                std::process::Command::new(binary)
                    .args(args)
                    .env("RECSYS_LOG", "warn")
                    .stdout(std::process::Stdio::null())
                    .stderr(std::fs::File::create(log).map_err(io)?)
                    .spawn()
                    .map_err(io)
            };
        let mut cluster = ProcessCluster {
            url: format!("df://127.0.0.1:{port}"),
            children: Vec::new(),
            _work: work,
        };
        let dir = cluster._work.path().to_path_buf();
        cluster.children.push(spawn(
            scheduler_args("127.0.0.1", "127.0.0.1", port),
            &dir.join("scheduler.log"),
        )?);
        let mut health = Vec::new();
        for i in 0..executors {
            let work_dir = dir.join(format!("executor-{i}"));
            std::fs::create_dir_all(&work_dir).map_err(io)?;
            let health_port = free_port().map_err(io)?;
            let mut args =
                executor_args(("127.0.0.1", port), "127.0.0.1", "127.0.0.1", 1, &work_dir);
            args.extend([
                "--bind-port".to_string(),
                free_port().map_err(io)?.to_string(),
                "--bind-grpc-port".to_string(),
                free_port().map_err(io)?.to_string(),
                "--bind-health-port".to_string(),
                health_port.to_string(),
            ]);
            cluster
                .children
                .push(spawn(args, &dir.join(format!("executor-{i}.log")))?);
            health.push(health_port);
        }
        for port in health {
            wait_ready(port, Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    /// `df://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The arguments of `recsys scheduler` listening on `bind_host:port` and known to executors
/// as `external_host`, with the push-staged policy every recsys cluster uses.
pub fn scheduler_args(bind_host: &str, external_host: &str, port: u16) -> Vec<String> {
    [
        "scheduler",
        "--bind-host",
        bind_host,
        "--external-host",
        external_host,
        "--bind-port",
        &port.to_string(),
        "--scheduler-policy",
        "push-staged",
    ]
    .map(String::from)
    .to_vec()
}

/// The arguments of `recsys executor` for the scheduler at `(host, port)`, listening on
/// `bind_host` and reachable at `external_host`, with `vcores` task slots and its own work
/// folder (Ballista's default ports unless more arguments follow).
pub fn executor_args(
    (scheduler_host, scheduler_port): (&str, u16),
    bind_host: &str,
    external_host: &str,
    vcores: usize,
    work_dir: &std::path::Path,
) -> Vec<String> {
    [
        "executor",
        "--scheduler-host",
        scheduler_host,
        "--scheduler-port",
        &scheduler_port.to_string(),
        "--scheduler-connect-timeout-seconds",
        "30",
        "--bind-host",
        bind_host,
        "--external-host",
        external_host,
        "--vcores",
        &vcores.to_string(),
        "--work-dir",
        &work_dir.to_string_lossy(),
        "--task-scheduling-policy",
        "push-staged",
    ]
    .map(String::from)
    .to_vec()
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until an executor's `/readyz` answers 200 (it has registered with the scheduler).
fn wait_ready(port: u16, timeout: Duration) -> Result<(), JobError> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(s, "GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(JobError::Cluster(format!(
                "executor on port {port} not ready within {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_that_comes_out_wrong_is_done_again_and_fails_after_three_attempts() {
        let mut tries = 0;
        let written = checked_write("blocks", || {
            tries += 1;
            let n = tries;
            async move {
                Ok(if n < 3 {
                    Err(format!("try {n} doubled"))
                } else {
                    Ok(n)
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(written, 3);

        let mut tries = 0;
        let err = checked_write("blocks", || {
            tries += 1;
            let n = tries;
            async move {
                Ok::<Result<(), String>, JobError>(Err(format!("{n} rows written, 1 expected")))
            }
        })
        .await
        .unwrap_err();
        assert_eq!(tries, 3);
        assert!(
            matches!(&err, JobError::Invariant(m) if m == "blocks: 3 rows written, 1 expected, after 3 attempts"),
            "{err}"
        );
    }

    fn task(start: u64, end: u64) -> TaskRun {
        TaskRun {
            status: "Successful".into(),
            start_exec_time: start,
            end_exec_time: end,
            exec_duration: end - start,
        }
    }

    #[test]
    fn peak_concurrency_counts_overlapping_tasks_only() {
        assert_eq!(peak_concurrency(&[]), 0);
        // Three at once in 20..30; the fourth starts as the first ends.
        let tasks = [task(10, 30), task(20, 40), task(20, 35), task(30, 50)];
        assert_eq!(peak_concurrency(&tasks), 3);
        // Back to back on one slot.
        assert_eq!(peak_concurrency(&[task(1, 2), task(2, 3), task(3, 4)]), 1);
        // A task never started (time 0) is not counted.
        assert_eq!(peak_concurrency(&[task(0, 0), task(5, 6)]), 1);
    }
}
