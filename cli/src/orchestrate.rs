//! `recsys orchestrate`: keeps the catalog's play counts current, unattended; `recsys status`:
//! what it did and what the system holds.
//!
//! Jobs (each on its own schedule, never overlapping itself; outcome, duration and last success
//! kept in the catalog's `job_metadata` under `job:<name>`):
//! * `counts` (every `--counts-every-s`, default 15 min): new event files → per-day aggregates →
//!   `plays_cumulative` and `plays_7d` set on the songs whose numbers changed
//!   (`recsys_ingest::counts`);
//! * `window-roll` (daily at `--roll-at`, UTC): the same publication without new events, so songs
//!   whose plays left the 7-day window drop, down to 0;
//! * `compact` (daily at `--compact-at`, UTC): each partition's small event files of a closed
//!   date (or month, `--compact-period`) become one file (`recsys_ingest::compact`).
//!
//! A daily job whose last success is older than its latest scheduled time runs at start: a
//! missed day is caught up once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use recsys_catalog::{Catalog, PlayCounts};
use recsys_core::Store;
use recsys_core::manifest::EtlManifest;
use recsys_core::time::MICROS_PER_DAY;
use recsys_ingest::compact::{CompactOptions, Period, compact};
use recsys_ingest::counts::{self, Anchor, Counts};
use recsys_ingest::log::EMBEDDED_TOPIC;
use serde::{Deserialize, Serialize};

use crate::LakeArgs;
use crate::catalog::CatalogArgs;

const MS_PER_DAY: i64 = MICROS_PER_DAY / 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Job {
    Counts,
    WindowRoll,
    Compact,
}

/// When a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Schedule {
    /// Every so many ms after its last success.
    Every(i64),
    /// Daily at this minute after midnight, UTC.
    Daily(i64),
}

impl Job {
    const ALL: [Job; 3] = [Job::Counts, Job::WindowRoll, Job::Compact];

    fn name(self) -> &'static str {
        match self {
            Job::Counts => "counts",
            Job::WindowRoll => "window-roll",
            Job::Compact => "compact",
        }
    }

    fn schedule(self, args: &OrchestrateArgs) -> Result<Schedule> {
        Ok(match self {
            Job::Counts => Schedule::Every((args.counts_every_s.max(0.1) * 1000.0) as i64),
            Job::WindowRoll => Schedule::Daily(parse_time("--roll-at", &args.roll_at)?),
            Job::Compact => Schedule::Daily(parse_time("--compact-at", &args.compact_at)?),
        })
    }

    fn key(self) -> String {
        format!("job:{}", self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WindowClock {
    /// Today (UTC): a live system.
    Wall,
    /// The newest event's day: replayed historical data (the embedded demo).
    Newest,
}

#[derive(Debug, Args)]
pub struct OrchestrateArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Run this job once now and exit with its outcome.
    #[arg(long, env = "RECSYS_ORCHESTRATE_ONCE", value_enum)]
    pub once: Option<Job>,
    /// Seconds between runs of the counts job.
    #[arg(long, env = "RECSYS_COUNTS_EVERY_S", default_value_t = 900.0)]
    pub counts_every_s: f64,
    /// Daily time (UTC, HH:MM) of the window roll.
    #[arg(long, env = "RECSYS_ROLL_AT", default_value = "00:05")]
    pub roll_at: String,
    /// Random delay added to each interval run, as a fraction of its interval (spreads load).
    #[arg(long, env = "RECSYS_JOB_JITTER", default_value_t = 0.1)]
    pub jitter: f64,
    /// Which clock ends the 7-day window: `wall` (a live system) or `newest` (replayed data).
    #[arg(
        long,
        env = "RECSYS_WINDOW_CLOCK",
        value_enum,
        default_value = "newest"
    )]
    pub window_clock: WindowClock,
    /// The event log's topic (its files' names in events/).
    #[arg(long, env = "RECSYS_TOPIC", default_value = EMBEDDED_TOPIC)]
    pub topic: String,
    /// Daily time (UTC, HH:MM) of the compaction of closed dates' event files.
    #[arg(long, env = "RECSYS_COMPACT_AT", default_value = "03:00")]
    pub compact_at: String,
    /// Fewest consecutive files of a partition and date worth compacting.
    #[arg(long, env = "RECSYS_COMPACT_MIN_FILES", default_value_t = 8)]
    pub compact_min_files: usize,
    /// Most events (offsets) one compacted file holds.
    #[arg(long, env = "RECSYS_COMPACT_MAX_EVENTS", default_value_t = 2_000_000)]
    pub compact_max_events: i64,
    /// What one compacted file holds at most: a `day` (a live system's many files a day) or a
    /// `month` (few events a day, as replayed history: each day is one small file already).
    #[arg(long, env = "RECSYS_COMPACT_PERIOD", value_enum, default_value = "day")]
    pub compact_period: CompactPeriod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompactPeriod {
    Day,
    Month,
}

/// A job's record in `job_metadata`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JobRecord {
    pub last_start_ms: i64,
    pub last_end_ms: i64,
    pub duration_ms: i64,
    /// `ok` or `failed`.
    pub outcome: String,
    pub detail: String,
    pub last_success_ms: Option<i64>,
}

async fn record(catalog: &dyn Catalog, job: Job) -> Result<Option<JobRecord>> {
    match catalog.checkpoint(&job.key()).await? {
        Some(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("the record of job {} in job_metadata", job.name())
        })?)),
        None => Ok(None),
    }
}

/// What one run of a job did, for people.
async fn run_job(
    job: Job,
    lake: &Store,
    catalog: &dyn Catalog,
    args: &OrchestrateArgs,
) -> Result<String> {
    let anchor = match args.window_clock {
        WindowClock::Wall => Anchor::WallClock,
        WindowClock::Newest => Anchor::NewestEvent,
    };
    let aggregated = match job {
        Job::Counts => Some(counts::aggregate(lake, &args.topic).await?),
        Job::WindowRoll => None,
        Job::Compact => {
            let options = CompactOptions {
                // A live system's dates close at midnight; replayed data's newest date is open.
                closed_before: match args.window_clock {
                    WindowClock::Wall => Some(recsys_catalog::now_ms().div_euclid(MS_PER_DAY)),
                    WindowClock::Newest => None,
                },
                min_files: args.compact_min_files,
                max_offsets: args.compact_max_events.max(1),
                period: match args.compact_period {
                    CompactPeriod::Day => Period::Day,
                    CompactPeriod::Month => Period::Month,
                },
            };
            let done = compact(lake, &args.topic, options).await?;
            return Ok(format!(
                "{} files written for {} ({} events); {} covered files of an interrupted run deleted",
                done.written, done.replaced, done.events, done.leftovers
            ));
        }
    };
    let (set, window_end) = publish(lake, catalog, &args.topic, anchor).await?;
    let window = window_end.map_or("none".into(), |d| {
        recsys_core::time::date_string(d * MICROS_PER_DAY)
    });
    Ok(match aggregated {
        Some(a) => format!(
            "{} event files, {} events, {} plays counted; {set} songs set; window ends {window}",
            a.files, a.events, a.plays
        ),
        None => format!("{set} songs set; window ends {window}"),
    })
}

/// Sets the counts that changed since the last publication; returns (songs set, window end).
async fn publish(
    lake: &Store,
    catalog: &dyn Catalog,
    topic: &str,
    anchor: Anchor,
) -> Result<(usize, Option<i64>)> {
    let today = recsys_catalog::now_ms().div_euclid(MS_PER_DAY);
    let totals = counts::totals(lake, topic, anchor, today).await?;
    let etl = counts::etl_tracks(lake).await?;
    // Plays the ETL counted from sorted listens are the base the events add to; an ETL over
    // events counted the same events the aggregates hold.
    let listens_base = EtlManifest::read(lake)
        .await?
        .is_some_and(|m| m.source == "listens");
    let mut new: BTreeMap<String, Counts> = totals.tracks;
    if listens_base {
        for (id, plays) in &etl {
            new.entry(id.clone()).or_default().plays += plays;
        }
    }
    let old = counts::published(lake).await?;
    let changes = counts::changes(&old, &new);
    let (known, unknown): (Vec<_>, Vec<_>) = changes
        .iter()
        .map(|(id, c)| PlayCounts {
            id: id.clone(),
            plays: c.plays,
            plays_7d: c.plays_7d,
        })
        .partition(|c| etl.contains_key(&c.id) || old.contains_key(&c.id));
    for chunk in known.chunks(5_000) {
        catalog.set_play_counts(chunk, false).await?;
    }
    for chunk in unknown.chunks(5_000) {
        catalog.set_play_counts(chunk, true).await?;
    }
    counts::set_published(lake, &new).await?;
    Ok((changes.len(), totals.window_end))
}

/// Runs `job` once, recording its outcome in `job_metadata`.
async fn run_recorded(
    job: Job,
    lake: &Store,
    catalog: &dyn Catalog,
    args: &OrchestrateArgs,
) -> Result<String> {
    let started = Instant::now();
    let start_ms = recsys_catalog::now_ms();
    let previous = record(catalog, job).await.ok().flatten();
    let result = run_job(job, lake, catalog, args).await;
    let end_ms = recsys_catalog::now_ms();
    let (outcome, detail) = match &result {
        Ok(detail) => ("ok", detail.clone()),
        Err(e) => ("failed", format!("{e:#}")),
    };
    let rec = JobRecord {
        last_start_ms: start_ms,
        last_end_ms: end_ms,
        duration_ms: started.elapsed().as_millis() as i64,
        outcome: outcome.into(),
        detail,
        last_success_ms: if result.is_ok() {
            Some(end_ms)
        } else {
            previous.and_then(|p| p.last_success_ms)
        },
    };
    catalog
        .set_checkpoint(&job.key(), Some(&serde_json::to_string(&rec)?))
        .await?;
    match &result {
        Ok(detail) => {
            tracing::info!(job = job.name(), elapsed = ?started.elapsed(), "{detail}")
        }
        Err(e) => tracing::error!(job = job.name(), elapsed = ?started.elapsed(), "{e:#}"),
    }
    result
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a time in ms.
fn when(ms: i64) -> String {
    let mut out = Vec::new();
    recsys_core::time::format_timestamp_secs(ms * 1000, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Minutes after midnight of `HH:MM` (the value of `flag`).
fn parse_time(flag: &str, text: &str) -> Result<i64> {
    let (h, m) = text
        .split_once(':')
        .with_context(|| format!("{flag} {text}: expected HH:MM"))?;
    let (h, m): (i64, i64) = (
        h.trim().parse().with_context(|| format!("{flag} {text}"))?,
        m.trim().parse().with_context(|| format!("{flag} {text}"))?,
    );
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        bail!("{flag} {text}: not a time of day");
    }
    Ok(h * 60 + m)
}

/// The latest daily time at or before `now_ms`.
fn latest_daily(now_ms: i64, minute: i64) -> i64 {
    let today = now_ms.div_euclid(MS_PER_DAY) * MS_PER_DAY + minute * 60_000;
    if today <= now_ms {
        today
    } else {
        today - MS_PER_DAY
    }
}

/// When a job on `schedule` runs next, given its last success and now (both ms).
fn next_run(schedule: Schedule, last_ok: Option<i64>, now: i64) -> i64 {
    match schedule {
        Schedule::Every(every_ms) => last_ok.map_or(now, |t| (t + every_ms).max(now)),
        // Due when the latest scheduled time has no success after it; a clock that jumped
        // over several days runs it once.
        Schedule::Daily(minute) => {
            let due = latest_daily(now, minute);
            if last_ok.is_some_and(|t| t >= due) {
                due + MS_PER_DAY
            } else {
                now
            }
        }
    }
}

async fn job_loop(
    job: Job,
    lake: Store,
    catalog: std::sync::Arc<dyn Catalog>,
    args: std::sync::Arc<OrchestrateArgs>,
    schedule: Schedule,
) {
    let mut last_ok = record(catalog.as_ref(), job)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.last_success_ms);
    let mut jittered = schedule;
    loop {
        let now = recsys_catalog::now_ms();
        let at = next_run(jittered, last_ok, now);
        // Sleep in short steps: a wall clock that jumps is noticed.
        if at > now {
            tokio::time::sleep(Duration::from_millis((at - now).min(1_000) as u64)).await;
            continue;
        }
        // The run is awaited here, so a run never overlaps the previous one; a run that takes
        // longer than the interval delays the next instead of stacking up.
        match run_recorded(job, &lake, catalog.as_ref(), &args).await {
            Ok(_) => {
                last_ok = Some(recsys_catalog::now_ms());
                if let Schedule::Every(ms) = schedule {
                    let jitter = rand::random::<f64>() * args.jitter.clamp(0.0, 1.0);
                    jittered = Schedule::Every(ms + (jitter * ms as f64) as i64);
                }
            }
            // Tried again after an interval (a daily job: after a minute).
            Err(_) => {
                let retry_ms = match schedule {
                    Schedule::Every(ms) => ms,
                    Schedule::Daily(_) => 60_000,
                };
                tokio::time::sleep(Duration::from_millis(retry_ms as u64)).await;
            }
        }
    }
}

pub async fn run(lake_args: &LakeArgs, args: OrchestrateArgs) -> Result<()> {
    let lake = lake_args.open()?;
    let schedules = Job::ALL
        .iter()
        .map(|job| job.schedule(&args))
        .collect::<Result<Vec<_>>>()?;
    let catalog: std::sync::Arc<dyn Catalog> = args.catalog.open(&lake).await?.into();
    if let Some(job) = args.once {
        let detail = run_recorded(job, &lake, catalog.as_ref(), &args).await?;
        println!("{}: {detail}", job.name());
        return Ok(());
    }
    tracing::info!(
        lake = %lake.location(),
        catalog = %catalog.describe(),
        counts_every_s = args.counts_every_s,
        roll_at = %args.roll_at,
        compact_at = %args.compact_at,
        "orchestrator running"
    );
    let args = std::sync::Arc::new(args);
    let mut tasks = tokio::task::JoinSet::new();
    for (job, schedule) in Job::ALL.into_iter().zip(schedules) {
        tasks.spawn(job_loop(
            job,
            lake.clone(),
            catalog.clone(),
            args.clone(),
            schedule,
        ));
    }
    // SIGTERM/SIGINT: the jobs stop where they are; every write they make is atomic (one put
    // per aggregate file, catalog values set, not added), so a stop mid-run loses nothing and
    // the next start resumes from the aggregate files.
    crate::stream::shutdown_signal().await;
    tasks.shutdown().await;
    tracing::info!("orchestrator stopped");
    Ok(())
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub catalog: CatalogArgs,
    /// Print JSON for scripts.
    #[arg(long, env = "RECSYS_STATUS_JSON")]
    pub json: bool,
    /// The event log's topic.
    #[arg(long, env = "RECSYS_TOPIC", default_value = EMBEDDED_TOPIC)]
    pub topic: String,
}

pub async fn status(lake_args: &LakeArgs, args: StatusArgs) -> Result<()> {
    let lake = lake_args.open()?;
    let catalog = args.catalog.open(&lake).await?;
    let mut jobs = serde_json::Map::new();
    for job in Job::ALL {
        jobs.insert(
            job.name().into(),
            serde_json::to_value(record(catalog.as_ref(), job).await?)?,
        );
    }
    let model = recsys_core::models::current_als(&lake).await?;
    let metrics = match &model {
        Some(v) => {
            let rel = format!("{}/{v}/metrics.json", recsys_core::models::ALS_MODELS_DIR);
            match object_store::ObjectStoreExt::get(&*lake.object_store(), &lake.path(&rel)).await {
                Ok(got) => serde_json::from_slice::<serde_json::Value>(&got.bytes().await?).ok(),
                Err(_) => None,
            }
        }
        None => None,
    };
    let stats = catalog.stats().await?;
    let held = recsys_ingest::sink::written_files(&lake, &args.topic).await?;
    let held_events: i64 = held.iter().map(|(_, f, l)| l - f + 1).sum();
    let counted_events = counts::counted(&lake, &args.topic).await?;
    let out = serde_json::json!({
        "jobs": jobs,
        "model": { "version": model, "metrics": metrics },
        "catalog": { "songs": stats.songs, "users": stats.users, "users_with_vector": stats.users_with_vector },
        "events": { "files": held.len(), "held": held_events, "counted": counted_events, "lag": held_events - counted_events },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "recsys status: lake {}, catalog {}",
        lake.location(),
        catalog.describe()
    );
    println!(
        "\n{:<12} {:<8} {:>10} {:>20}  detail",
        "job", "outcome", "seconds", "last success (UTC)"
    );
    for job in Job::ALL {
        match record(catalog.as_ref(), job).await? {
            Some(r) => println!(
                "{:<12} {:<8} {:>10.2} {:>20}  {}",
                job.name(),
                r.outcome,
                r.duration_ms as f64 / 1000.0,
                r.last_success_ms.map_or("never".into(), when),
                r.detail
            ),
            None => println!("{:<12} {:<8}", job.name(), "never run"),
        }
    }
    println!(
        "\nmodel: {}",
        model.as_deref().unwrap_or("none (popularity only)")
    );
    if let Some(m) = metrics.as_ref().and_then(|m| m.get("ndcg_at_10")) {
        println!("  NDCG@10 {m}");
    }
    println!(
        "catalog: {} songs, {} users ({} with a vector)",
        stats.songs, stats.users, stats.users_with_vector
    );
    println!(
        "events: {} files, {held_events} events, {counted_events} counted (lag {})",
        held.len(),
        held_events - counted_events
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn daily_job_runs_once_after_missed_days() {
        let roll = parse_time("--roll-at", "00:05").unwrap();
        let day = 20_000 * MS_PER_DAY;
        // Last success three days ago: due now, once.
        let now = day + 10 * MIN;
        assert_eq!(
            next_run(Schedule::Daily(roll), Some(day - 3 * MS_PER_DAY), now),
            now
        );
        // After that success: tomorrow at 00:05.
        assert_eq!(
            next_run(Schedule::Daily(roll), Some(now), now + MIN),
            day + MS_PER_DAY + 5 * MIN
        );
        // Before today's 00:05 with yesterday's run done: today at 00:05.
        assert_eq!(
            next_run(
                Schedule::Daily(roll),
                Some(day - MS_PER_DAY + 6 * MIN),
                day + MIN
            ),
            day + 5 * MIN
        );
    }

    #[test]
    fn interval_job_is_due_an_interval_after_its_last_success() {
        assert_eq!(next_run(Schedule::Every(900_000), None, 5), 5);
        assert_eq!(
            next_run(Schedule::Every(900_000), Some(1_000), 2_000),
            901_000
        );
        // A clock that jumped ahead runs it once, now.
        assert_eq!(
            next_run(Schedule::Every(900_000), Some(1_000), 10 * MS_PER_DAY),
            10 * MS_PER_DAY
        );
    }

    #[test]
    fn times_of_day_are_checked() {
        assert_eq!(parse_time("--roll-at", "02:00").unwrap(), 120);
        assert!(parse_time("--roll-at", "24:00").is_err());
        assert!(parse_time("--roll-at", "2").is_err());
    }
}
