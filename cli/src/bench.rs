//! `recsys bench …`: measured figures, printed with their ratio to the baselines the issues
//! state (and, with `--duckdb`, to DuckDB run side by side on the same file).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use recsys_core::schema::RAW_DIR;
use recsys_datasets::generate::LISTENS_FILE;

use crate::data::{GenerateArgs, generate};
use crate::submit::{clean, clean_input, sort};
use crate::{ClusterArgs, LakeArgs};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// generate → clean → sort at several sizes: rows/s and peak memory per step.
    Pipeline(PipelineBench),
}

#[derive(Debug, Args)]
pub struct PipelineBench {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Row counts to measure (comma separated).
    #[arg(
        long,
        env = "RECSYS_BENCH_ROWS",
        value_delimiter = ',',
        default_value = "2000000,20000000"
    )]
    pub rows: Vec<u64>,
    /// Also run DuckDB (Python package `duckdb`) on the same files, with as many threads.
    #[arg(long, env = "RECSYS_BENCH_DUCKDB")]
    pub duckdb: bool,
}

/// Reference timings on this machine class (seconds), from the foundation issue.
struct Reference {
    rows: u64,
    spark_clean: f64,
    spark_clean_sort: f64,
    duckdb_clean: f64,
    duckdb_sort: f64,
}

const REFERENCES: &[Reference] = &[
    Reference {
        rows: 2_000_000,
        spark_clean: 27.0,
        spark_clean_sort: 45.0,
        duckdb_clean: 2.5,
        duckdb_sort: 2.3,
    },
    Reference {
        rows: 20_000_000,
        spark_clean: 83.0,
        spark_clean_sort: 342.0,
        duckdb_clean: 33.0,
        duckdb_sort: 46.0,
    },
];

/// Peak resident memory since the last [`reset_peak_memory`], in MB (Linux; 0 elsewhere).
fn peak_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
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

fn reset_peak_memory() {
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

fn duckdb(tsv: &std::path::Path, scratch: &std::path::Path, threads: usize) -> Result<(f64, f64)> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../benches/duckdb_clean_sort.py"
    );
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(tsv)
        .arg(scratch)
        .arg(threads.to_string())
        .output()
        .context("running python3 for the DuckDB comparison")?;
    anyhow::ensure!(
        out.status.success(),
        "DuckDB comparison failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok((
        v["clean_s"].as_f64().unwrap_or(f64::NAN),
        v["sort_s"].as_f64().unwrap_or(f64::NAN),
    ))
}

pub async fn run(lake_args: &LakeArgs, cmd: BenchCommand) -> Result<()> {
    let BenchCommand::Pipeline(args) = cmd;
    let root = lake_args.open()?;
    let cluster = args.cluster.connect(&lake_args.s3).await?;
    println!(
        "bench pipeline on {} ({} task slots), lake {}",
        cluster.describe(),
        cluster.parallelism(),
        root.location()
    );
    for &rows in &args.rows {
        let lake = root.child(&format!("bench/{rows}"));
        let raw = lake.child(RAW_DIR);
        let config = GenerateArgs {
            users: 1000,
            tracks: 50_000,
            events: rows,
            seed: 42,
            groups: 20,
        }
        .config();
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
        let clean_sort = clean_m.secs + sort_m.secs;
        if let Some(r) = REFERENCES.iter().find(|r| r.rows == rows) {
            println!(
                "  vs Spark local[2] (reference): clean {:.1}x faster, clean+sort {:.1}x faster",
                r.spark_clean / clean_m.secs,
                r.spark_clean_sort / clean_sort
            );
            println!(
                "  vs DuckDB 2 threads (reference): clean {:.2}x, sort {:.2}x (>1 = recsys faster)",
                r.duckdb_clean / clean_m.secs,
                r.duckdb_sort / sort_m.secs
            );
        }
        if args.duckdb {
            let scratch = tempfile::tempdir()?;
            let tsv = std::path::Path::new(raw.location()).join(LISTENS_FILE);
            let (dc, ds) = duckdb(&tsv, scratch.path(), cluster.parallelism())?;
            println!(
                "  vs DuckDB measured now: clean {dc:.2}s ({:.2}x), sort {ds:.2}s ({:.2}x) (>1 = recsys faster)",
                dc / clean_m.secs,
                ds / sort_m.secs
            );
        }
    }
    Ok(())
}
