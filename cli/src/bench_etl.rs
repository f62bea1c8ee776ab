//! `recsys bench etl`: the master-data ETL (both tables to Parquet) at several sizes beside
//! Spark and DuckDB computing the same tables from the same files, and the load into a fresh
//! embedded catalog in documents per second.

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

/// Catalog loading target, documents per second into the embedded store.
const LOAD_TARGET: f64 = 50_000.0;

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
        let scratch = tempfile::tempdir()?;
        let sorted = std::path::Path::new(lake.location()).join(recsys_core::schema::SORTED_DIR);
        let peers = args.sizes.peers.run(
            "spark_etl.py",
            "duckdb_etl.py",
            &[
                sorted.display().to_string(),
                scratch.path().display().to_string(),
                cluster.parallelism().to_string(),
            ],
        )?;
        crate::peers::print_comparison(&[("etl", secs, &["songs_s", "users_s"])], &peers)?;

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
