//! `recsys bench …`: measured figures, each beside its peers (Spark, DuckDB, `implicit`,
//! sentence-transformers) run in the same run on the same files (see [`crate::peers`]).

use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand};
use recsys_core::schema::RAW_DIR;
use recsys_datasets::generate::LISTENS_FILE;

use crate::data::{GenerateArgs, generate};
use crate::peers::Peer;
use crate::submit::{clean, clean_input, sort};
use crate::{ClusterArgs, LakeArgs};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// generate → clean → sort at several sizes: rows/s and peak memory per step, beside Spark
    /// and DuckDB cleaning and sorting the same file.
    Pipeline(PipelineBench),
    /// Implicit ALS: seconds per iteration, GFLOP/s and NDCG@10, embedded and on a local
    /// cluster of executor processes, beside the `implicit` library and Spark MLlib on the same
    /// split.
    Als(AlsBench),
    /// Streaming: replay at full speed into the embedded log and, with --kafka, through a
    /// broker into the sink; events/s end to end, producer- and sink-side, and peak memory.
    Ingest(crate::bench_ingest::IngestBench),
    /// Master-data ETL (songs and users to Parquet) against Spark and DuckDB, and the catalog
    /// load in documents/s.
    Etl(crate::bench_etl::EtlBench),
    /// MiniLM-L6 lyrics embeddings: texts/s at 256 tokens per batch size, against
    /// sentence-transformers (PyTorch) on the same texts.
    Embed(crate::bench_embed::EmbedBench),
    /// Serving: HomeFeed and NextSongs at fixed concurrency against `recsys serve` (its own
    /// process): QPS, p50/p95/p99 latency and errors.
    Serve(crate::bench_serve::ServeBench),
    /// The cluster on separate hosts (network namespaces): clean+sort and one ALS iteration on
    /// 1, 2 and 3 executors beside the embedded run (wall and CPU time, tasks, tasks at once),
    /// the time from an executor's loss to the job's end, and embedding throughput through the
    /// cluster against embedded. Needs root.
    Cluster(crate::bench_cluster::ClusterBench),
    /// The orchestrator's jobs on a lake's events: the counts job (seconds per M events, peak
    /// memory), and the ETL and ALS preparation before and after compaction.
    Orchestrate(crate::bench_orchestrate::OrchestrateBench),
}

#[derive(Debug, Args)]
pub struct AlsBench {
    /// Rows of the generated log to train on (generated, cleaned and sorted when missing).
    #[arg(long, env = "RECSYS_BENCH_ROWS", default_value_t = 2_000_000)]
    pub rows: u64,
    /// Executor processes of the local cluster run (0: embedded only).
    #[arg(long, env = "RECSYS_BENCH_EXECUTORS", default_value_t = 2)]
    pub executors: usize,
    /// Leave out the `implicit` library (Python package) on the same split.
    #[arg(long, env = "RECSYS_BENCH_NO_IMPLICIT")]
    pub no_implicit: bool,
    /// Leave out Spark MLlib's ALS on the same split.
    #[arg(long, env = "RECSYS_BENCH_NO_SPARK")]
    pub no_spark: bool,
    #[command(flatten)]
    pub python: crate::peers::PeerPython,
    #[command(flatten)]
    pub als: crate::als::AlsArgs,
}

#[derive(Debug, Args)]
pub struct PipelineBench {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub sizes: Sizes,
}

/// The sizes a benchmark measures, and the SQL peers that run beside it.
#[derive(Debug, Args)]
pub struct Sizes {
    /// Row counts of the generated log to measure (comma separated).
    #[arg(
        long,
        env = "RECSYS_BENCH_ROWS",
        value_delimiter = ',',
        default_value = "2000000,20000000"
    )]
    pub rows: Vec<u64>,
    #[command(flatten)]
    pub peers: crate::peers::SqlPeers,
}

/// Peak resident memory since the last [`reset_peak_memory`], in MB (Linux; 0 elsewhere).
pub fn peak_memory_mb() -> u64 {
    peak_memory_mb_of("self")
}

/// Peak resident memory of process `pid` (`self`: this one), in MB.
pub fn peak_memory_mb_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb / 1024)
        .unwrap_or(0)
}

pub fn reset_peak_memory() {
    // Writing 5 to clear_refs resets VmHWM to the current RSS.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Measured {
    step: &'static str,
    secs: f64,
    rows: u64,
    start_mb: u64,
    peak_mb: u64,
}

async fn measure<T, F: std::future::Future<Output = Result<T>>>(
    step: &'static str,
    rows: impl Fn(&T) -> u64,
    f: F,
) -> Result<(T, Measured)> {
    reset_peak_memory();
    let start_mb = peak_memory_mb();
    let t = Instant::now();
    let out = f.await?;
    let secs = t.elapsed().as_secs_f64();
    let m = Measured {
        step,
        secs,
        rows: rows(&out),
        start_mb,
        peak_mb: peak_memory_mb(),
    };
    Ok((out, m))
}

pub async fn run(lake_args: &LakeArgs, cmd: BenchCommand) -> Result<()> {
    crate::peers::print_context(match &cmd {
        BenchCommand::Pipeline(_) => "pipeline",
        BenchCommand::Als(_) => "als",
        BenchCommand::Ingest(_) => "ingest",
        BenchCommand::Etl(_) => "etl",
        BenchCommand::Embed(_) => "embed",
        BenchCommand::Serve(_) => "serve",
        BenchCommand::Cluster(_) => "cluster",
        BenchCommand::Orchestrate(_) => "orchestrate",
    });
    match cmd {
        BenchCommand::Pipeline(args) => pipeline(lake_args, args).await,
        BenchCommand::Als(args) => als(lake_args, args).await,
        BenchCommand::Ingest(args) => crate::bench_ingest::run(lake_args, args).await,
        BenchCommand::Etl(args) => crate::bench_etl::run(lake_args, args).await,
        BenchCommand::Embed(args) => crate::bench_embed::run(args).await,
        BenchCommand::Serve(args) => crate::bench_serve::run(lake_args, args).await,
        BenchCommand::Cluster(args) => crate::bench_cluster::run(lake_args, args).await,
        BenchCommand::Orchestrate(args) => crate::bench_orchestrate::run(lake_args, args).await,
    }
}

/// The generated log every benchmark uses, at `rows` rows.
fn bench_config(rows: u64) -> recsys_datasets::GenerateConfig {
    GenerateArgs {
        users: 1000,
        tracks: 50_000,
        events: rows,
        seed: 42,
        groups: 20,
    }
    .config()
}

/// An embedded cluster with this machine's cores.
pub async fn embedded_cluster(lake_args: &LakeArgs) -> Result<recsys_jobs::Cluster> {
    ClusterArgs {
        scheduler: None,
        vcores: 0,
        shared_lake: false,
        retries: 0,
    }
    .connect(&lake_args.s3)
    .await
}

/// `bench/<rows>/` of the lake, with a generated log of `rows` rows cleaned and sorted (made
/// when missing, reused otherwise).
pub async fn sorted_bench_lake(lake_args: &LakeArgs, rows: u64) -> Result<recsys_core::Store> {
    let lake = lake_args.open()?.child(&format!("bench/{rows}"));
    if recsys_jobs::lake::list(
        lake.object_store().as_ref(),
        &lake.path(recsys_core::schema::SORTED_DIR),
    )
    .await?
    .is_empty()
    {
        let embedded = embedded_cluster(lake_args).await?;
        let raw = lake.child(RAW_DIR);
        let config = bench_config(rows);
        generate(&config, &raw).await?;
        let input = clean_input(lake_args, &lake, Some(raw.location())).await?;
        clean(&embedded, &input, &lake).await?;
        sort(&embedded, &lake, None).await?;
    }
    Ok(lake)
}

async fn als(lake_args: &LakeArgs, args: AlsBench) -> Result<()> {
    use recsys_jobs::als::flops_per_iteration;
    let lake = sorted_bench_lake(lake_args, args.rows).await?;
    let embedded = embedded_cluster(lake_args).await?;
    let als_args = args.als.clone();
    println!(
        "bench als: {} rows, rank {}, {} iterations, {:?}",
        args.rows,
        als_args.rank,
        als_args.iterations,
        als_args.params().solver
    );
    let mut runs = vec![(
        "embedded",
        crate::als::train(&embedded, &lake, &als_args).await?,
    )];
    let processes;
    if args.executors > 0 {
        processes = recsys_jobs::ProcessCluster::start(&std::env::current_exe()?, args.executors)?;
        // The processes run on this machine: they share the bench lake's folder.
        let remote = ClusterArgs {
            scheduler: Some(processes.url().to_string()),
            vcores: 0,
            shared_lake: true,
            retries: 0,
        }
        .connect(&lake_args.s3)
        .await?;
        runs.push((
            "cluster",
            crate::als::train(&remote, &lake, &als_args).await?,
        ));
    }
    println!(
        "  {:<26} {:>9} {:>9} {:>9} {:>9}",
        "run", "s/iter", "median", "GFLOP/s", "NDCG@10"
    );
    let mut embedded_secs = f64::NAN;
    for (name, s) in &runs {
        let mut secs: Vec<f64> = s.iterations.iter().map(|i| i.seconds).collect();
        let mean = secs.iter().sum::<f64>() / secs.len().max(1) as f64;
        secs.sort_by(f64::total_cmp);
        let median = secs.get(secs.len() / 2).copied().unwrap_or(f64::NAN);
        let flops = flops_per_iteration(
            &s.params,
            s.model.user_ids.len() as u64,
            s.model.item_ids.len() as u64,
            s.nnz,
        );
        let ndcg = s.evaluation.map_or(f64::NAN, |e| e.model.ndcg_at_10);
        let label = match *name {
            "cluster" => format!("cluster, {} executors", args.executors),
            _ => format!("embedded, {} slots", embedded.parallelism()),
        };
        println!(
            "  {label:<26} {mean:>9.3} {median:>9.3} {:>9.2} {ndcg:>9.4}",
            flops / mean / 1e9
        );
        if *name == "embedded" {
            embedded_secs = mean;
            if let Some(e) = s.evaluation {
                println!(
                    "  {:<26} {:>9} {:>9} {:>9} {:>9.4}",
                    "popularity", "", "", "", e.popularity.ndcg_at_10
                );
            }
        } else {
            println!("  cluster / embedded time: {:.2}x", mean / embedded_secs);
        }
    }
    let peer_args = [
        lake.location().to_string(),
        als_args.rank.to_string(),
        als_args.iterations.to_string(),
        als_args.reg.to_string(),
        als_args.alpha.to_string(),
        embedded.parallelism().to_string(),
    ];
    let peers = [
        (Peer::Implicit, "implicit_als.py", args.no_implicit),
        (Peer::Spark, "spark_als.py", args.no_spark),
    ];
    for (peer, script, skip) in peers {
        if skip {
            continue;
        }
        let v = args.python.run(peer, script, &peer_args)?;
        let theirs = crate::peers::secs(&v, "seconds_per_iteration")?;
        println!(
            "  {:<26} {theirs:>9.3} {:>9} {:>9} {:>9.4}   recsys embedded {} faster per iteration",
            crate::peers::described(&v),
            "",
            "",
            v["ndcg_at_10"].as_f64().unwrap_or(f64::NAN),
            crate::peers::ratio(theirs, embedded_secs)
        );
    }
    Ok(())
}

async fn pipeline(lake_args: &LakeArgs, args: PipelineBench) -> Result<()> {
    let root = lake_args.open()?;
    let cluster = args.cluster.connect(&lake_args.s3).await?;
    println!(
        "bench pipeline on {} ({} task slots), lake {}",
        cluster.describe(),
        cluster.parallelism(),
        root.location()
    );
    for &rows in &args.sizes.rows {
        let lake = root.child(&format!("bench/{rows}"));
        let raw = lake.child(RAW_DIR);
        let config = bench_config(rows);
        let (manifest, gen_m) = measure(
            "generate",
            |m: &recsys_datasets::Manifest| m.lines,
            generate(&config, &raw),
        )
        .await?;
        // Let the kernel write the generated file back before timing the next step.
        let _ = std::process::Command::new("sync").status();
        let input = clean_input(lake_args, &lake, Some(raw.location())).await?;
        let (_, clean_m) = measure(
            "clean",
            |s: &recsys_jobs::clean::CleanSummary| s.lines,
            clean(&cluster, &input, &lake),
        )
        .await?;
        let (_, sort_m) = measure(
            "sort",
            |s: &recsys_jobs::sort::SortSummary| s.rows,
            sort(&cluster, &lake, None),
        )
        .await?;
        println!("\n{rows} rows ({} MB of TSV):", manifest.bytes / 1_000_000);
        println!(
            "  {:<9} {:>8} {:>12} {:>9} {:>9}",
            "step", "seconds", "rows/s", "start MB", "peak MB"
        );
        for m in [&gen_m, &clean_m, &sort_m] {
            println!(
                "  {:<9} {:>8.2} {:>12.0} {:>9} {:>9}",
                m.step,
                m.secs,
                m.rows as f64 / m.secs.max(1e-9),
                m.start_mb,
                m.peak_mb
            );
        }
        let scratch = tempfile::tempdir()?;
        let tsv = std::path::Path::new(raw.location()).join(LISTENS_FILE);
        let peers = args.sizes.peers.run(
            "spark_clean_sort.py",
            "duckdb_clean_sort.py",
            &[
                tsv.display().to_string(),
                scratch.path().display().to_string(),
                cluster.parallelism().to_string(),
            ],
        )?;
        crate::peers::print_comparison(
            &[
                ("clean", clean_m.secs, &["clean_s"]),
                ("sort", sort_m.secs, &["sort_s"]),
                (
                    "clean+sort",
                    clean_m.secs + sort_m.secs,
                    &["clean_s", "sort_s"],
                ),
            ],
            &peers,
        )?;
    }
    Ok(())
}
