//! The cluster on separate hosts: the scheduler, three executors and the S3 server each on its
//! own address in its own network namespace, the lake on S3 only (no shared folder), and the
//! test process as the client on the bridge. The jobs must produce what the embedded cluster
//! produces with the same number of task slots, survive the loss of an executor, and never
//! send the S3 secret to the scheduler.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use common::netns::{Host, Net, cpu_secs, kill9};
use common::{RECSYS, S3Server, assert_same_model, generate, small_config};
use recsys_core::Store;
use recsys_jobs::Cluster;
use recsys_jobs::als::{AlsParams, AlsSummary, TrainOptions, train};
use recsys_jobs::clean::{TsvInput, run_clean};
use recsys_jobs::cluster::{executor_args, scheduler_args};
use recsys_jobs::etl::run_etl;
use recsys_jobs::sort::run_sort;
use recsys_jobs::source::ListenSource;

const SCHEDULER_PORT: u16 = 50050;
const S3_PORT: u16 = 9000;

/// The tests of this file run one at a time: each starts five hosts on two cores, and the
/// executor-loss test's bound is about the cluster, not about sharing the machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The hosts of one test: s3, scheduler, exec0..execN.
struct Hosts {
    s3: S3Server,
    scheduler: Host,
    scheduler_pid: u32,
    executors: Vec<Host>,
    /// The process id of each executor host's current executor.
    pids: Vec<u32>,
    logs: tempfile::TempDir,
    net: Net,
}

/// The log filter of the cluster's processes: `RECSYS_TEST_CLUSTER_LOG` (e.g.
/// `info,ballista_scheduler=debug` to follow a failure), `warn` by default.
fn cluster_log() -> String {
    std::env::var("RECSYS_TEST_CLUSTER_LOG").unwrap_or_else(|_| "warn".into())
}

/// A failed test keeps its cluster's logs, and says where.
impl Drop for Hosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = std::mem::replace(&mut self.logs, tempfile::tempdir().unwrap());
            eprintln!("the cluster's logs are kept in {}", logs.keep().display());
        }
    }
}

impl Hosts {
    /// Starts the hosts and waits until every executor has registered; `None` (after saying
    /// why) where namespaces cannot be made and they are not required.
    async fn start(what: &str, executors: usize) -> Option<Hosts> {
        let mut net = common::create_net(what)?;
        let s3_host = net.host("s3").unwrap();
        let s3 = S3Server::serve("lake", common::listen_on(&s3_host, S3_PORT));
        let scheduler = net.host("scheduler").unwrap();
        let logs = tempfile::tempdir().unwrap();
        let mut hosts = Hosts {
            s3,
            scheduler,
            scheduler_pid: 0,
            executors: Vec::new(),
            pids: Vec::new(),
            logs,
            net,
        };
        hosts.start_scheduler();
        for i in 0..executors {
            let host = hosts.net.host(&format!("exec{i}")).unwrap();
            hosts.executors.push(host);
            hosts.pids.push(0);
            hosts.start_executor(i);
        }
        hosts.wait_for_executors(executors).await;
        Some(hosts)
    }

    /// Starts (or restarts) the scheduler on its host.
    fn start_scheduler(&mut self) {
        let log = self
            .logs
            .path()
            .join(format!("scheduler-{}.log", self.scheduler_pid));
        self.scheduler_pid = self
            .net
            .spawn(
                &self.scheduler,
                RECSYS,
                &scheduler_args("0.0.0.0", &self.scheduler.addr, SCHEDULER_PORT),
                &[
                    ("RECSYS_LOG", cluster_log()),
                    // Its own lake, for SQL over the lake's tables (Flight SQL).
                    ("RECSYS_OBJECT_STORE", "s3://lake/cluster".into()),
                    ("RECSYS_S3_ENDPOINT", self.s3.endpoint.clone()),
                    ("RECSYS_S3_ALLOW_HTTP", "true".into()),
                    ("AWS_REGION", "us-east-1".into()),
                    (
                        "AWS_ACCESS_KEY_ID",
                        self.s3.options.access_key_id.clone().unwrap(),
                    ),
                    (
                        "AWS_SECRET_ACCESS_KEY",
                        self.s3.options.secret_access_key.clone().unwrap(),
                    ),
                ],
                &log,
            )
            .unwrap();
    }

    /// Starts (or restarts) executor `i` on its host: one task slot, S3 credentials from its
    /// own environment only.
    fn start_executor(&mut self, i: usize) {
        let host = self.executors[i].clone();
        let log = self
            .logs
            .path()
            .join(format!("{}-{}.log", host.name, self.pids[i]));
        let work = self.logs.path().join(&host.name);
        std::fs::create_dir_all(&work).unwrap();
        let options = &self.s3.options;
        let mut env = vec![
            ("RECSYS_LOG", cluster_log()),
            ("AWS_ACCESS_KEY_ID", options.access_key_id.clone().unwrap()),
            (
                "AWS_SECRET_ACCESS_KEY",
                options.secret_access_key.clone().unwrap(),
            ),
        ];
        // The model for embedding tasks, where scripts/test found it.
        if let Ok(dir) = std::env::var("RECSYS_MODEL_DIR") {
            env.push(("RECSYS_MODEL_DIR", dir));
        }
        let pid = self
            .net
            .spawn(
                &host,
                RECSYS,
                &executor_args(
                    (&self.scheduler.addr, SCHEDULER_PORT),
                    "0.0.0.0",
                    &host.addr,
                    1,
                    &work,
                ),
                &env,
                &log,
            )
            .unwrap();
        self.pids[i] = pid;
    }

    fn url(&self) -> String {
        format!("df://{}:{SCHEDULER_PORT}", self.scheduler.addr)
    }

    /// A client of the scheduler, sized by the slots it reports.
    async fn cluster(&self) -> Cluster {
        Cluster::remote(&self.url(), &self.s3.options, 0, false)
            .await
            .unwrap()
    }

    /// Waits (60 s at most) until exactly `n` executors are registered, every one of them
    /// heard from in the last two heartbeats (a killed one stays listed until it times out).
    async fn wait_for_executors(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let live = |e: &recsys_jobs::cluster::ExecutorInfo| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            e.last_seen
                .is_some_and(|t| now.saturating_sub(t) <= 2000 * recsys_jobs::cluster::HEARTBEAT_S)
        };
        loop {
            if let Ok(cluster) = Cluster::remote(&self.url(), &self.s3.options, 1, false).await
                && cluster
                    .executors()
                    .await
                    .is_ok_and(|e| e.len() == n && e.iter().all(live))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{n} executors did not register with {} within 60 s; logs in {}",
                self.url(),
                self.logs.path().display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn lake(&self, prefix: &str) -> Store {
        Store::open(&format!("s3://lake/{prefix}"), &self.s3.options).unwrap()
    }
}

/// The batch jobs in pipeline order: clean, sort (5 files), ETL (3 files per table).
async fn clean_sort_etl(cluster: &Cluster, raw: &Store, lake: &Store) {
    let input = TsvInput::resolve(raw.location(), raw.options())
        .await
        .unwrap();
    let cleaned = run_clean(cluster, &input, lake).await.unwrap();
    let sorted = run_sort(cluster, lake, Some(5)).await.unwrap();
    assert_eq!(sorted.rows, cleaned.clean_rows);
    run_etl(cluster, lake, ListenSource::Listens, 3)
        .await
        .unwrap();
}

/// Texts of several lengths, as the embedding step's shards (`shards/`, six of ten texts).
async fn write_shards(lake: &Store) -> Vec<u64> {
    use arrow::array::StringArray;
    let words = [
        "night", "river", "dancing", "alone", "city", "light", "heart", "rain",
    ];
    let shards: Vec<u64> = (0..6).collect();
    for &shard in &shards {
        let texts: Vec<String> = (0..10)
            .map(|i| {
                let n = (shard * 10 + i) as usize;
                (0..5 + n % 40)
                    .map(|w| words[(n + w * 3) % words.len()])
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let ids: Vec<String> = (0..10).map(|i| format!("track-{shard}-{i}")).collect();
        let column =
            |v: &[String]| Arc::new(StringArray::from(v.to_vec())) as arrow::array::ArrayRef;
        let batch = RecordBatch::try_new(
            recsys_jobs::embed::shard_schema(),
            vec![column(&ids), column(&ids), column(&ids), column(&texts)],
        )
        .unwrap();
        let mut bytes = Vec::new();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        use object_store::ObjectStoreExt;
        lake.object_store()
            .put(
                &lake.path(&format!("shards/{}", recsys_jobs::embed::shard_file(shard))),
                bytes.into(),
            )
            .await
            .unwrap();
    }
    shards
}

/// Embeds the shards of [`write_shards`] into `parts/`.
async fn embed(cluster: &Cluster, lake: &Store, shards: &[u64]) {
    let done = recsys_jobs::embed::run_embed(cluster, lake, "shards", "parts", shards, 8, None)
        .await
        .unwrap();
    assert_eq!(done.len(), shards.len());
    assert!(done.iter().all(|d| d.rows == 10 && d.tokens > 0));
}

async fn als(cluster: &Cluster, lake: &Store) -> AlsSummary {
    let params = AlsParams {
        rank: 8,
        iterations: 4,
        ..AlsParams::default()
    };
    train(cluster, lake, &params, &TrainOptions::default(), |_| {})
        .await
        .unwrap()
}

/// Every Parquet object of the jobs' outputs in `lake`: its name in the lake and its rows.
async fn outputs(lake: &Store) -> Vec<(String, Option<RecordBatch>)> {
    let store = lake.object_store();
    let mut out = Vec::new();
    for dir in ["clean", "rejects", "sorted", "catalog", "parts"] {
        for object in recsys_jobs::lake::list(store.as_ref(), &lake.path(dir))
            .await
            .unwrap()
        {
            let name = lake.relative(object.location.as_ref());
            if !name.ends_with(".parquet") {
                continue;
            }
            let (batches, _) = recsys_jobs::lake::read_parquet(store.as_ref(), &object.location)
                .await
                .unwrap();
            let mut rows = batches
                .first()
                .map(|b| arrow::compute::concat_batches(&b.schema(), &batches).unwrap());
            // A master-data file's rows come out of a shuffle in arrival order: its content
            // is what must match, so compare it sorted by id.
            if name.starts_with("catalog/") {
                rows = rows.map(|b| {
                    let order = arrow::compute::sort_to_indices(b.column(0), None, None).unwrap();
                    arrow::compute::take_record_batch(&b, &order).unwrap()
                });
            }
            out.push((name, rows));
        }
    }
    out
}

fn assert_same_outputs(
    embedded: &[(String, Option<RecordBatch>)],
    cluster: &[(String, Option<RecordBatch>)],
) {
    let names = |o: &[(String, Option<RecordBatch>)]| -> Vec<String> {
        o.iter().map(|(n, _)| n.clone()).collect()
    };
    assert_eq!(names(embedded), names(cluster), "different output files");
    for ((name, a), (_, b)) in embedded.iter().zip(cluster) {
        if name.starts_with("parts/") {
            // Vectors: the same songs, the same vectors up to float summation order.
            let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
            assert_eq!(a.column(0), b.column(0), "{name}: the same songs");
            let values = |batch: &RecordBatch| -> Vec<f32> {
                use arrow::array::AsArray;
                batch
                    .column(3)
                    .as_fixed_size_list()
                    .values()
                    .as_primitive::<arrow::datatypes::Float32Type>()
                    .values()
                    .to_vec()
            };
            let diff = values(a)
                .iter()
                .zip(values(b))
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-5, "{name}: vectors differ by {diff}");
        } else {
            assert!(
                a == b,
                "{name} differs between the embedded and the cluster run"
            );
        }
    }
    for dir in [
        "clean/",
        "rejects/",
        "sorted/",
        "catalog/songs",
        "catalog/users",
        "parts/",
    ] {
        assert!(
            embedded.iter().any(|(n, _)| n.starts_with(dir)),
            "no output in {dir}"
        );
    }
}

/// A TCP forwarder from a loopback port to `target` that keeps every byte the client sends.
async fn recording_proxy(target: String) -> (u16, Arc<Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let recorded = sent.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = client_read.read(&mut buf).await {
                    if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    recorded.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
            });
        }
    });
    (port, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_hosts_produce_what_the_embedded_cluster_produces() {
    let _serial = ONE_AT_A_TIME.lock().await;
    tokio::time::timeout(Duration::from_secs(600), async {
        let Some(hosts) = Hosts::start(
            "separate_hosts_produce_what_the_embedded_cluster_produces",
            3,
        )
        .await
        else {
            return;
        };
        let raw = hosts.lake("raw");
        generate(&small_config(), &raw).await;

        let embedded = Cluster::embedded(&hosts.s3.options, 3).await.unwrap();
        let lake_a = hosts.lake("embedded");
        clean_sort_etl(&embedded, &raw, &lake_a).await;
        let model_a = als(&embedded, &lake_a).await;
        let shards = write_shards(&lake_a).await;
        embed(&embedded, &lake_a, &shards).await;

        // The client talks to the scheduler through a recorder of what it sends.
        let (port, sent) =
            recording_proxy(format!("{}:{SCHEDULER_PORT}", hosts.scheduler.addr)).await;
        let remote = Cluster::remote(
            &format!("df://127.0.0.1:{port}"),
            &hosts.s3.options,
            0,
            false,
        )
        .await
        .unwrap();
        assert_eq!(remote.parallelism(), 3, "the scheduler reports 3 slots");
        let lake_b = hosts.lake("cluster");
        clean_sort_etl(&remote, &raw, &lake_b).await;
        let model_b = als(&remote, &lake_b).await;
        write_shards(&lake_b).await;
        embed(&remote, &lake_b, &shards).await;

        assert_same_outputs(&outputs(&lake_a).await, &outputs(&lake_b).await);
        assert_same_model(&model_a, &model_b);

        // What reached the scheduler named the S3 server but carried no secret.
        let sent = sent.lock().unwrap().clone();
        let contains = |needle: &str| sent.windows(needle.len()).any(|w| w == needle.as_bytes());
        assert!(
            contains(&hosts.s3.endpoint),
            "the recorder saw the jobs' S3 endpoint"
        );
        let secret = hosts.s3.options.secret_access_key.clone().unwrap();
        assert!(
            !contains(&secret),
            "the S3 secret key reached the scheduler"
        );

        // SQL over the lake's tables through the scheduler's Flight SQL service, from
        // arrow-flight's own client and from `recsys sql`.
        let count = |sql: &'static str| {
            let url = format!("http://{}:{SCHEDULER_PORT}", hosts.scheduler.addr);
            async move {
                use arrow_flight::sql::client::FlightSqlServiceClient;
                use futures::TryStreamExt;
                let channel = tonic::transport::Endpoint::from_shared(url)
                    .unwrap()
                    .timeout(Duration::from_secs(120))
                    .connect()
                    .await
                    .unwrap();
                let mut client = FlightSqlServiceClient::new(channel);
                client.handshake("analyst", "").await.unwrap();
                let info = client.execute(sql.to_string(), None).await.unwrap();
                let mut n = 0i64;
                for endpoint in info.endpoint {
                    let batches: Vec<RecordBatch> = client
                        .do_get(endpoint.ticket.unwrap())
                        .await
                        .unwrap()
                        .try_collect()
                        .await
                        .unwrap();
                    for b in batches {
                        use arrow::array::AsArray;
                        n += b
                            .column(0)
                            .as_primitive::<arrow::datatypes::Int64Type>()
                            .iter()
                            .flatten()
                            .sum::<i64>();
                    }
                }
                n
            }
        };
        let sorted_rows: usize = outputs(&lake_b)
            .await
            .iter()
            .filter(|(n, _)| n.starts_with("sorted/"))
            .map(|(_, b)| b.as_ref().map_or(0, |b| b.num_rows()))
            .sum();
        assert_eq!(
            count("SELECT count(*) FROM listens").await as usize,
            sorted_rows
        );
        assert_eq!(
            count("SELECT count(*) FROM user_factors").await as usize,
            model_b.model.user_ids.len()
        );
        let songs = count("SELECT count(*) FROM songs").await;
        assert!(songs > 0);
        let out = std::process::Command::new(RECSYS)
            .args([
                "sql",
                "--scheduler",
                &hosts.url(),
                "--format",
                "csv",
                "SELECT count(*) AS songs FROM songs",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("songs\n{songs}\n")
        );

        // A local folder is refused: the executors could not see it.
        let dir = tempfile::tempdir().unwrap();
        let err = remote
            .check_lake(&common::local_store(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("other hosts") && err.contains("--shared-lake"),
            "{err}"
        );
    })
    .await
    .expect("test timed out");
}

/// Runs `job` on `cluster` and calls `disrupt` once the scheduler reports the `nth` (from 1)
/// Ballista job the step submits as running and, when `busy` names a process, that process is
/// working for it (using CPU: an idle executor uses next to none), so that the disruption
/// takes work of the job with it. Returns the job's output and how long it took.
async fn disrupt_during<T>(
    cluster: &Cluster,
    nth: usize,
    busy: Option<u32>,
    job: impl std::future::Future<Output = T>,
    disrupt: impl FnOnce(),
) -> (T, Duration) {
    const POLL: Duration = Duration::from_millis(50);
    let started = Instant::now();
    let known: Vec<String> = cluster
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    let cpu = || busy.map_or(0.0, |pid| cpu_secs(&pid.to_string()));
    let watcher = async {
        let mut used = cpu();
        loop {
            tokio::time::sleep(POLL).await;
            let new: Vec<_> = cluster
                .jobs()
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|j| !known.contains(&j.job_id))
                .collect();
            let now = cpu();
            // CPU used within the last 50 ms poll (the kernel counts in 10 ms ticks; an idle
            // executor uses a tick every few seconds, for its heartbeat).
            let working = busy.is_none() || now > used;
            used = now;
            if new.len() >= nth && new.iter().any(|j| j.status == "Running") && working {
                return;
            }
        }
    };
    tokio::pin!(job);
    let output = tokio::select! {
        _ = &mut job => panic!("the step ended before its job {nth} was seen running{}",
            if busy.is_some() { " on the process to disrupt" } else { "" }),
        _ = watcher => {
            disrupt();
            job.await
        }
    };
    (output, started.elapsed())
}

impl Hosts {
    /// A fresh executor on executor host `i`: its old one killed (before its link comes back,
    /// so a cut-off executor never finishes a stale task), its link up.
    async fn replace_executor(&mut self, i: usize) {
        kill9(self.pids[i]);
        self.net.link(&self.executors[i], true).unwrap();
        self.start_executor(i);
        self.wait_for_executors(self.executors.len()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_the_loss_of_an_executor() {
    let _serial = ONE_AT_A_TIME.lock().await;
    tokio::time::timeout(Duration::from_secs(900), async {
        let Some(mut hosts) = Hosts::start("jobs_survive_the_loss_of_an_executor", 3).await else {
            return;
        };
        let raw = hosts.lake("raw");
        let config = recsys_datasets::GenerateConfig {
            events: 400_000,
            ..small_config()
        };
        generate(&config, &raw).await;
        let embedded = Cluster::embedded(&hosts.s3.options, 3).await.unwrap();
        let lake_a = hosts.lake("embedded");
        clean_sort_etl(&embedded, &raw, &lake_a).await;
        let model_a = als(&embedded, &lake_a).await;
        let shards = write_shards(&lake_a).await;
        embed(&embedded, &lake_a, &shards).await;

        let remote = hosts.cluster().await;
        let lake_b = hosts.lake("cluster");
        let input = TsvInput::resolve(raw.location(), raw.options())
            .await
            .unwrap();
        let mut took = Vec::new();
        let victim = hosts.pids[0];
        let (cleaned, t) = disrupt_during(
            &remote,
            1,
            Some(victim),
            run_clean(&remote, &input, &lake_b),
            || kill9(victim),
        )
        .await;
        cleaned.unwrap();
        took.push(("clean, kill -9", t));
        hosts.replace_executor(0).await;

        let (sorted, t) = disrupt_during(
            &remote,
            1,
            Some(hosts.pids[1]),
            run_sort(&remote, &lake_b, Some(5)),
            || hosts.net.link(&hosts.executors[1], false).unwrap(),
        )
        .await;
        sorted.unwrap();
        took.push(("sort, link down", t));
        hosts.replace_executor(1).await;

        run_etl(&remote, &lake_b, ListenSource::Listens, 3)
            .await
            .unwrap();
        // The 4th job is past the ratings' preparation: in the iterations.
        let victim = hosts.pids[2];
        let (model_b, t) = disrupt_during(&remote, 4, Some(victim), als(&remote, &lake_b), || {
            kill9(victim)
        })
        .await;
        took.push(("ALS, kill -9", t));
        hosts.replace_executor(2).await;
        write_shards(&lake_b).await;
        let victim = hosts.pids[0];
        let ((), t) = disrupt_during(
            &remote,
            1,
            Some(victim),
            embed(&remote, &lake_b, &shards),
            || kill9(victim),
        )
        .await;
        took.push(("embedding, kill -9", t));

        // The scheduler gives up on a silent executor after its timeout and runs its tasks
        // elsewhere: each step ends within a few timeouts.
        eprintln!("steps with an executor lost: {took:?}");
        let bound = Duration::from_secs(3 * recsys_jobs::cluster::EXECUTOR_TIMEOUT_S + 30);
        for (what, t) in &took {
            assert!(*t < bound, "{what} took {t:?}, more than {bound:?}");
        }
        assert_same_outputs(&outputs(&lake_a).await, &outputs(&lake_b).await);
        assert_same_model(&model_a, &model_b);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_restart_fails_the_job_clearly_and_a_retry_resumes_it() {
    let _serial = ONE_AT_A_TIME.lock().await;
    tokio::time::timeout(Duration::from_secs(600), async {
        let Some(mut hosts) = Hosts::start(
            "a_scheduler_restart_fails_the_job_clearly_and_a_retry_resumes_it",
            3,
        )
        .await
        else {
            return;
        };
        let raw = hosts.lake("raw");
        generate(&small_config(), &raw).await;
        let remote = hosts.cluster().await;
        let lake = hosts.lake("cluster");
        let input = TsvInput::resolve(raw.location(), raw.options())
            .await
            .unwrap();
        run_clean(&remote, &input, &lake).await.unwrap();
        run_sort(&remote, &lake, Some(5)).await.unwrap();
        // An undisturbed training, and how many Ballista jobs it takes.
        let before = remote.jobs().await.unwrap().len();
        let model_a = als(&remote, &lake).await;
        let all_jobs = remote.jobs().await.unwrap().len() - before;

        // Without retries, a restart in the iterations fails the training, naming the cluster.
        let scheduler = hosts.scheduler_pid;
        let (failed, _) = disrupt_during(
            &remote,
            4,
            None,
            async {
                let params = AlsParams {
                    rank: 8,
                    iterations: 4,
                    ..AlsParams::default()
                };
                train(&remote, &lake, &params, &TrainOptions::default(), |_| {}).await
            },
            || kill9(scheduler),
        )
        .await;
        let error = failed
            .expect_err("the training survived its scheduler")
            .to_string();
        assert!(error.contains(&hosts.url()), "{error}");
        std::thread::sleep(Duration::from_millis(500));
        hosts.start_scheduler();
        hosts.wait_for_executors(3).await;

        // With retries, the failed job is submitted again and the training goes on from there.
        let retrying = hosts.cluster().await.with_retries(3);
        let (model_b, _) = disrupt_during(&retrying, 4, None, als(&retrying, &lake), || {
            kill9(hosts.scheduler_pid);
            // Its port is free once the process is gone.
            std::thread::sleep(Duration::from_millis(500));
            hosts.start_scheduler();
        })
        .await;
        assert_same_model(&model_a, &model_b);
        let after_restart = retrying.jobs().await.unwrap().len();
        assert!(
            after_restart < all_jobs,
            "the new scheduler ran {after_restart} jobs, a whole training takes {all_jobs}: it \
             started over"
        );
    })
    .await
    .expect("test timed out");
}
