//! Shared test helpers: a Ballista cluster of real processes on 127.0.0.1, an S3 server
//! (s3s-fs, in-process), generated data, and readers for the lake's Parquet output; separate
//! hosts in network namespaces (`netns`).

#![allow(dead_code)]

#[path = "../../src/netns.rs"]
pub mod netns;

/// A new network of hosts, or `None` (after printing why) where namespaces cannot be made and
/// `RECSYS_REQUIRE_NETNS` is not set (`scripts/test`, so CI, sets it: there it is a failure).
pub fn create_net(what: &str) -> Option<netns::Net> {
    match netns::Net::new() {
        Ok(net) => Some(net),
        Err(why) => {
            let require = std::env::var("RECSYS_REQUIRE_NETNS").is_ok_and(|v| v == "1");
            assert!(
                !require,
                "{what}: network namespaces are required (RECSYS_REQUIRE_NETNS=1) but \
                 cannot be made: {why}"
            );
            eprintln!(
                "SKIPPED {what}: it needs separate hosts in network namespaces, which \
                 cannot be made here ({why}); run as root with iproute2 (scripts/test \
                 requires them)"
            );
            None
        }
    }
}

/// A TCP listener on `host`'s address, made inside its namespace: the socket stays there while
/// this process serves it, so a server of the test process runs on its own host.
pub fn listen_on(host: &netns::Host, port: u16) -> std::net::TcpListener {
    use std::os::fd::AsRawFd;
    let ns = format!("/var/run/netns/{}", host.ns);
    let addr = format!("{}:{port}", host.addr);
    std::thread::spawn(move || {
        let handle = std::fs::File::open(&ns).unwrap();
        // SAFETY: setns on this short-lived thread only moves this thread, which then binds one
        // socket and ends.
        let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {ns}: {}",
            std::io::Error::last_os_error()
        );
        std::net::TcpListener::bind(&addr).unwrap()
    })
    .join()
    .unwrap()
}

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use recsys_core::{S3Options, Store};
use recsys_datasets::{GenerateConfig, Manifest};

pub const RECSYS: &str = env!("CARGO_BIN_EXE_recsys");

/// A port nobody listens on right now, and one this process has not handed out before: the
/// kernel may give a released port again at once, and two servers started side by side on one
/// port leave one test talking to the other's server.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A scheduler and `executors` executor processes of our binary on 127.0.0.1.
pub fn process_cluster(executors: usize) -> recsys_jobs::ProcessCluster {
    recsys_jobs::ProcessCluster::start(std::path::Path::new(RECSYS), executors)
        .expect("local cluster")
}

/// A small generated log: enough structure for every code path, fast to process.
pub fn small_config() -> GenerateConfig {
    GenerateConfig {
        users: 60,
        tracks: 3000,
        events: 60_000,
        seed: 11,
        groups: 6,
    }
}

pub async fn generate(config: &GenerateConfig, raw: &Store) -> Manifest {
    recsys_datasets::generate(config, raw, |_| {})
        .await
        .unwrap()
}

pub fn local_store(dir: &Path) -> Store {
    Store::open(dir.to_str().unwrap(), &S3Options::default()).unwrap()
}

/// All rows of the Parquet files in `dir` (local), file by file in name order.
pub fn read_parquet_dir(dir: &Path) -> Vec<(PathBuf, Vec<RecordBatch>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let f = std::fs::File::open(&p).unwrap();
            let batches = ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            (p, batches)
        })
        .collect()
}

/// An S3 server (s3s-fs over a temp folder) on a loopback port, with one bucket.
pub struct S3Server {
    pub endpoint: String,
    pub options: S3Options,
    _root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl S3Server {
    pub async fn start(bucket: &str) -> S3Server {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        S3Server::serve(bucket, listener)
    }

    /// Serves `bucket` on `listener` (for one made inside another host's network namespace).
    pub fn serve(bucket: &str, listener: std::net::TcpListener) -> S3Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join(bucket)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            "recsys-test",
            "recsys-test-secret",
        ));
        let service = builder.build();
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        S3Server {
            options: S3Options {
                endpoint: Some(endpoint.clone()),
                access_key_id: Some("recsys-test".into()),
                secret_access_key: Some("recsys-test-secret".into()),
                region: Some("us-east-1".into()),
                allow_http: true,
                virtual_hosted: false,
            },
            endpoint,
            _root: root,
            task,
        }
    }
}

/// Generates, cleans and sorts a small log into `dir`, on `cluster`.
pub async fn sorted_lake(
    cluster: &recsys_jobs::Cluster,
    dir: &std::path::Path,
    config: &GenerateConfig,
) -> Store {
    let raw = local_store(&dir.join("raw"));
    generate(config, &raw).await;
    let lake = local_store(dir);
    let input = recsys_jobs::clean::TsvInput::resolve(raw.location(), &Default::default())
        .await
        .unwrap();
    recsys_jobs::clean::run_clean(cluster, &input, &lake)
        .await
        .unwrap();
    recsys_jobs::sort::run_sort(cluster, &lake, None)
        .await
        .unwrap();
    lake
}

/// A Kafka-protocol broker (tansu) on a loopback port, killed on drop. The binary comes from
/// `RECSYS_TEST_TANSU` (scripts/test installs it and sets the variable).
pub struct Broker {
    pub brokers: String,
    child: std::process::Child,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tansu() -> String {
    std::env::var("RECSYS_TEST_TANSU").expect(
        "RECSYS_TEST_TANSU names the tansu broker binary: run the tests with scripts/test, which installs it",
    )
}

impl Broker {
    /// Starts the broker on memory storage and creates `topic` with `partitions` partitions
    /// (30 s at most).
    pub fn start(topic: &str, partitions: u32) -> Broker {
        let broker = Broker::launch(free_port(), None);
        broker.create_topic(topic, partitions);
        broker
    }

    /// Starts the broker on `port`, keeping its topics, messages and consumer offsets in the
    /// bucket `tansu` of `s3` when given (then a broker started again on the same port and
    /// server carries on where the killed one stopped), in memory otherwise.
    pub fn launch(port: u16, s3: Option<&S3Server>) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = std::process::Command::new(tansu());
        command
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        match s3 {
            Some(s3) => {
                let key = |k: &Option<String>| k.clone().unwrap_or_default();
                command
                    .args(["--storage-engine", "s3://tansu/"])
                    .env("AWS_ENDPOINT", &s3.endpoint)
                    .env("AWS_ACCESS_KEY_ID", key(&s3.options.access_key_id))
                    .env("AWS_SECRET_ACCESS_KEY", key(&s3.options.secret_access_key))
                    .env("AWS_DEFAULT_REGION", key(&s3.options.region))
                    .env("AWS_ALLOW_HTTP", "true")
            }
            None => command.args(["--storage-engine", "memory://tansu/"]),
        };
        let child = command.spawn().expect("tansu starts");
        let broker = Broker {
            brokers: format!("127.0.0.1:{port}"),
            child,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not listen on {url}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        broker
    }

    /// Creates `topic` with `partitions` partitions (30 s at most).
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let url = format!("tcp://{}", self.brokers);
        let mut create = std::process::Command::new(tansu())
            .args(["topic", "create", topic, "--broker", &url])
            .args(["--partitions", &partitions.to_string()])
            .spawn()
            .expect("tansu topic create runs");
        assert!(
            wait_for(&mut create, 30).success(),
            "creating topic {topic} on {url}"
        );
    }
}

/// Waits for `child` at most `secs`; kills it and fails after that.
pub fn wait_for(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not finish within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A MongoDB wire-protocol server on a loopback port, in memory, killed on drop: one of the two
/// stand-ins scripts/test installs (no real mongod can be installed here).
pub struct MongoServer {
    pub uri: String,
    child: std::process::Child,
}

impl Drop for MongoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MongoServer {
    /// CongoDB, the emulator of `@push.rocks/smartmongo` (Node.js); `RECSYS_TEST_CONGODB` names
    /// its start script.
    pub fn congodb() -> MongoServer {
        let script = std::env::var("RECSYS_TEST_CONGODB").expect(
            "RECSYS_TEST_CONGODB names CongoDB's start script: run the tests with scripts/test, which installs it",
        );
        let port = free_port();
        let mut cmd = std::process::Command::new("node");
        cmd.arg(&script).arg(port.to_string());
        MongoServer::start("CongoDB", cmd, port)
    }

    /// SecantusDB, a MongoDB-compatible server over WiredTiger (Python);
    /// `RECSYS_TEST_SECANTUSDB` names its `secantusd-py`.
    pub fn secantusdb() -> MongoServer {
        MongoServer::secantusdb_on(free_port(), None)
    }

    /// SecantusDB on `port`, keeping its data in `storage` (in memory without), so that a
    /// server started again on the same folder and port finds it.
    pub fn secantusdb_on(port: u16, storage: Option<&Path>) -> MongoServer {
        let binary = std::env::var("RECSYS_TEST_SECANTUSDB").expect(
            "RECSYS_TEST_SECANTUSDB names SecantusDB's secantusd-py: run the tests with scripts/test, which installs it",
        );
        let storage = storage.map_or(":memory:".into(), |p| p.display().to_string());
        let mut cmd = std::process::Command::new(binary);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--storage-path",
                &storage,
                "--standalone",
                "--log-level",
                "WARNING",
            ]);
        MongoServer::start("SecantusDB", cmd, port)
    }

    fn start(name: &str, mut cmd: std::process::Command, port: u16) -> MongoServer {
        let child = cmd
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let mut server = MongoServer {
            uri: format!("mongodb://127.0.0.1:{port}"),
            child,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("{name} exited ({status}) before listening on {port}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{name} did not listen on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server
    }
}

/// Two trainings of the same data agree: same ids, factors within 1e-4, the same evaluation.
pub fn assert_same_model(a: &recsys_jobs::als::AlsSummary, b: &recsys_jobs::als::AlsSummary) {
    assert_eq!(a.model.user_ids, b.model.user_ids);
    assert_eq!(a.model.item_ids, b.model.item_ids);
    let max_diff = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    assert!(max_diff(&a.model.users.values, &b.model.users.values) <= 1e-4);
    assert!(max_diff(&a.model.items.values, &b.model.items.values) <= 1e-4);
    let (ea, eb) = (
        a.evaluation.as_ref().unwrap(),
        b.evaluation.as_ref().unwrap(),
    );
    assert_eq!(ea.model.users, eb.model.users);
    assert!((ea.model.ndcg_at_10 - eb.model.ndcg_at_10).abs() <= 1e-3);
}

/// The events of `topic` in `store`'s `events/`, and how many of them the counts job counted.
pub async fn held_and_counted(store: &Store, topic: &str) -> (i64, i64) {
    let held = recsys_ingest::sink::written_files(store, topic)
        .await
        .unwrap()
        .iter()
        .map(|(_, first, last)| last - first + 1)
        .sum();
    let counted = recsys_ingest::counts::counted(store, topic).await.unwrap();
    (held, counted)
}
