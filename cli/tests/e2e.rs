//! End-to-end tests of generate → clean → sort: on the embedded cluster, on a cluster of real
//! scheduler and executor processes, against an S3 server, and through the `recsys` binary.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{TimestampMicrosecondType, UInt64Type};
use common::*;
use recsys_core::Store;
use recsys_core::schema::{REJECTS_DIR, SORTED_DIR};
use recsys_datasets::Manifest;
use recsys_datasets::generate::LISTENS_FILE;
use recsys_jobs::Cluster;
use recsys_jobs::clean::{CleanSummary, TsvInput, run_clean};
use recsys_jobs::sort::run_sort;

/// A listen in sort order: (ts, user, track id, artist id, artist name, track name).
type Row = (i64, String, String, String, String, String);

fn rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let s = |i: usize| b.column(i).as_string::<i32>();
        let ts = b.column(1).as_primitive::<TimestampMicrosecondType>();
        for r in 0..b.num_rows() {
            out.push((
                ts.value(r),
                s(0).value(r).to_string(),
                s(4).value(r).to_string(),
                s(2).value(r).to_string(),
                s(3).value(r).to_string(),
                s(5).value(r).to_string(),
            ));
        }
    }
    out
}

fn check_clean(summary: &CleanSummary, manifest: &Manifest) {
    assert_eq!(
        summary.lines, manifest.lines,
        "every input line is accounted for"
    );
    assert_eq!(summary.clean_rows, manifest.expected_clean_rows);
    let expected: BTreeMap<&str, u64> = manifest
        .malformed
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    let got: BTreeMap<&str, u64> = summary
        .rejected
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(got, expected, "rejected lines by reason");
}

/// Sorted files: globally ordered by (ts, user, track, …) across files, ranges disjoint.
fn check_sorted(files: &[(std::path::PathBuf, Vec<RecordBatch>)], expected_rows: u64) -> Vec<Row> {
    let mut all = Vec::new();
    let mut last_max: Option<i64> = None;
    for (path, batches) in files {
        let r = rows(batches);
        assert!(!r.is_empty(), "{} is empty", path.display());
        assert!(
            r.windows(2).all(|w| w[0] <= w[1]),
            "{} is not sorted",
            path.display()
        );
        if let Some(prev) = last_max {
            assert!(prev < r[0].0, "time ranges overlap at {}", path.display());
        }
        last_max = Some(r.last().unwrap().0);
        all.extend(r);
    }
    assert_eq!(all.len() as u64, expected_rows);
    all
}

/// Every reject names the right line of the raw file, byte for byte.
fn check_rejects(lake: &std::path::Path, raw_file: &std::path::Path, manifest: &Manifest) {
    let raw = std::fs::read(raw_file).unwrap();
    let lines: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
    let rejects = read_parquet_dir(&lake.join(REJECTS_DIR));
    assert_eq!(rejects.len(), 1, "one rejects file");
    let mut n = 0;
    for b in &rejects[0].1 {
        let line = b.column(1).as_primitive::<UInt64Type>();
        let bytes = b.column(3).as_binary::<i32>();
        for r in 0..b.num_rows() {
            assert_eq!(
                lines[line.value(r) as usize - 1],
                bytes.value(r),
                "line {}",
                line.value(r)
            );
            n += 1;
        }
    }
    assert_eq!(n, manifest.lines - manifest.expected_clean_rows);
}

async fn clean_and_sort(
    cluster: &Cluster,
    raw: &Store,
    lake: &Store,
    files: usize,
) -> CleanSummary {
    let input = TsvInput::resolve(raw.location(), &Default::default())
        .await
        .unwrap();
    let summary = run_clean(cluster, &input, lake).await.unwrap();
    let sorted = run_sort(cluster, lake, Some(files)).await.unwrap();
    assert_eq!(sorted.rows, summary.clean_rows);
    assert_eq!(sorted.files.len(), files);
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_and_process_cluster_agree() {
    tokio::time::timeout(Duration::from_secs(420), async {
        let dir = tempfile::tempdir().unwrap();
        let raw = local_store(&dir.path().join("raw"));
        let manifest = generate(&small_config(), &raw).await;

        // 7 files from 4 sort tasks (two per slot): most tasks write several ranges.
        let embedded = Cluster::embedded(&Default::default(), 2).await.unwrap();
        let lake_a = local_store(&dir.path().join("a"));
        let clean_a = clean_and_sort(&embedded, &raw, &lake_a, 7).await;
        check_clean(&clean_a, &manifest);
        check_rejects(
            &dir.path().join("a"),
            &dir.path().join("raw").join(LISTENS_FILE),
            &manifest,
        );

        let processes = process_cluster(2);
        let remote = Cluster::remote(processes.url(), &Default::default(), 2, true)
            .await
            .unwrap();
        let lake_b = local_store(&dir.path().join("b"));
        let clean_b = clean_and_sort(&remote, &raw, &lake_b, 7).await;
        check_clean(&clean_b, &manifest);

        let sorted_a = check_sorted(
            &read_parquet_dir(&dir.path().join("a").join(SORTED_DIR)),
            manifest.expected_clean_rows,
        );
        let sorted_b = check_sorted(
            &read_parquet_dir(&dir.path().join("b").join(SORTED_DIR)),
            manifest.expected_clean_rows,
        );
        assert!(
            sorted_a == sorted_b,
            "cluster output differs from embedded output"
        );

        // Sorting lost and duplicated nothing: the same multiset as the clean output.
        let mut clean_rows: Vec<Row> =
            read_parquet_dir(&dir.path().join("a").join("clean/listens"))
                .iter()
                .flat_map(|(_, b)| rows(b))
                .collect();
        clean_rows.sort();
        assert!(clean_rows == sorted_a, "sorted rows are not the clean rows");
        // Missing MBIDs got derived ids; ids are never empty.
        assert!(sorted_a.iter().all(|r| !r.2.is_empty() && !r.3.is_empty()));
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_jobs_run_against_an_s3_server() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let s3 = S3Server::start("lake").await;
        let lake = Store::open("s3://lake/prod", &s3.options).unwrap();
        let raw = lake.child("raw");
        let config = recsys_datasets::GenerateConfig {
            events: 20_000,
            ..small_config()
        };
        let manifest = generate(&config, &raw).await;
        let cluster = Cluster::embedded(&s3.options, 2).await.unwrap();
        let input = TsvInput::resolve(raw.location(), &s3.options)
            .await
            .unwrap();
        let cleaned = run_clean(&cluster, &input, &lake).await.unwrap();
        check_clean(&cleaned, &manifest);
        let sorted = run_sort(&cluster, &lake, Some(3)).await.unwrap();
        assert_eq!(sorted.rows, manifest.expected_clean_rows);
        let store = lake.object_store();
        let mut files = Vec::new();
        for f in &sorted.files {
            assert!(
                f.path.starts_with("prod/sorted/listens/part-"),
                "{}",
                f.path
            );
            let (batches, _) =
                recsys_jobs::lake::read_parquet(store.as_ref(), &f.path.as_str().into())
                    .await
                    .unwrap();
            files.push((std::path::PathBuf::from(&f.path), batches));
        }
        check_sorted(&files, manifest.expected_clean_rows);
        let (rejects, _) =
            recsys_jobs::lake::read_parquet(store.as_ref(), &lake.path("rejects/rejects.parquet"))
                .await
                .unwrap();
        let n: usize = rejects.iter().map(|b| b.num_rows()).sum();
        assert_eq!(n as u64, manifest.lines - manifest.expected_clean_rows);
    })
    .await
    .expect("test timed out");
}

#[test]
fn unreachable_scheduler_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("df://127.0.0.1:{}", free_port());
    let out = std::process::Command::new(RECSYS)
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "submit",
            "sort",
            "--scheduler",
            &url,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&url), "{stderr}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

fn als_config() -> recsys_datasets::GenerateConfig {
    recsys_datasets::GenerateConfig {
        users: 300,
        tracks: 4000,
        events: 150_000,
        seed: 5,
        groups: 8,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn als_learns_the_planted_tastes_and_exact_solves_never_raise_the_loss() {
    use recsys_jobs::als::{AlsParams, Solver, TrainOptions, train};
    tokio::time::timeout(Duration::from_secs(600), async {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::embedded(&Default::default(), 2).await.unwrap();
        let lake = sorted_lake(&cluster, dir.path(), &als_config()).await;

        let params = AlsParams {
            rank: 16,
            iterations: 6,
            solver: Solver::Cholesky,
            ..AlsParams::default()
        };
        let exact = train(&cluster, &lake, &params, &TrainOptions::default(), |_| {})
            .await
            .unwrap();
        let losses: Vec<f64> = exact.iterations.iter().map(|s| s.loss).collect();
        assert!(
            losses.windows(2).all(|w| w[1] <= w[0] * (1.0 + 1e-6)),
            "loss went up: {losses:?}"
        );

        let cg = train(
            &cluster,
            &lake,
            &AlsParams {
                rank: 16,
                iterations: 10,
                ..AlsParams::default()
            },
            &TrainOptions::default(),
            |_| {},
        )
        .await
        .unwrap();
        let e = cg.evaluation.unwrap();
        assert!(e.model.users > 250, "{e:?}");
        assert!(
            e.model.ndcg_at_10 > 1.3 * e.popularity.ndcg_at_10,
            "ALS NDCG@10 {:.4} does not clearly beat popularity {:.4}",
            e.model.ndcg_at_10,
            e.popularity.ndcg_at_10
        );

        // The model store: files, metrics and CURRENT naming the newest version.
        let version = recsys_jobs::als::model::current(&lake)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(version, cg.version);
        let model_dir = dir.path().join("models/als").join(&version);
        for f in ["users.parquet", "items.parquet", "metrics.json", "loss.svg"] {
            assert!(model_dir.join(f).exists(), "{f} missing");
        }
        // The users' plays move from the work folder into history/ (serving's "already heard").
        assert!(
            read_parquet_dir(&model_dir.join("history"))
                .iter()
                .map(|(_, b)| b.iter().map(|b| b.num_rows()).sum::<usize>())
                .sum::<usize>()
                > 0
        );
        let left: Vec<_> = walk(&model_dir.join("work"))
            .into_iter()
            .filter(|p| p.is_file())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(model_dir.join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(metrics["iterations"].as_array().unwrap().len(), 10);
        assert!(
            metrics["evaluation"]["model"]["ndcg_at_10"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        let users = read_parquet_dir(&model_dir)
            .into_iter()
            .find(|(p, _)| p.ends_with("users.parquet"))
            .unwrap()
            .1;
        assert_eq!(
            users.iter().map(|b| b.num_rows()).sum::<usize>(),
            cg.model.user_ids.len()
        );
        // Intermediate files are removed (an object store has no folders; empty ones may stay).
        let work = model_dir.join("work");
        let leftovers: Vec<_> = walk(&work).into_iter().filter(|p| p.is_file()).collect();
        assert!(
            leftovers.is_empty(),
            "work files left behind: {leftovers:?}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn als_on_a_process_cluster_matches_the_embedded_model() {
    use recsys_jobs::als::{AlsParams, TrainOptions, train};
    tokio::time::timeout(Duration::from_secs(600), async {
        let dir = tempfile::tempdir().unwrap();
        let embedded = Cluster::embedded(&Default::default(), 2).await.unwrap();
        let config = recsys_datasets::GenerateConfig {
            events: 40_000,
            ..als_config()
        };
        let lake = sorted_lake(&embedded, dir.path(), &config).await;
        let params = AlsParams {
            rank: 8,
            iterations: 4,
            ..AlsParams::default()
        };
        let options = TrainOptions::default();
        let a = train(&embedded, &lake, &params, &options, |_| {})
            .await
            .unwrap();
        let processes = process_cluster(2);
        let remote = Cluster::remote(processes.url(), &Default::default(), 2, true)
            .await
            .unwrap();
        let b = train(&remote, &lake, &params, &options, |_| {})
            .await
            .unwrap();
        common::assert_same_model(&a, &b);
    })
    .await
    .expect("test timed out");
}
