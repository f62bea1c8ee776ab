//! `recsys bench orchestrate`: the orchestrator's jobs on a lake's streamed events (a local
//! lake with `events/` and `sorted/`, e.g. one `recsys pipeline` built). The events are
//! hard-linked into a scratch lake, so the lake itself is not touched. Measured there:
//! * the counts job over every event (aggregation, then the totals): seconds and peak memory;
//! * the ETL and the ALS preparation over events/ as the sink wrote it, then compaction, then the
//!   same two jobs over the compacted layout, with the speed-up; DuckDB computing the same
//!   tables from the same events (`benches/duckdb_etl.py` with the events folder) beside the
//!   ETL, before and after.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use recsys_core::Store;
use recsys_core::schema::{EVENTS_DIR, SORTED_DIR};
use recsys_ingest::compact::{CompactOptions, Period, compact};
use recsys_ingest::counts::{self, Anchor};
use recsys_jobs::etl::{DEFAULT_FILES, run_etl};
use recsys_jobs::source::ListenSource;

use crate::LakeArgs;
use crate::bench::{embedded_cluster, peak_memory_mb, reset_peak_memory};
use crate::peers::{Peer, PeerPython, print_comparison};

#[derive(Debug, Args)]
pub struct OrchestrateBench {
    /// The event log's topic (its files' names in events/).
    #[arg(long, env = "RECSYS_KAFKA_TOPIC", default_value = recsys_ingest::log::EMBEDDED_TOPIC)]
    pub topic: String,
    /// Compact by month (the layout of replayed history, a file a day) rather than by day.
    #[arg(long, env = "RECSYS_BENCH_COMPACT_MONTH")]
    pub month: bool,
    /// Leave DuckDB (the ETL's peer over the same events) out.
    #[arg(long, env = "RECSYS_BENCH_NO_DUCKDB")]
    pub no_duckdb: bool,
    #[command(flatten)]
    pub python: PeerPython,
}

/// Counts job target over 1 M new events on this 2-core machine.
const COUNTS_TARGET_S_PER_M: f64 = 5.0;

/// Hard-links every file below `from` into `to`, keeping the layout.
fn link_tree(from: &Path, to: &Path) -> Result<usize> {
    std::fs::create_dir_all(to)?;
    let mut n = 0;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            n += link_tree(&entry.path(), &target)?;
        } else {
            std::fs::hard_link(entry.path(), &target)
                .or_else(|_| std::fs::copy(entry.path(), &target).map(|_| ()))?;
            n += 1;
        }
    }
    Ok(n)
}

impl OrchestrateBench {
    /// DuckDB's run of the ETL over `lake`'s events (`None` when left out).
    fn duckdb_etl(&self, lake: &Path, threads: usize) -> Result<Option<serde_json::Value>> {
        if self.no_duckdb {
            return Ok(None);
        }
        let out = tempfile::tempdir()?;
        let args = [
            lake.join(SORTED_DIR).display().to_string(),
            out.path().display().to_string(),
            threads.to_string(),
            lake.join(EVENTS_DIR).display().to_string(),
        ];
        Ok(Some(self.python.run(
            Peer::DuckDb,
            "duckdb_etl.py",
            &args,
        )?))
    }
}

/// (ETL seconds, ALS preparation seconds, plays the ETL counted), the second of two runs.
async fn jobs(cluster: &recsys_jobs::Cluster, lake: &Store) -> Result<(f64, f64, u64)> {
    let mut out = (0.0, 0.0, 0);
    for _ in 0..2 {
        let t = Instant::now();
        let etl = run_etl(cluster, lake, ListenSource::Events, DEFAULT_FILES).await?;
        let etl_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        recsys_jobs::als::prep::prepare(
            cluster,
            lake,
            "tmp/bench-prep",
            0.8,
            cluster.parallelism(),
            ListenSource::Events,
            None,
        )
        .await?;
        recsys_jobs::als::prep::remove(lake, "tmp/bench-prep").await?;
        out = (etl_s, t.elapsed().as_secs_f64(), etl.manifest.plays);
    }
    Ok(out)
}

pub async fn run(lake_args: &LakeArgs, args: OrchestrateBench) -> Result<()> {
    let source = Path::new(&lake_args.location);
    if !source.join(EVENTS_DIR).is_dir() || !source.join(SORTED_DIR).is_dir() {
        bail!(
            "{} has no events/ and sorted/ folders: run `recsys pipeline` (or stream events) into it first",
            source.display()
        );
    }
    let scratch = tempfile::tempdir_in(source)?;
    let files = link_tree(&source.join(EVENTS_DIR), &scratch.path().join(EVENTS_DIR))?;
    link_tree(&source.join(SORTED_DIR), &scratch.path().join(SORTED_DIR))?;
    let lake = Store::open(
        scratch.path().to_str().context("a UTF-8 path")?,
        &lake_args.s3,
    )?;

    reset_peak_memory();
    let before_mb = peak_memory_mb();
    let t = Instant::now();
    let aggregated = counts::aggregate(&lake, &args.topic).await?;
    let aggregate_s = t.elapsed().as_secs_f64();
    let totals = counts::totals(&lake, &args.topic, Anchor::NewestEvent, 0).await?;
    let counts_s = t.elapsed().as_secs_f64();
    let peak_mb = peak_memory_mb();
    let per_m = counts_s / (aggregated.events as f64 / 1e6);
    println!(
        "counts job: {} events in {} files → {} tracks in {counts_s:.2} s (aggregate {aggregate_s:.2} s) = {:.2} s per M events ({:.2}x the {COUNTS_TARGET_S_PER_M} s target), peak memory {peak_mb} MB ({before_mb} MB before)",
        aggregated.events,
        aggregated.files,
        totals.tracks.len(),
        per_m,
        COUNTS_TARGET_S_PER_M / per_m,
    );

    let cluster = embedded_cluster(lake_args).await?;
    let (etl_before, prep_before, plays_before) = jobs(&cluster, &lake).await?;
    let duckdb_before = args.duckdb_etl(scratch.path(), cluster.parallelism())?;
    let t = Instant::now();
    let options = CompactOptions {
        closed_before: None,
        min_files: 2,
        max_offsets: 2_000_000,
        period: if args.month {
            Period::Month
        } else {
            Period::Day
        },
    };
    let done = compact(&lake, &args.topic, options).await?;
    let compact_s = t.elapsed().as_secs_f64();
    let after_files = recsys_ingest::sink::written_files(&lake, &args.topic)
        .await?
        .len();
    println!(
        "compaction ({:?}): {} of {files} files became {} ({} events) in {compact_s:.2} s; {after_files} files now",
        options.period, done.replaced, done.written, done.events
    );
    let (etl_after, prep_after, plays_after) = jobs(&cluster, &lake).await?;
    let duckdb_after = args.duckdb_etl(scratch.path(), cluster.parallelism())?;
    if plays_after != plays_before {
        bail!("the ETL counted {plays_before} plays before compaction and {plays_after} after");
    }
    println!(
        "etl over events: {etl_before:.2} s over {files} files, {etl_after:.2} s over {after_files} ({:.2}x)",
        etl_before / etl_after
    );
    println!(
        "als preparation over events: {prep_before:.2} s, then {prep_after:.2} s ({:.2}x)",
        prep_before / prep_after
    );
    if let (Some(before), Some(after)) = (duckdb_before, duckdb_after) {
        let keys: &[&str] = &["songs_s", "users_s"];
        println!("etl over events as the sink wrote them ({files} files):");
        print_comparison(&[("etl", etl_before, keys)], &[before])?;
        println!("etl over compacted events ({after_files} files):");
        print_comparison(&[("etl", etl_after, keys)], &[after])?;
    }
    println!("  on {}", cluster.describe());
    Ok(())
}
