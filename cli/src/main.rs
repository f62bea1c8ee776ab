//! `recsys`: one command for the whole platform. Every flag also reads an environment variable
//! (`RECSYS_…`; Ballista's own scheduler and executor flags as `RECSYS_SCHEDULER_…` and
//! `RECSYS_EXECUTOR_…`).

mod als;
mod bench;
mod bench_cluster;
mod bench_embed;
mod bench_etl;
mod bench_ingest;
mod bench_orchestrate;
mod bench_serve;
mod catalog;
mod cluster;
mod data;
mod docs;
mod lyrics;
mod netns;
mod orchestrate;
mod peers;
mod pipeline;
mod progress;
mod serve;
mod sql;
mod stream;
mod submit;

use anyhow::Result;
use clap::{ArgMatches, Args, Command, CommandFactory, FromArgMatches, Parser, Subcommand};
use recsys_core::{S3Options, Store};
use tracing_subscriber::EnvFilter;

/// mimalloc: serving's many small allocations spent ~15 % of its time in glibc's malloc.
/// Built without transparent huge pages (`no_thp`): with THP on (this kernel's default),
/// every fresh allocator page faulted in and zeroed a whole 2 MB page, 27 % of the embedded
/// ingest path's time in the kernel's `clear_page`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "recsys",
    version,
    about = "Music recommendations from listening logs, end to end"
)]
struct Cli {
    #[command(flatten)]
    lake: LakeArgs,
    #[command(subcommand)]
    command: Commands,
}

/// Where the lake lives and how to reach it.
#[derive(Debug, Clone, Args)]
pub struct LakeArgs {
    /// The lake: a local folder, or `s3://bucket/prefix` for MinIO/S3.
    #[arg(
        long = "object-store",
        visible_alias = "data-dir",
        env = "RECSYS_OBJECT_STORE",
        default_value = "./data",
        global = true
    )]
    pub location: String,
    #[command(flatten)]
    pub s3: S3Options,
}

impl LakeArgs {
    pub fn open(&self) -> Result<Store> {
        Ok(Store::open(&self.location, &self.s3)?)
    }
}

/// Where batch jobs run.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Ballista scheduler, e.g. `df://scheduler:50050`; without it jobs run on an embedded cluster.
    #[arg(long, env = "RECSYS_SCHEDULER")]
    pub scheduler: Option<String>,
    /// Task slots to plan for. 0: the embedded cluster gets this machine's cores, a remote one
    /// is asked for the slots of the executors registered with it.
    #[arg(long, env = "RECSYS_VCORES", default_value_t = 0)]
    pub vcores: usize,
    /// Every executor of the remote cluster mounts the lake's local folder at the same path (one
    /// machine, or a shared file system). Without it a remote cluster only takes an S3 lake.
    #[arg(long, env = "RECSYS_SHARED_LAKE")]
    pub shared_lake: bool,
    /// Times a failed Ballista job is submitted again, once the scheduler has executors (a
    /// scheduler restarted mid-job forgets it). A step of several jobs resumes at the failed one:
    /// ALS at its last completed iteration.
    #[arg(long, env = "RECSYS_JOB_RETRIES", default_value_t = 2)]
    pub retries: usize,
}

impl ClusterArgs {
    pub fn config(&self, s3: &S3Options) -> recsys_flow::ClusterConfig {
        recsys_flow::ClusterConfig {
            scheduler: self.scheduler.clone(),
            vcores: self.vcores,
            shared_lake: self.shared_lake,
            retries: self.retries,
            s3: s3.clone(),
        }
    }

    pub async fn connect(&self, s3: &S3Options) -> Result<recsys_jobs::Cluster> {
        Ok(self.config(s3).connect().await?)
    }
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run the whole pipeline on the embedded default and print what it did.
    Pipeline(pipeline::PipelineArgs),
    /// Get listening data: generate a synthetic log or fetch the real Last.fm-1K.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Submit a batch job to the cluster (embedded unless --scheduler is given).
    #[command(subcommand)]
    Submit(submit::SubmitCommand),
    /// Look at the song and user catalog, or load the latest ETL output into it.
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Look up lyrics (LRCLIB or the offline file), or remove songs without lyrics.
    #[command(subcommand)]
    Lyrics(lyrics::LyricsCommand),
    /// Embed texts with all-MiniLM-L6-v2 and print token ids and vectors.
    #[command(subcommand)]
    Embed(lyrics::EmbedCommand),
    /// Show a cluster's executors, their task slots, and its jobs.
    Cluster(cluster::ClusterCommand),
    /// Run a Ballista scheduler with recsys functions (all standard Ballista flags); it serves
    /// Arrow Flight SQL over the lake's tables unless `--flight-sql false`.
    Scheduler(SchedulerCommand),
    /// Run SQL over the lake's tables on the cluster (Arrow Flight SQL on the scheduler).
    Sql(sql::SqlArgs),
    /// Run a Ballista executor with recsys functions (all standard Ballista flags).
    Executor(ExecutorCommand),
    /// Replay the sorted listens in time order into Kafka, an ingest service, or the embedded log.
    Replay(stream::ReplayArgs),
    /// Run the gRPC ingest service (events to Kafka, or to the embedded log).
    Ingest(stream::IngestArgs),
    /// Consume Kafka into `events/date=…/` Parquet, exactly once.
    Sink(stream::SinkArgs),
    /// The gRPC recommendation service (home feed, next songs, search, users, event logging).
    Serve(serve::ServeArgs),
    /// Checks a live recommendation service end to end and prints a pass/fail table.
    Verify(serve::VerifyArgs),
    /// Keep play counts, the 7-day window, the event files and the model current, unattended
    /// (`--serve`: and serve from the same process; `--once JOB`: run one job and exit).
    Orchestrate(Box<orchestrate::OrchestrateArgs>),
    /// The orchestrator's jobs, the model, catalog counts and event lag (--json for scripts).
    Status(orchestrate::StatusArgs),
    /// Measure a step against its peers (Spark, DuckDB, implicit, PyTorch) run beside it.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Print reference documentation generated from the code (docs/configuration.md).
    #[command(subcommand)]
    Docs(docs::DocsCommand),
}

#[derive(Debug, Args)]
struct SchedulerCommand {
    #[command(flatten)]
    ballista: recsys_scheduler::SchedulerArgs,
}

#[derive(Debug, Args)]
struct ExecutorCommand {
    #[command(flatten)]
    ballista: recsys_executor::ExecutorArgs,
}

/// Gives every flag of `sub` that has no environment variable yet one named `PREFIX_FLAG_NAME`.
fn env_for_all_flags(sub: Command, prefix: &str) -> Command {
    let prefix = prefix.to_string();
    sub.mut_args(move |arg| {
        if arg.get_env().is_some() || arg.is_positional() || arg.get_long().is_none() {
            return arg;
        }
        let name = format!(
            "{prefix}_{}",
            arg.get_id().as_str().to_uppercase().replace('-', "_")
        );
        arg.env(name)
    })
}

/// The command, with our environment variables for Ballista's flags and failure detection that
/// fits a small cluster (`recsys_jobs::cluster::HEARTBEAT_S` and its siblings) as their defaults.
fn command() -> Command {
    use recsys_jobs::cluster::{EXECUTOR_TIMEOUT_S, EXPIRE_CHECK_S, HEARTBEAT_S};
    let default = |value: u64| move |a: clap::Arg| a.default_value(value.to_string());
    Cli::command()
        .mut_subcommand("scheduler", |c| {
            env_for_all_flags(c, "RECSYS_SCHEDULER")
                // SQL over the lake on by default; `--flight-sql false` turns it off.
                .mut_arg("flight_sql", |a| {
                    a.action(clap::ArgAction::Set)
                        .num_args(1)
                        .default_value("true")
                })
                .mut_arg("executor_timeout_seconds", default(EXECUTOR_TIMEOUT_S))
                .mut_arg(
                    "expire_dead_executor_interval_seconds",
                    default(EXPIRE_CHECK_S),
                )
        })
        .mut_subcommand("executor", |c| {
            env_for_all_flags(c, "RECSYS_EXECUTOR")
                .mut_arg("executor_heartbeat_interval_seconds", default(HEARTBEAT_S))
        })
}

fn parse() -> Result<Cli> {
    let matches: ArgMatches = command().get_matches();
    Ok(Cli::from_arg_matches(&matches)?)
}

fn init_tracing() {
    let filter = EnvFilter::try_from_env("RECSYS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,ballista=warn,ballista_scheduler=warn,ballista_executor=warn,ballista_core=error,datafusion=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for people at a terminal, plain text for log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .compact()
        .init();
}

fn main() -> Result<()> {
    let cli = parse()?;
    init_tracing();
    // Ballista's planner recurses deeply on big plans: give the runtime threads room.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 << 20)
        .build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Commands::Pipeline(args) => pipeline::run(&cli.lake, args).await,
        Commands::Data(cmd) => data::run(&cli.lake, cmd).await,
        Commands::Submit(cmd) => submit::run(&cli.lake, cmd).await,
        Commands::Catalog(cmd) => catalog::run(&cli.lake, cmd).await,
        Commands::Lyrics(cmd) => lyrics::run(&cli.lake, cmd).await,
        Commands::Embed(cmd) => lyrics::run_embed_command(cmd).await,
        Commands::Cluster(args) => cluster::run(&cli.lake, args).await,
        Commands::Scheduler(cmd) => {
            Ok(recsys_scheduler::run(cmd.ballista, &cli.lake.s3, Some(cli.lake.open()?)).await?)
        }
        Commands::Sql(args) => sql::run(&args).await,
        Commands::Executor(cmd) => Ok(recsys_executor::run(cmd.ballista, &cli.lake.s3).await?),
        Commands::Replay(args) => stream::run_replay(&cli.lake, &args).await.map(|_| ()),
        Commands::Ingest(args) => stream::run_ingest(&cli.lake, &args).await,
        Commands::Sink(args) => stream::run_sink_command(&cli.lake, &args).await.map(|_| ()),
        Commands::Serve(args) => serve::run_serve(&cli.lake, &args).await,
        Commands::Verify(args) => serve::run_verify(&cli.lake, &args).await,
        Commands::Orchestrate(args) => orchestrate::run(&cli.lake, *args).await,
        Commands::Status(args) => orchestrate::status(&cli.lake, args).await,
        Commands::Bench(cmd) => bench::run(&cli.lake, cmd).await,
        Commands::Docs(cmd) => {
            docs::run(cmd);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn ballista_flags_read_env() {
        let cmd = command();
        let exec = cmd.find_subcommand("executor").unwrap();
        let port = exec
            .get_arguments()
            .find(|a| a.get_id() == "scheduler_port")
            .unwrap();
        assert_eq!(port.get_env().unwrap(), "RECSYS_EXECUTOR_SCHEDULER_PORT");
        let sched = cmd.find_subcommand("scheduler").unwrap();
        assert!(
            sched
                .get_arguments()
                .all(|a| a.is_positional() || a.get_long().is_none() || a.get_env().is_some())
        );
    }
}
