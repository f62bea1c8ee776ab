//! The catalog from the command line: `recsys submit etl` (the ETL job, then the load),
//! `recsys catalog load | stats | search`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use recsys_catalog::load::LoadReport;
use recsys_catalog::{Catalog, MongoOptions};
use recsys_core::Store;
use recsys_jobs::Cluster;
use recsys_jobs::etl::{DEFAULT_FILES, EtlSummary};
use recsys_jobs::source::ListenSource;

use crate::progress::{Bars, rate};
use crate::{ClusterArgs, LakeArgs};

/// Which catalog: MongoDB when `--mongo` is given, else the embedded store.
#[derive(Debug, Clone, Args)]
pub struct CatalogArgs {
    /// MongoDB connection string, e.g. `mongodb://mongodb:27017`; without it the embedded
    /// catalog is used.
    #[arg(long, env = "RECSYS_MONGO")]
    pub mongo: Option<String>,
    /// MongoDB database.
    #[arg(long, env = "RECSYS_MONGO_DB", default_value = "music_recsys")]
    pub mongo_db: String,
    /// MongoDB connect and server-selection timeout, seconds.
    #[arg(long, env = "RECSYS_MONGO_TIMEOUT_S", default_value_t = 10)]
    pub mongo_timeout_s: u64,
    /// Attempts per MongoDB write batch on network errors.
    #[arg(long, env = "RECSYS_MONGO_RETRIES", default_value_t = 3)]
    pub mongo_retries: u32,
    /// The embedded catalog file (default: `catalog.redb` in a local lake's folder, else
    /// `./catalog.redb`).
    #[arg(long, env = "RECSYS_CATALOG_PATH")]
    pub catalog_path: Option<PathBuf>,
}

impl CatalogArgs {
    pub async fn open(&self, lake: &Store) -> Result<Box<dyn Catalog>> {
        let mongo = self.mongo.as_deref().map(|uri| MongoOptions {
            database: self.mongo_db.clone(),
            timeout: Duration::from_secs(self.mongo_timeout_s.max(1)),
            retries: self.mongo_retries.max(1),
            ..MongoOptions::new(uri)
        });
        let path = self
            .catalog_path
            .clone()
            .unwrap_or_else(|| recsys_flow::beside_lake(lake, "catalog.redb"));
        Ok(recsys_catalog::open(mongo.as_ref(), &path).await?)
    }
}

/// Where a batch job's plays come from (`--source` of the ETL, `--ratings` of ALS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// The streamed events when `events/` has any, else the sorted listens.
    Auto,
    /// The sorted listens.
    Listens,
    /// The streamed events.
    Events,
}

impl From<Source> for ListenSource {
    fn from(source: Source) -> ListenSource {
        match source {
            Source::Auto => ListenSource::Auto,
            Source::Listens => ListenSource::Listens,
            Source::Events => ListenSource::Events,
        }
    }
}

#[derive(Debug, Args)]
pub struct EtlArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub catalog: CatalogArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Where plays come from.
    #[arg(long, env = "RECSYS_ETL_SOURCE", value_enum, default_value = "auto")]
    pub source: Source,
    /// Parquet files per catalog table.
    #[arg(long, env = "RECSYS_ETL_FILES", default_value_t = DEFAULT_FILES)]
    pub files: usize,
    /// Only write the Parquet tables; do not load the catalog.
    #[arg(long, env = "RECSYS_ETL_NO_LOAD")]
    pub no_load: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Documents per catalog write (and per resume checkpoint).
    #[arg(long, env = "RECSYS_CATALOG_BATCH", default_value_t = 5000)]
    pub batch: usize,
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Load the latest ETL output into the catalog, resuming a load that stopped.
    Load {
        #[command(flatten)]
        catalog: CatalogArgs,
        #[command(flatten)]
        load: LoadArgs,
        /// Start over instead of resuming.
        #[arg(long, env = "RECSYS_CATALOG_RELOAD")]
        reload: bool,
    },
    /// Count songs, users, vectors and lyrics statuses.
    Stats {
        #[command(flatten)]
        catalog: CatalogArgs,
    },
    /// Search songs by title and artist.
    Search {
        #[command(flatten)]
        catalog: CatalogArgs,
        /// Words to find (every word must match).
        query: String,
        /// Songs to show.
        #[arg(long, env = "RECSYS_SEARCH_LIMIT", default_value_t = 10)]
        limit: usize,
        /// Matches to skip first (paging).
        #[arg(long, env = "RECSYS_SEARCH_SKIP", default_value_t = 0)]
        skip: usize,
    },
}

/// Runs the ETL job under a spinner.
pub async fn etl(
    cluster: &Cluster,
    lake: &Store,
    source: Source,
    files: usize,
) -> Result<EtlSummary> {
    Ok(recsys_flow::catalog::etl(cluster, lake, source.into(), files, &Bars).await?)
}

pub fn print_etl(summary: &EtlSummary) {
    let m = &summary.manifest;
    println!(
        "etl: {} plays ({}) → {} songs, {} users in catalog/ ({} + {} files), {:.2} s; plays_7d since {}",
        m.plays,
        m.source,
        m.songs.rows,
        m.users.rows,
        m.songs.files.len(),
        m.users.files.len(),
        summary.elapsed.as_secs_f64(),
        recsys_core::time::date_string(m.anchor_us - 7 * recsys_core::time::MICROS_PER_DAY),
    );
}

/// Loads the latest ETL output into `catalog` with a progress bar over documents.
pub async fn load_catalog(
    catalog: &dyn Catalog,
    lake: &Store,
    args: &LoadArgs,
    reload: bool,
) -> Result<(LoadReport, Duration)> {
    Ok(recsys_flow::catalog::load_catalog(catalog, lake, args.batch, reload, &Bars).await?)
}

pub fn print_load(catalog: &dyn Catalog, report: &LoadReport, elapsed: Duration) {
    let loaded = report.songs.loaded + report.users.loaded;
    let skipped = report.songs.skipped + report.users.skipped;
    println!(
        "catalog: {} songs + {} users loaded into {} in {:.2} s ({:.0} docs/s){}",
        report.songs.loaded,
        report.users.loaded,
        catalog.describe(),
        elapsed.as_secs_f64(),
        rate(loaded, elapsed),
        if skipped > 0 {
            format!(", {skipped} already loaded by an earlier attempt")
        } else {
            String::new()
        }
    );
}

fn date(ms: Option<i64>) -> String {
    ms.map_or("-".into(), |ms| recsys_core::time::date_string(ms * 1000))
}

pub async fn run(lake_args: &LakeArgs, cmd: CatalogCommand) -> Result<()> {
    let lake = lake_args.open()?;
    match cmd {
        CatalogCommand::Load {
            catalog,
            load,
            reload,
        } => {
            let catalog = catalog.open(&lake).await?;
            let (report, elapsed) = load_catalog(catalog.as_ref(), &lake, &load, reload).await?;
            print_load(catalog.as_ref(), &report, elapsed);
        }
        CatalogCommand::Stats { catalog } => {
            let catalog = catalog.open(&lake).await?;
            let s = catalog.stats().await?;
            println!("{}", catalog.describe());
            println!("  songs              {:>10}", s.songs);
            println!("  users              {:>10}", s.users);
            println!("  users with vector  {:>10}", s.users_with_vector);
            println!("  lyrics pending     {:>10}", s.lyrics_pending);
            for (status, n) in &s.lyrics {
                println!("  lyrics {:<11} {n:>10}", status.as_str());
            }
            println!("top songs (plays in the data's last 7 days):");
            for song in catalog.top_songs(5).await? {
                let st = &song.stats;
                println!(
                    "  {:>6} {:>8}  {} — {}",
                    st.plays_7d, st.plays, st.track_name, st.artist_name
                );
            }
        }
        CatalogCommand::Search {
            catalog,
            query,
            limit,
            skip,
        } => {
            let catalog = catalog.open(&lake).await?;
            let page = catalog.search_songs(&query, limit, skip).await?;
            for (i, song) in page.items.iter().enumerate() {
                let st = &song.stats;
                println!(
                    "{:>4}. {} — {}  ({} plays, {} listeners, last {})  {}",
                    skip + i + 1,
                    st.track_name,
                    st.artist_name,
                    st.plays,
                    st.listeners,
                    date(st.last_played_ms),
                    st.id
                );
            }
            if page.items.is_empty() {
                println!("no song matches every word of `{query}`");
            } else if page.has_more {
                println!("… more with --skip {}", skip + limit);
            }
        }
    }
    Ok(())
}

/// `recsys submit etl`: the ETL job, then (unless `--no-load`) the catalog load.
pub async fn submit(lake_args: &LakeArgs, args: EtlArgs) -> Result<()> {
    let lake = lake_args.open()?;
    let cluster = args.cluster.connect(&lake_args.s3).await?;
    // Open the catalog first: an unreachable MongoDB fails before the job runs.
    let catalog = if args.no_load {
        None
    } else {
        Some(args.catalog.open(&lake).await?)
    };
    print_etl(&etl(&cluster, &lake, args.source, args.files).await?);
    if let Some(catalog) = catalog {
        let (report, elapsed) = load_catalog(catalog.as_ref(), &lake, &args.load, false).await?;
        print_load(catalog.as_ref(), &report, elapsed);
    }
    Ok(())
}
