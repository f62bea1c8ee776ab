//! `recsys bench etl`: the master-data ETL (both tables to Parquet) at several sizes against the
//! catalog issue's Spark and DuckDB references, and the load into a fresh embedded catalog in
//! documents per second.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use recsys_catalog::EmbeddedCatalog;
use recsys_jobs::etl::{DEFAULT_FILES, run_etl};
use recsys_jobs::source::ListenSource;

use crate::LakeArgs;
use crate::bench::{embedded_cluster, sorted_bench_lake};
use crate::catalog::{LoadArgs, load_catalog};

#[derive(Debug, Args)]
pub struct EtlBench {
    #[command(flatten)]
    pub sizes: crate::bench::Sizes,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// The reference timings on this machine class (seconds, both tables to Parquet).
const REFERENCES: &[(u64, f64, f64)] = &[(2_000_000, 41.0, 1.1), (20_000_000, 298.0, 22.0)];
/// Catalog loading target, documents per second into the embedded store.
const LOAD_TARGET: f64 = 50_000.0;

fn duckdb(sorted: &std::path::Path, threads: usize) -> Result<f64> {
    let scratch = tempfile::tempdir()?;
    let v = crate::bench::python_bench(
        "duckdb_etl.py",
        "DuckDB",
        &[
            sorted.display().to_string(),
            scratch.path().display().to_string(),
            threads.to_string(),
        ],
    )?;
    Ok(v["songs_s"].as_f64().unwrap_or_default() + v["users_s"].as_f64().unwrap_or_default())
}

pub async fn run(lake_args: &LakeArgs, args: EtlBench) -> Result<()> {
    let cluster = embedded_cluster(lake_args).await?;
    for &rows in &args.sizes.rows {
        let lake = sorted_bench_lake(lake_args, rows).await?;
        // One warm-up run (file cache, allocator), then the measured one.
        run_etl(&cluster, &lake, ListenSource::Listens, DEFAULT_FILES).await?;
        let t = Instant::now();
        let etl = run_etl(&cluster, &lake, ListenSource::Listens, DEFAULT_FILES).await?;
        let secs = t.elapsed().as_secs_f64();
        let m = &etl.manifest;
        println!(
            "etl {rows} rows: {secs:.2} s ({:.2} M plays/s) → {} songs, {} users, on {}",
            m.plays as f64 / secs / 1e6,
            m.songs.rows,
            m.users.rows,
            cluster.describe()
        );
        if let Some(&(_, spark, duck)) = REFERENCES.iter().find(|r| r.0 == rows) {
            println!(
                "  vs Spark local[2] (reference {spark} s): {:.1}x faster (target ≥ 20x); vs DuckDB 2 threads (reference {duck} s): {:.2}x (target ≥ 1)",
                spark / secs,
                duck / secs
            );
        }
        if args.sizes.duckdb {
            let local = std::path::Path::new(lake.location()).join(recsys_core::schema::SORTED_DIR);
            let d = duckdb(&local, cluster.parallelism())?;
            println!(
                "  vs DuckDB measured now: {d:.2} s ({:.2}x, >1 = recsys faster)",
                d / secs
            );
        }

        let dir = tempfile::tempdir()?;
        let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb")).await?;
        let (report, elapsed) = load_catalog(&catalog, &lake, &args.load, false).await?;
        let docs = report.songs.loaded + report.users.loaded;
        let rate = docs as f64 / elapsed.as_secs_f64();
        println!(
            "  load into a new embedded catalog: {docs} documents in {:.2} s = {rate:.0} docs/s ({:.2}x the {LOAD_TARGET:.0}/s target)",
            elapsed.as_secs_f64(),
            rate / LOAD_TARGET
        );
    }
    Ok(())
}
