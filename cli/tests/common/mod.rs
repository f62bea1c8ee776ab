//! Shared test helpers: a Ballista cluster of real processes on 127.0.0.1, an S3 server
//! (s3s-fs, in-process), generated data, and readers for the lake's Parquet output.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use recsys_core::{S3Options, Store};
use recsys_datasets::{GenerateConfig, Manifest};

pub const RECSYS: &str = env!("CARGO_BIN_EXE_recsys");

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Child processes killed when the test ends, however it ends.
pub struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A scheduler and `executors` executor processes of our own binary, on loopback.
pub struct ProcessCluster {
    pub url: String,
    _processes: Processes,
    _work: tempfile::TempDir,
}

fn spawn(args: &[String], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(RECSYS)
        .args(args)
        .env("RECSYS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start recsys")
}

/// Waits until `url` answers HTTP 200 (executor readiness), or panics after `timeout`.
fn wait_http_ok(host_port: &str, path: &str, timeout: Duration) {
    use std::io::{Read, Write};
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(host_port) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{host_port}{path} not ready within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl ProcessCluster {
    pub fn start(executors: usize) -> ProcessCluster {
        let work = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut processes = vec![spawn(
            &[
                "scheduler".into(),
                "--bind-host".into(),
                "127.0.0.1".into(),
                "--external-host".into(),
                "127.0.0.1".into(),
                "--bind-port".into(),
                port.to_string(),
            ],
            &work.path().join("scheduler.log"),
        )];
        let mut health = Vec::new();
        for i in 0..executors {
            let dir = work.path().join(format!("executor-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let health_port = free_port();
            processes.push(spawn(
                &[
                    "executor".into(),
                    "--scheduler-host".into(),
                    "127.0.0.1".into(),
                    "--scheduler-port".into(),
                    port.to_string(),
                    "--scheduler-connect-timeout-seconds".into(),
                    "30".into(),
                    "--bind-host".into(),
                    "127.0.0.1".into(),
                    "--external-host".into(),
                    "127.0.0.1".into(),
                    "--bind-port".into(),
                    free_port().to_string(),
                    "--bind-grpc-port".into(),
                    free_port().to_string(),
                    "--bind-health-port".into(),
                    health_port.to_string(),
                    "--vcores".into(),
                    "1".into(),
                    "--work-dir".into(),
                    dir.to_string_lossy().into_owned(),
                ],
                &work.path().join(format!("executor-{i}.log")),
            ));
            health.push(health_port);
        }
        let processes = Processes(processes);
        for port in health {
            wait_http_ok(
                &format!("127.0.0.1:{port}"),
                "/readyz",
                Duration::from_secs(60),
            );
        }
        ProcessCluster {
            url: format!("df://127.0.0.1:{port}"),
            _processes: processes,
            _work: work,
        }
    }
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
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
