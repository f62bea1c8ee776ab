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
//!   date (or month, `--compact-period`) become one file (`recsys_ingest::compact`);
//! * `retrain` (daily at `--retrain-at`, UTC): ALS on the trailing `--retrain-window-days`
//!   through the cluster, users outside the window carried over (folded in), published only
//!   when its NDCG@10 is at most `--retrain-max-ndcg-drop` worse than the serving version's
//!   (serving hot-reloads it), then all but the last `--keep-models` versions removed
//!   (`recsys_jobs::als::versions`).
//!
//! A daily job whose last success is older than its latest scheduled time runs at start: a
//! missed day is caught up once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use recsys_catalog::jobs::{self, JobRecord};
use recsys_catalog::{Catalog, PlayCounts};
use recsys_core::Store;
use recsys_core::manifest::EtlManifest;
use recsys_core::time::MICROS_PER_DAY;
use recsys_ingest::compact::{CompactOptions, Period, compact};
use recsys_ingest::counts::{self, Anchor, Counts};
use recsys_ingest::log::EMBEDDED_TOPIC;

use recsys_jobs::als::versions;
use recsys_jobs::als::{TrainWindow, WindowEnd};
use recsys_vectors::VectorStore;

use crate::catalog::CatalogArgs;
use crate::{ClusterArgs, LakeArgs};

const MS_PER_DAY: i64 = MICROS_PER_DAY / 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Job {
    Counts,
    WindowRoll,
    Compact,
    Retrain,
    Enrich,
    Supervise,
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
    const ALL: [Job; 6] = [
        Job::Counts,
        Job::WindowRoll,
        Job::Compact,
        Job::Retrain,
        Job::Enrich,
        Job::Supervise,
    ];

    fn name(self) -> &'static str {
        match self {
            Job::Counts => "counts",
            Job::WindowRoll => "window-roll",
            Job::Compact => "compact",
            Job::Retrain => "retrain",
            Job::Enrich => "enrich",
            Job::Supervise => "supervise",
        }
    }

    fn schedule(self, args: &OrchestrateArgs) -> Result<Schedule> {
        Ok(match self {
            Job::Counts => Schedule::Every((args.counts_every_s.max(0.1) * 1000.0) as i64),
            Job::WindowRoll => Schedule::Daily(parse_time("--roll-at", &args.roll_at)?),
            Job::Compact => Schedule::Daily(parse_time("--compact-at", &args.compact_at)?),
            Job::Retrain => Schedule::Daily(parse_time("--retrain-at", &args.retrain_at)?),
            Job::Enrich => Schedule::Daily(parse_time("--enrich-at", &args.enrich_at)?),
            Job::Supervise => Schedule::Every((args.supervise_every_s.max(0.1) * 1000.0) as i64),
        })
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
    /// Daily time (UTC, HH:MM) of the ALS retrain.
    #[arg(long, env = "RECSYS_RETRAIN_AT", default_value = "02:00")]
    pub retrain_at: String,
    /// Days of plays the retrain reads, ending at the window clock (`--window-clock`).
    #[arg(long, env = "RECSYS_RETRAIN_WINDOW_DAYS", default_value_t = 90)]
    pub retrain_window_days: u32,
    /// How much worse (a fraction of the serving version's NDCG@10) a retrained version may be
    /// and still be published.
    #[arg(long, env = "RECSYS_RETRAIN_MAX_NDCG_DROP", default_value_t = 0.05)]
    pub retrain_max_ndcg_drop: f64,
    /// Model versions kept (the serving one always is).
    #[arg(long, env = "RECSYS_KEEP_MODELS", default_value_t = 3)]
    pub keep_models: usize,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub als: crate::als::AlsArgs,
    /// Daily time (UTC, HH:MM) of the enrichment: lyrics looked up for the songs that have
    /// none yet, clean & sync, and their embeddings into the vector store.
    #[arg(long, env = "RECSYS_ENRICH_AT", default_value = "01:00")]
    pub enrich_at: String,
    #[command(flatten)]
    pub lyrics: crate::lyrics::SourceArgs,
    /// Seconds between runs of the supervise job: what the event log holds that `events/` does
    /// not yet (Kafka's lag), and how long ago the newest event file was written.
    #[arg(long, env = "RECSYS_SUPERVISE_EVERY_S", default_value_t = 60.0)]
    pub supervise_every_s: f64,
    /// The supervise job fails (an alert in `recsys status`) when events wait in Kafka and no
    /// event file has been written for this many seconds.
    #[arg(long, env = "RECSYS_SINK_STALE_S", default_value_t = 600)]
    pub sink_stale_s: u64,
    /// With Kafka: run the sink (Kafka → `events/`, every partition, resuming where `events/`
    /// ends) in this process, restarted with backoff (1 s doubling to 1 min) when it fails.
    #[arg(long, env = "RECSYS_ORCHESTRATE_SINK", requires = "kafka")]
    pub sink: bool,
    #[command(flatten)]
    pub model: crate::lyrics::ModelArgs,
    /// Also serve (gRPC, JSON API, web player on `--listen`) from this process: on the embedded
    /// stores, which one process holds at a time, the way to run the live system on one
    /// machine. The web player's events reach `events/` (or Kafka with `--kafka`), and the
    /// server hot-reloads what the retrain publishes.
    #[arg(long, env = "RECSYS_ORCHESTRATE_SERVE")]
    pub serve: bool,
    #[command(flatten)]
    pub server: crate::serve::ServerArgs,
}

impl OrchestrateArgs {
    /// The event log's topic (its files' names in events/).
    fn topic(&self) -> &str {
        &self.server.kafka.topic
    }
}

/// What every job reads: the lake, the catalog and the flags.
struct Orchestrator {
    lake_args: LakeArgs,
    lake: Store,
    catalog: std::sync::Arc<dyn Catalog>,
    vectors: std::sync::Arc<dyn VectorStore>,
    args: OrchestrateArgs,
    /// Times the in-process sink (`--sink`) was restarted.
    sink_restarts: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompactPeriod {
    Day,
    Month,
}

async fn record(catalog: &dyn Catalog, job: Job) -> Result<Option<JobRecord>> {
    Ok(jobs::record(catalog, job.name()).await?)
}

/// What one run of a job did, for people.
async fn run_job(job: Job, o: &Orchestrator) -> Result<String> {
    let (lake, args) = (&o.lake, &o.args);
    match job {
        Job::Counts => {
            let a = counts::aggregate(lake, args.topic()).await?;
            let published = publish(o).await?;
            Ok(format!(
                "{} event files, {} events, {} plays counted; {published}",
                a.files, a.events, a.plays
            ))
        }
        Job::WindowRoll => publish(o).await,
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
            let done = compact(lake, args.topic(), options).await?;
            Ok(format!(
                "{} files written for {} ({} events); {} covered files of an interrupted run deleted",
                done.written, done.replaced, done.events, done.leftovers
            ))
        }
        Job::Retrain => retrain(o).await,
        Job::Enrich => enrich(o).await,
        Job::Supervise => supervise(o).await,
    }
}

/// The event log's health: files in `events/` and the newest one's age; with Kafka, the events
/// of the topic not yet in `events/` (the sink's lag), failing when they wait and no file has
/// been written for `--sink-stale-s`.
async fn supervise(o: &Orchestrator) -> Result<String> {
    let (lake, args, topic) = (&o.lake, &o.args, o.args.topic());
    let held = recsys_ingest::sink::written_files(lake, topic).await?;
    let age_s = recsys_ingest::sink::newest_file_ms(lake, topic)
        .await?
        .map(|t| (recsys_catalog::now_ms() - t).max(0) / 1000);
    let mut detail = format!(
        "events/: {} files, newest written {}",
        held.len(),
        age_s.map_or("never".into(), |s| format!("{s} s ago"))
    );
    if let Some(brokers) = &args.server.kafka.kafka {
        let ends = recsys_ingest::consume::end_offsets(brokers, topic, Duration::from_secs(10))
            .await
            .with_context(|| format!("the end offsets of Kafka topic `{topic}` ({brokers})"))?;
        let next = recsys_ingest::sink::next_offsets(&held);
        let lag: i64 = ends
            .iter()
            .map(|(p, end)| (end - next.get(p).copied().unwrap_or(0)).max(0))
            .sum();
        detail.push_str(&format!(
            "; Kafka {brokers} topic `{topic}`: {lag} events not in events/ yet"
        ));
        if args.sink {
            let restarts = o.sink_restarts.load(std::sync::atomic::Ordering::Relaxed);
            detail.push_str(&format!("; in-process sink restarted {restarts} times"));
        }
        if lag > 0 && age_s.is_none_or(|s| s > args.sink_stale_s as i64) {
            bail!(
                "the sink is behind: {detail}; is `recsys sink` (or `recsys orchestrate --sink`) \
                 running against {}?",
                lake.url(recsys_core::schema::EVENTS_DIR)
            );
        }
    }
    Ok(detail)
}

/// Runs `start` (given a stop signal) until `stop` turns true; when it ends before, with an
/// error or not, it is logged, counted in `restarts` and started again after a backoff (1 s
/// doubling to 1 min; back to 1 s after a run of a minute).
async fn supervised<F, Fut>(
    name: &'static str,
    restarts: &std::sync::atomic::AtomicU64,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut start: F,
) where
    F: FnMut(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        let began = Instant::now();
        let result = start(stop.clone()).await;
        if *stop.borrow() {
            return;
        }
        match result {
            Ok(()) => tracing::warn!(name, "stopped by itself"),
            Err(e) => tracing::error!(name, "failed: {e:#}"),
        }
        restarts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if began.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        tracing::info!(name, ?backoff, "restarting");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}

/// The Kafka sink of `--sink`: every partition of the topic into `events/` until `stop`.
async fn run_sink(o: &Orchestrator, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
    let server = &o.args.server;
    let brokers = server.kafka.kafka.clone().context("--sink needs --kafka")?;
    let options = recsys_ingest::consume::ConsumeOptions {
        brokers,
        topic: server.kafka.topic.clone(),
        group: "recsys-sink".into(),
        instance_id: None,
        assign_all: true,
        policy: server.flush.policy(),
        stop_after: None,
        fetch_wait_ms: recsys_ingest::consume::DEFAULT_FETCH_WAIT_MS,
    };
    let stats = recsys_ingest::consume::run_sink(o.lake.clone(), options, async move {
        stop.wait_for(|stopped| *stopped).await.ok();
    })
    .await?;
    tracing::info!(
        rows = stats.sink.rows,
        files = stats.sink.files,
        "in-process sink stopped"
    );
    Ok(())
}

/// Lyrics for the songs that arrived since the last run, clean & sync, and embeddings of the
/// songs without a vector; skipped, saying how to give one, without a lyrics source.
async fn enrich(o: &Orchestrator) -> Result<String> {
    let (lake, args) = (&o.lake, &o.args);
    // The generator's lyrics file counts as a source when it is there (the embedded demo).
    if !args.lyrics.available(lake, true).await? {
        return Ok(
            "skipped: no lyrics source (give one with --lrclib-url URL or --lyrics-file FILE)"
                .into(),
        );
    }
    let cluster = args.cluster.connect(&o.lake_args.s3).await?;
    let run = crate::lyrics::lyrics_and_embeddings(
        &cluster,
        lake,
        o.catalog.as_ref(),
        o.vectors.as_ref(),
        &args.lyrics,
        &args.model,
    )
    .await?;
    let c = &run.fetched.0;
    let mut detail = format!(
        "{} songs looked up in {} ({} found, {} missing, {} instrumental, {} errors)",
        c.songs(),
        args.lyrics.describe(),
        c.found,
        c.missing,
        c.instrumental,
        c.errors
    );
    match (run.removed, &run.embedded) {
        (Some((removed, _)), Some((e, _))) => detail.push_str(&format!(
            "; {removed} songs without lyrics removed; {} embedded, {} already embedded, {} too short; {} vectors",
            e.embedded,
            e.already_done,
            e.too_short,
            o.vectors.count().await?
        )),
        _ => detail.push_str("; the source has lyrics for no song: nothing removed or embedded"),
    }
    Ok(detail)
}

/// ALS on the trailing window; the new version replaces the serving one only when the gate
/// lets it (a version kept out is removed and the run says why: not a failure, which would
/// train again within the minute).
async fn retrain(o: &Orchestrator) -> Result<String> {
    let (lake, args) = (&o.lake, &o.args);
    let cluster = args.cluster.connect(&o.lake_args.s3).await?;
    let options = recsys_jobs::als::TrainOptions {
        window: Some(TrainWindow {
            days: args.retrain_window_days,
            end: match args.window_clock {
                WindowClock::Wall => WindowEnd::Now,
                WindowClock::Newest => WindowEnd::NewestPlay,
            },
        }),
        publish: false,
        ..args.als.options()
    };
    let serving = recsys_jobs::als::model::current(lake).await?;
    let trained = crate::als::train_with(&cluster, lake, &args.als, &options).await?;
    let version = &trained.version;
    let carried = match &serving {
        Some(from) => versions::carry_over(lake, from, version, &trained.params).await?,
        None => 0,
    };
    let serving_eval = match &serving {
        Some(v) => versions::evaluation(lake, v).await?,
        None => None,
    };
    let window = trained.window.map_or("all plays".into(), |(since, end)| {
        format!(
            "plays {} to {}",
            recsys_core::time::date_string(since),
            recsys_core::time::date_string(end - 1)
        )
    });
    match versions::gate(
        trained.evaluation.as_ref(),
        serving_eval.as_ref(),
        args.retrain_max_ndcg_drop,
    ) {
        Ok(why) => {
            versions::publish(lake, version).await?;
            let removed = versions::prune(lake, args.keep_models).await?;
            Ok(format!(
                "published {version} ({window}, {} users, {carried} carried over): {why}; {} old versions removed",
                trained.model.user_ids.len(),
                removed.len()
            ))
        }
        Err(why) => {
            versions::remove(lake, version).await?;
            tracing::warn!(%version, "retrained model not published: {why}");
            Ok(format!(
                "not published ({window}): {why}; still serving {}",
                serving.as_deref().unwrap_or("none")
            ))
        }
    }
}

/// Sets the counts that changed since the last publication; says how many and where the 7-day
/// window ends.
async fn publish(o: &Orchestrator) -> Result<String> {
    let (lake, catalog, topic) = (&o.lake, o.catalog.as_ref(), o.args.topic());
    let anchor = match o.args.window_clock {
        WindowClock::Wall => Anchor::WallClock,
        WindowClock::Newest => Anchor::NewestEvent,
    };
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
    let window = totals.window_end.map_or("none".into(), |d| {
        recsys_core::time::date_string(d * MICROS_PER_DAY)
    });
    Ok(format!("{} songs set; window ends {window}", changes.len()))
}

/// Runs `job` once, recording its outcome in `job_metadata`.
async fn run_recorded(job: Job, o: &Orchestrator) -> Result<String> {
    let catalog = o.catalog.as_ref();
    let started = Instant::now();
    let start_ms = recsys_catalog::now_ms();
    let previous = record(catalog, job).await.ok().flatten();
    let result = run_job(job, o).await;
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
    jobs::set_record(catalog, job.name(), &rec).await?;
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

async fn job_loop(job: Job, o: std::sync::Arc<Orchestrator>, schedule: Schedule) {
    let mut last_ok = record(o.catalog.as_ref(), job)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.last_success_ms);
    let mut jittered = schedule;
    let mut failures = 0u32;
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
        match run_recorded(job, &o).await {
            Ok(_) => {
                failures = 0;
                last_ok = Some(recsys_catalog::now_ms());
                if let Schedule::Every(ms) = schedule {
                    let jitter = rand::random::<f64>() * o.args.jitter.clamp(0.0, 1.0);
                    jittered = Schedule::Every(ms + (jitter * ms as f64) as i64);
                }
            }
            // Tried again after an interval; a daily job after a minute, doubling with every
            // failure in a row up to an hour (a retrain that fails is not rerun every minute).
            Err(_) => {
                failures += 1;
                let retry_ms = match schedule {
                    Schedule::Every(ms) => ms,
                    Schedule::Daily(_) => 60_000 << (failures - 1).min(6),
                };
                tokio::time::sleep(Duration::from_millis(retry_ms.min(3_600_000) as u64)).await;
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
    let vectors: std::sync::Arc<dyn VectorStore> = args.server.vectors.open(&lake).await?.into();
    let o = std::sync::Arc::new(Orchestrator {
        lake_args: lake_args.clone(),
        lake,
        catalog,
        vectors,
        args,
        sink_restarts: Default::default(),
    });
    if let Some(job) = o.args.once {
        let detail = run_recorded(job, &o).await?;
        println!("{}: {detail}", job.name());
        return Ok(());
    }
    tracing::info!(
        lake = %o.lake.location(),
        catalog = %o.catalog.describe(),
        counts_every_s = o.args.counts_every_s,
        roll_at = %o.args.roll_at,
        compact_at = %o.args.compact_at,
        retrain_at = %o.args.retrain_at,
        enrich_at = %o.args.enrich_at,
        "orchestrator running"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (job, schedule) in Job::ALL.into_iter().zip(schedules) {
        tasks.spawn(job_loop(job, o.clone(), schedule));
    }
    // The sink is stopped by a signal of its own so that it writes what it holds.
    let (stop_sink, sink_stopped) = tokio::sync::watch::channel(false);
    let sink = o.args.sink.then(|| {
        let o = o.clone();
        tokio::spawn(async move {
            supervised("sink", &o.sink_restarts, sink_stopped, |stop| {
                run_sink(&o, stop)
            })
            .await
        })
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = o.args.serve.then(|| {
        let o = o.clone();
        tokio::spawn(async move {
            crate::serve::serve_until(
                &o.lake_args,
                &o.args.server,
                o.lake.clone(),
                o.catalog.clone(),
                o.vectors.clone(),
                async {
                    stopped.await.ok();
                },
            )
            .await
        })
    });
    // SIGTERM/SIGINT: the jobs stop where they are; every write they make is atomic (one put
    // per aggregate file, catalog values set, not added; a model is published by one put of
    // CURRENT after all its files), so a stop mid-run loses nothing and the next start resumes.
    // A server that fails (its address taken, a store missing) stops the orchestrator too.
    let failed = tokio::select! {
        done = async {
            match server.as_mut() {
                Some(server) => server.await,
                None => std::future::pending().await,
            }
        } => Some(done),
        () = crate::stream::shutdown_signal() => None,
    };
    tasks.shutdown().await;
    stop_sink.send(true).ok();
    if let Some(sink) = sink {
        sink.await.context("the in-process sink")?;
    }
    let served = match (failed, server) {
        (Some(done), _) => done,
        (None, Some(server)) => {
            stop.send(()).ok();
            server.await
        }
        (None, None) => Ok(Ok(())),
    };
    served?.context("the server of `recsys orchestrate --serve`")?;
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
    #[arg(long, env = "RECSYS_KAFKA_TOPIC", default_value = EMBEDDED_TOPIC)]
    pub topic: String,
}

pub async fn status(lake_args: &LakeArgs, args: StatusArgs) -> Result<()> {
    let lake = lake_args.open()?;
    let catalog = args.catalog.open(&lake).await?;
    let mut records = Vec::new();
    for job in Job::ALL {
        records.push((job, record(catalog.as_ref(), job).await?));
    }
    let jobs: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(job, r)| Ok((job.name().to_string(), serde_json::to_value(r)?)))
        .collect::<Result<_>>()?;
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
    for (job, r) in records {
        match r {
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
    if let Some(m) = &metrics {
        let e = &m["evaluation"];
        if let (Some(model), Some(popularity)) = (
            e["model"]["ndcg_at_10"].as_f64(),
            e["popularity"]["ndcg_at_10"].as_f64(),
        ) {
            println!("  NDCG@10 {model:.4} (popularity {popularity:.4})");
        }
        let d = &m["data"];
        println!(
            "  {} users trained, {} carried over; {} items; plays {}",
            d["users"],
            d["carried_over"]["users"].as_u64().unwrap_or(0),
            d["items"],
            match (d["window"]["since"].as_str(), d["window"]["end"].as_str()) {
                (Some(since), Some(end)) => format!("from {since} to {end}"),
                _ => "of all time".into(),
            }
        );
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
    fn every_job_is_one_the_status_page_reads() {
        let names: Vec<&str> = Job::ALL.iter().map(|j| j.name()).collect();
        assert_eq!(names, recsys_catalog::jobs::JOBS);
    }

    #[tokio::test]
    async fn a_failing_supervised_task_is_restarted_with_a_growing_backoff() {
        let restarts = std::sync::atomic::AtomicU64::new(0);
        let runs = std::sync::atomic::AtomicU64::new(0);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let started = Instant::now();
        supervised("test", &restarts, stopped, |_| {
            let run = runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let stop = &stop;
            async move {
                if run < 2 {
                    bail!("failure {run}");
                }
                stop.send(true)?;
                Ok(())
            }
        })
        .await;
        assert_eq!(restarts.into_inner(), 2);
        // 1 s after the first failure, 2 s after the second.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_secs(3), "{waited:?}");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn times_of_day_are_checked() {
        assert_eq!(parse_time("--roll-at", "02:00").unwrap(), 120);
        assert!(parse_time("--roll-at", "24:00").is_err());
        assert!(parse_time("--roll-at", "2").is_err());
    }
}
