//! `recsys bench cluster`: the batch jobs on clusters of 1, 2 and 3 executors, each executor on
//! its own host (a network namespace on a bridge, as the tests' cluster), beside the embedded
//! cluster on the same files: wall time, CPU time of every process involved, the tasks each run
//! made and how many ran at once; then the time from an executor's death (kill -9, and a link
//! taken down) to the job's completion; then embedding throughput embedded and through the
//! cluster on the same texts.
//!
//! On one machine the wall time cannot scale with executors; what this shows is that the work
//! is split by the slots the cluster has, and what the cluster costs over the embedded run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use recsys_core::Store;
use recsys_embed::job::{SHARDS_DIR, write_shard};
use recsys_jobs::Cluster;
use recsys_jobs::cluster::{TaskRun, executor_args, peak_concurrency, scheduler_args};
use recsys_vectors::Payload;

use crate::bench::{embedded_cluster, sorted_bench_lake};
use crate::lyrics::ModelArgs;
use crate::netns::{Host, Net, cpu_secs, kill9};
use crate::submit::{clean, clean_input, sort};
use crate::{ClusterArgs, LakeArgs};

const SCHEDULER_PORT: u16 = 50050;

#[derive(Debug, Args)]
pub struct ClusterBench {
    /// Rows of the generated log (generated, cleaned and sorted when missing).
    #[arg(long, env = "RECSYS_BENCH_ROWS", default_value_t = 2_000_000)]
    pub rows: u64,
    /// Cluster sizes to measure, in executors (comma separated).
    #[arg(
        long,
        env = "RECSYS_BENCH_EXECUTORS",
        value_delimiter = ',',
        default_value = "1,2,3"
    )]
    pub executors: Vec<usize>,
    /// Task slots per executor (0: this machine's cores shared out among the executors, at
    /// least one each).
    #[arg(long, env = "RECSYS_BENCH_EXECUTOR_SLOTS", default_value_t = 0)]
    pub executor_slots: usize,
    /// Texts to embed, embedded and through the largest cluster (0: no embedding run).
    #[arg(long, env = "RECSYS_BENCH_TEXTS", default_value_t = 512)]
    pub texts: usize,
    /// Texts per shard (one task each) of the embedding run.
    #[arg(long, env = "RECSYS_BENCH_SHARD", default_value_t = 64)]
    pub shard: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub als: crate::als::AlsArgs,
}

impl ClusterBench {
    /// Task slots per executor in a cluster of `n`.
    fn slots(&self, n: usize) -> usize {
        match self.executor_slots {
            0 => (cores() / n.max(1)).max(1),
            s => s,
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The scheduler and executors of one cluster on their own hosts.
struct Hosts {
    net: Net,
    scheduler: Host,
    executors: Vec<Host>,
    /// The process id of every cluster process (scheduler first).
    pids: Vec<u32>,
    logs: tempfile::TempDir,
}

impl Hosts {
    async fn start(
        executors: usize,
        slots: usize,
        model_dir: &std::path::Path,
        lake: &LakeArgs,
    ) -> Result<Hosts> {
        let mut net = Net::new().map_err(|why| {
            anyhow!(
                "bench cluster puts each executor on its own host in a network namespace, which \
                 cannot be made here ({why}); run it as root with iproute2"
            )
        })?;
        let scheduler = net.host("scheduler").map_err(anyhow::Error::msg)?;
        let logs = tempfile::tempdir()?;
        let env = [
            ("RECSYS_LOG", "warn".to_string()),
            ("RECSYS_MODEL_DIR", model_dir.display().to_string()),
        ];
        let pid = net
            .spawn(
                &scheduler,
                &std::env::current_exe()?.to_string_lossy(),
                &scheduler_args("0.0.0.0", &scheduler.addr, SCHEDULER_PORT),
                &env,
                &logs.path().join("scheduler.log"),
            )
            .map_err(anyhow::Error::msg)?;
        let mut hosts = Hosts {
            net,
            scheduler,
            executors: Vec::new(),
            pids: vec![pid],
            logs,
        };
        for i in 0..executors {
            let host = hosts
                .net
                .host(&format!("exec{i}"))
                .map_err(anyhow::Error::msg)?;
            let work = hosts.logs.path().join(&host.name);
            std::fs::create_dir_all(&work)?;
            let args = executor_args(
                (&hosts.scheduler.addr, SCHEDULER_PORT),
                "0.0.0.0",
                &host.addr,
                slots,
                &work,
            );
            let pid = hosts
                .net
                .spawn(
                    &host,
                    &std::env::current_exe()?.to_string_lossy(),
                    &args,
                    &env,
                    &hosts.logs.path().join(format!("{}.log", host.name)),
                )
                .map_err(anyhow::Error::msg)?;
            hosts.pids.push(pid);
            hosts.executors.push(host);
        }
        hosts.wait_for_executors(executors, lake).await?;
        Ok(hosts)
    }

    fn url(&self) -> String {
        format!("df://{}:{SCHEDULER_PORT}", self.scheduler.addr)
    }

    /// Waits (60 s at most) until `n` executors have registered.
    async fn wait_for_executors(&self, n: usize, lake: &LakeArgs) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(cluster) = Cluster::remote(&self.url(), &lake.s3, 1, true).await
                && cluster.executors().await.is_ok_and(|e| e.len() == n)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{n} executors did not register with {} within 60 s; logs in {}",
                    self.url(),
                    self.logs.path().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client of the cluster, planning for the slots it reports; the namespaces share this
    /// machine's folders, so a local-folder lake is shared.
    async fn client(&self, lake: &LakeArgs, retries: usize) -> Result<Cluster> {
        ClusterArgs {
            scheduler: Some(self.url()),
            vcores: 0,
            shared_lake: true,
            retries,
        }
        .connect(&lake.s3)
        .await
    }

    fn cpu_secs(&self) -> f64 {
        self.pids.iter().map(|p| cpu_secs(&p.to_string())).sum()
    }
}

/// One measured run of one step.
struct Run {
    wall: f64,
    cpu: f64,
    jobs: usize,
    tasks: Vec<TaskRun>,
}

/// Runs `step`, measuring its wall and CPU time (this process plus `hosts`' processes) and the
/// Ballista jobs and tasks it made on `cluster` (none on the embedded cluster, which has no
/// REST API).
async fn measured<T>(
    cluster: &Cluster,
    hosts: Option<&Hosts>,
    step: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, Run)> {
    let known: std::collections::HashSet<String> = match hosts {
        Some(_) => cluster
            .jobs()
            .await?
            .into_iter()
            .map(|j| j.job_id)
            .collect(),
        None => Default::default(),
    };
    let cpu = || cpu_secs("self") + hosts.map_or(0.0, Hosts::cpu_secs);
    let cpu_before = cpu();
    let started = Instant::now();
    let out = step.await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu() - cpu_before;
    let mut run = Run {
        wall,
        cpu,
        jobs: 0,
        tasks: Vec::new(),
    };
    if hosts.is_some() {
        for job in cluster.jobs().await? {
            if !known.contains(&job.job_id) {
                run.jobs += 1;
                run.tasks.extend(cluster.job_tasks(&job.job_id).await?);
            }
        }
    }
    Ok((out, run))
}

fn print_row(label: &str, slots: usize, step: &str, run: &Run, embedded: Option<&Run>) {
    let tasks = if run.jobs == 0 {
        ("-".to_string(), "-".to_string(), "-".to_string())
    } else {
        (
            run.jobs.to_string(),
            run.tasks.len().to_string(),
            peak_concurrency(&run.tasks).to_string(),
        )
    };
    println!(
        "  {label:<14} {slots:>5} {step:<11} {:>8.2} {:>8.2} {:>6} {:>7} {:>9} {:>10}",
        run.wall,
        run.cpu,
        tasks.0,
        tasks.1,
        tasks.2,
        embedded.map_or("-".to_string(), |e| format!("{:.2}×", run.wall / e.wall)),
    );
}

/// The texts of the embedding runs, as shards of `per_shard` in `lake`'s `SHARDS_DIR`.
async fn write_texts(lake: &Store, texts: usize, per_shard: usize) -> Result<Vec<u64>> {
    let songs: Vec<(Payload, String)> = (0..texts)
        .map(|i| {
            let id = format!("bench-{i}");
            (
                Payload {
                    track_id: id.clone(),
                    title: id.clone(),
                    artist: id,
                },
                crate::bench_embed::bench_text(i),
            )
        })
        .collect();
    let mut shards = Vec::new();
    for (n, chunk) in songs.chunks(per_shard.max(1)).enumerate() {
        write_shard(lake, n as u64, chunk).await?;
        shards.push(n as u64);
    }
    Ok(shards)
}

/// Embeds `shards` of `lake` on `cluster` into `bench-parts/`.
async fn embed(
    cluster: &Cluster,
    lake: &Store,
    shards: &[u64],
    model_dir: &std::path::Path,
) -> Result<()> {
    recsys_jobs::embed::run_embed(
        cluster,
        lake,
        SHARDS_DIR,
        "bench-parts",
        shards,
        32,
        Some(model_dir),
    )
    .await?;
    Ok(())
}

/// Embeds the shards on `cluster`: texts per second, after a warm-up job that loads the model
/// (one shard per slot).
async fn embed_rate(
    cluster: &Cluster,
    lake: &Store,
    shards: &[u64],
    texts: usize,
    model_dir: &std::path::Path,
) -> Result<f64> {
    let warm_up = &shards[..cluster.parallelism().min(shards.len())];
    embed(cluster, lake, warm_up, model_dir).await?;
    let started = Instant::now();
    embed(cluster, lake, shards, model_dir).await?;
    Ok(texts as f64 / started.elapsed().as_secs_f64())
}

/// Trains one ALS model on `cluster`, and after `after` takes one executor away with `lose`:
/// the seconds from the loss to the training's end.
async fn recovery(
    cluster: &Cluster,
    lake: &Store,
    als: &crate::als::AlsArgs,
    after: Duration,
    lose: impl FnOnce() -> Result<()>,
) -> Result<f64> {
    let train = crate::als::train(cluster, lake, als);
    tokio::pin!(train);
    tokio::select! {
        done = &mut train => {
            done?;
            bail!("the training ended before the executor was lost ({after:?}); use more rows");
        }
        _ = tokio::time::sleep(after) => {}
    }
    lose()?;
    let lost = Instant::now();
    train.await?;
    Ok(lost.elapsed().as_secs_f64())
}

fn print_recovery(what: &str, outcome: Result<f64>) {
    match outcome {
        Ok(secs) => println!("  {what}: the training ended {secs:.1} s after"),
        Err(e) => println!("  {what}: the training failed: {e:#}"),
    }
}

pub async fn run(lake_args: &LakeArgs, args: ClusterBench) -> Result<()> {
    let root = lake_args.open()?;
    if root.base_url().scheme() != "file" {
        bail!(
            "bench cluster runs its hosts on this machine over a local-folder lake, which they \
             share; {} is not one (the S3 lake on separate hosts is tested by \
             cli/tests/cluster_hosts.rs)",
            root.location()
        );
    }
    let lake = sorted_bench_lake(lake_args, args.rows).await?;
    let raw = lake.child(recsys_core::schema::RAW_DIR);
    let input = clean_input(lake_args, &lake, Some(raw.location())).await?;
    let model_dir: PathBuf = args.model.locate()?;
    let cores = cores();
    let mut als = args.als.clone();
    als.iterations = 1;

    let embedded = embedded_cluster(lake_args).await?;
    println!(
        "bench cluster: {} rows, ALS rank {} (1 iteration), {cores} cores; each executor on its own \
         host (network namespace), the lake a local folder they share",
        args.rows, als.rank
    );
    println!(
        "  {:<14} {:>5} {:<11} {:>8} {:>8} {:>6} {:>7} {:>9} {:>10}",
        "run", "slots", "step", "wall s", "CPU s", "jobs", "tasks", "at once", "/embedded"
    );
    let (_, e_clean) = measured(&embedded, None, async {
        clean(&embedded, &input, &lake).await?;
        sort(&embedded, &lake, None).await
    })
    .await?;
    let (_, e_als) = measured(&embedded, None, crate::als::train(&embedded, &lake, &als)).await?;
    for (step, run) in [("clean+sort", &e_clean), ("ALS", &e_als)] {
        print_row("embedded", embedded.parallelism(), step, run, None);
    }

    let mut largest = None;
    for &n in &args.executors {
        let hosts = Hosts::start(n, args.slots(n), &model_dir, lake_args)
            .await
            .with_context(|| format!("starting a cluster of {n} executors"))?;
        let cluster = hosts.client(lake_args, 0).await?;
        let label = format!("{n} executor{}", if n == 1 { "" } else { "s" });
        let (_, c_clean) = measured(&cluster, Some(&hosts), async {
            clean(&cluster, &input, &lake).await?;
            sort(&cluster, &lake, None).await
        })
        .await?;
        print_row(
            &label,
            cluster.parallelism(),
            "clean+sort",
            &c_clean,
            Some(&e_clean),
        );
        let (_, c_als) = measured(
            &cluster,
            Some(&hosts),
            crate::als::train(&cluster, &lake, &als),
        )
        .await?;
        print_row(&label, cluster.parallelism(), "ALS", &c_als, Some(&e_als));
        // The loss runs retry a job Ballista left stalled, as `--retries` does by default.
        let cluster = hosts.client(lake_args, 2).await?;
        largest = Some((hosts, cluster, c_als.wall));
    }

    if let Some((hosts, cluster, als_wall)) = &largest
        && hosts.executors.len() >= 2
    {
        let half = Duration::from_secs_f64(als_wall / 2.0);
        println!(
            "\nan executor lost halfway through ALS ({:.1} s into a {als_wall:.1} s training; heartbeat {} s, executor timeout {} s):",
            half.as_secs_f64(),
            recsys_jobs::cluster::HEARTBEAT_S,
            recsys_jobs::cluster::EXECUTOR_TIMEOUT_S,
        );
        let victim = hosts.pids[1];
        let killed = recovery(cluster, &lake, &als, half, || {
            kill9(victim);
            Ok(())
        })
        .await;
        print_recovery("kill -9 of exec0", killed);
        let cut = &hosts.executors[1];
        let cut_off = recovery(cluster, &lake, &als, half, || {
            hosts.net.link(cut, false).map_err(anyhow::Error::msg)
        })
        .await;
        print_recovery("exec1's link down", cut_off);
    }

    if args.texts > 0 {
        let texts_lake = root.child("bench/embed");
        let shards = write_texts(&texts_lake, args.texts, args.shard).await?;
        let ours = embed_rate(&embedded, &texts_lake, &shards, args.texts, &model_dir).await?;
        println!(
            "\nembedding {} texts in shards of {}: embedded {ours:.1} texts/s",
            args.texts, args.shard
        );
        let n = args.executors.iter().copied().max().unwrap_or(1);
        // A fresh cluster: the loss runs above took executors away.
        drop(largest);
        let hosts = Hosts::start(n, args.slots(n), &model_dir, lake_args).await?;
        let cluster = hosts.client(lake_args, 0).await?;
        let theirs = embed_rate(&cluster, &texts_lake, &shards, args.texts, &model_dir).await?;
        println!(
            "  {n} executors ({} slots): {theirs:.1} texts/s, {:.2}× the embedded rate",
            cluster.parallelism(),
            theirs / ours
        );
    }
    Ok(())
}
