//! `recsys submit <job>`: batch jobs on a Ballista cluster (embedded unless `--scheduler`).

use anyhow::Result;
use clap::{Args, Subcommand};
use recsys_core::Store;
use recsys_core::schema::RAW_DIR;
use recsys_jobs::Cluster;
use recsys_jobs::clean::{CleanSummary, TsvInput};
use recsys_jobs::sort::SortSummary;

use crate::progress::Bars;
use crate::{ClusterArgs, LakeArgs};

#[derive(Debug, Subcommand)]
pub enum SubmitCommand {
    /// Parse the raw TSV log into typed Parquet, quarantining malformed lines.
    Clean(CleanArgs),
    /// Sort clean listens by (timestamp, user, track) into time-ranged Parquet files.
    Sort(SortArgs),
    /// Train implicit ALS on the sorted listens, evaluate it and store it as a model version.
    Als(AlsCommand),
    /// Build the song and user master data (Parquet in catalog/) and load it into the catalog.
    Etl(crate::catalog::EtlArgs),
    /// Embed every catalog song's lyrics with MiniLM into the vector store and embeddings/lyrics/.
    Embed(crate::lyrics::EmbedArgs),
}

#[derive(Debug, Args)]
pub struct AlsCommand {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub als: crate::als::AlsArgs,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// TSV file or folder to clean (a path or s3:// URL); default: the lake's `raw/`.
    #[arg(long, env = "RECSYS_INPUT")]
    pub input: Option<String>,
}

#[derive(Debug, Args)]
pub struct SortArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Number of sorted files (default: one per 500 k rows, at least two).
    #[arg(long, env = "RECSYS_SORT_FILES")]
    pub files: Option<usize>,
}

/// Resolves the clean input: `--input`, or the lake's `raw/`.
pub async fn clean_input(
    lake_args: &LakeArgs,
    lake: &Store,
    input: Option<&str>,
) -> Result<TsvInput> {
    let location = match input {
        Some(location) => location.to_string(),
        None => lake.child(RAW_DIR).location().to_string(),
    };
    Ok(TsvInput::resolve(&location, &lake_args.s3).await?)
}

pub async fn clean(cluster: &Cluster, input: &TsvInput, lake: &Store) -> Result<CleanSummary> {
    Ok(recsys_flow::pipeline::clean(cluster, input, lake, &Bars).await?)
}

pub async fn sort(cluster: &Cluster, lake: &Store, files: Option<usize>) -> Result<SortSummary> {
    Ok(recsys_flow::pipeline::sort(cluster, lake, files, &Bars).await?)
}

pub fn print_clean(summary: &CleanSummary) {
    println!(
        "clean: {} lines in {} file(s) → {} clean rows in {} files, {} rejected ({:.3} %), {:.2} s",
        summary.lines,
        summary.input_files,
        summary.clean_rows,
        summary.files_written,
        summary.rejected_total(),
        100.0 * summary.rejected_total() as f64 / summary.lines.max(1) as f64,
        summary.elapsed.as_secs_f64()
    );
    for (reason, n) in &summary.rejected {
        println!("  rejected {:<24} {n}", reason.as_str());
    }
}

pub fn print_sort(summary: &SortSummary, lake: &Store) {
    println!(
        "sort: {} rows → {} time-ranged files, {:.2} s",
        summary.rows,
        summary.files.len(),
        summary.elapsed.as_secs_f64()
    );
    let mut bounds = vec!["start".to_string()];
    bounds.extend(
        summary
            .boundaries
            .iter()
            .map(|&b| recsys_core::time::date_string(b)),
    );
    bounds.push("end".to_string());
    for (i, f) in summary.files.iter().enumerate() {
        let range = match (bounds.get(i), bounds.get(i + 1)) {
            (Some(a), Some(b)) if summary.files.len() == summary.boundaries.len() + 1 => {
                format!("[{a} .. {b})")
            }
            _ => String::new(),
        };
        println!(
            "  {:<40} {:>10} rows  {range}",
            lake.relative(&f.path),
            f.rows
        );
    }
}

pub async fn run(lake_args: &LakeArgs, cmd: SubmitCommand) -> Result<()> {
    let lake = lake_args.open()?;
    match cmd {
        SubmitCommand::Clean(args) => {
            let cluster = args.cluster.connect(&lake_args.s3).await?;
            let input = clean_input(lake_args, &lake, args.input.as_deref()).await?;
            print_clean(&clean(&cluster, &input, &lake).await?);
        }
        SubmitCommand::Sort(args) => {
            let cluster = args.cluster.connect(&lake_args.s3).await?;
            print_sort(&sort(&cluster, &lake, args.files).await?, &lake);
        }
        SubmitCommand::Als(args) => {
            let cluster = args.cluster.connect(&lake_args.s3).await?;
            let summary = crate::als::train(&cluster, &lake, &args.als).await?;
            crate::als::print_summary(&summary, &lake);
        }
        SubmitCommand::Etl(args) => crate::catalog::submit(lake_args, args).await?,
        SubmitCommand::Embed(args) => {
            let lake = lake_args.open()?;
            crate::lyrics::submit_embed(lake_args, &lake, &args).await?;
        }
    }
    Ok(())
}
