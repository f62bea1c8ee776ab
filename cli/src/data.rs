//! `recsys data generate | fetch`.

use anyhow::Result;
use clap::{Args, Subcommand};
use recsys_core::Store;
use recsys_core::schema::RAW_DIR;
use recsys_datasets::GenerateConfig;
use recsys_datasets::fetch::{LASTFM_1K_URL, fetch};
use std::time::Instant;

use crate::LakeArgs;
use crate::progress::{bar, bytes_bar, rate};

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Generate a seeded Last.fm-1K-format log with planted taste structure and malformed lines.
    Generate(GenerateCommand),
    /// Download, verify and unpack the real Last.fm-1K archive.
    Fetch(FetchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// Users in the log.
    #[arg(long, env = "RECSYS_GEN_USERS", default_value_t = 1000)]
    pub users: u32,
    /// Distinct tracks.
    #[arg(long, env = "RECSYS_GEN_TRACKS", default_value_t = 50_000)]
    pub tracks: u32,
    /// Good listening events (malformed lines come on top, about 0.5 %).
    #[arg(long, env = "RECSYS_GEN_EVENTS", default_value_t = 2_000_000)]
    pub events: u64,
    /// Random seed: the same seed gives the same bytes.
    #[arg(long, env = "RECSYS_GEN_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Latent taste groups.
    #[arg(long, env = "RECSYS_GEN_GROUPS", default_value_t = 20)]
    pub groups: u32,
}

impl GenerateArgs {
    pub fn config(&self) -> GenerateConfig {
        GenerateConfig {
            users: self.users,
            tracks: self.tracks,
            events: self.events,
            seed: self.seed,
            groups: self.groups,
        }
    }
}

#[derive(Debug, Args)]
pub struct GenerateCommand {
    #[command(flatten)]
    pub generate: GenerateArgs,
    /// Output folder (a path or s3:// URL); default: the lake's `raw/`.
    #[arg(long, env = "RECSYS_GEN_OUT")]
    pub out: Option<String>,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Archive address.
    #[arg(long, env = "RECSYS_LASTFM_URL", default_value = LASTFM_1K_URL)]
    pub url: String,
    /// Output folder (a path or s3:// URL); default: the lake's `raw/`.
    #[arg(long, env = "RECSYS_FETCH_OUT")]
    pub out: Option<String>,
}

/// Opens `out`, or the lake's `raw/` folder.
fn output(lake: &LakeArgs, out: &Option<String>) -> Result<Store> {
    Ok(match out {
        Some(location) => Store::open(location, &lake.s3)?,
        None => lake.open()?.child(RAW_DIR),
    })
}

/// Generates into `out` with a progress bar; returns the manifest.
pub async fn generate(config: &GenerateConfig, out: &Store) -> Result<recsys_datasets::Manifest> {
    let started = Instant::now();
    let progress = bar(config.events, "generate", "rows");
    let manifest = recsys_datasets::generate(config, out, |n| progress.set_position(n)).await?;
    progress.finish_and_clear();
    let elapsed = started.elapsed();
    tracing::info!(
        rows = manifest.expected_clean_rows,
        malformed = manifest.lines - manifest.expected_clean_rows,
        mb = manifest.bytes / 1_000_000,
        secs = format!("{:.2}", elapsed.as_secs_f64()),
        rows_per_sec = format!("{:.0}", rate(manifest.lines, elapsed)),
        out = out.location(),
        "generated"
    );
    Ok(manifest)
}

pub async fn run(lake: &LakeArgs, cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Generate(args) => {
            let out = output(lake, &args.out)?;
            let manifest = generate(&args.generate.config(), &out).await?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        DataCommand::Fetch(args) => {
            let out = output(lake, &args.out)?;
            let progress = bytes_bar(None, "download");
            let summary = fetch(&args.url, &out, |done, total| {
                if let Some(t) = total {
                    progress.set_length(t);
                }
                progress.set_position(done);
            })
            .await?;
            progress.finish_and_clear();
            for (name, size) in &summary.files {
                println!("{}/{name}\t{size} bytes", out.location());
            }
            println!("{} listening events (verified)", summary.lines);
        }
    }
    Ok(())
}
