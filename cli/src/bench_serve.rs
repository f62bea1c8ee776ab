//! `recsys bench serve`: a closed-loop load generator calling HomeFeed and NextSongs at a fixed
//! concurrency against `recsys serve`, run as its own process on the lake (or against a running
//! server with `--endpoint`): QPS, p50/p95/p99 latency and errors per call, against the target
//! of p99 < 10 ms at ≥ 2,000 QPS. With `--http` the same load then goes through the JSON API
//! (`/api/v1`, HTTP/1.1 keep-alive) on the same server, with the ratios to gRPC, and headless
//! Chromium loads the web player to time the first feed on screen (target under 1 s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recsys_proto::v1::{HomeFeedRequest, ListUsersRequest, NextSongsRequest};
use recsys_serve::verify::Client;
use tonic_health::pb::HealthCheckRequest;

use crate::LakeArgs;

const TARGET_P99_MS: f64 = 10.0;
const TARGET_QPS: f64 = 2000.0;

#[derive(Debug, Args)]
pub struct ServeBench {
    /// Load a running server instead of starting `recsys serve` on the lake (the child process
    /// inherits the environment: RECSYS_MONGO, RECSYS_QDRANT, …).
    #[arg(long, env = "RECSYS_BENCH_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Requests in flight: each worker sends its next request when the last one returned.
    #[arg(long, env = "RECSYS_BENCH_CONCURRENCY", default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds measured (after the warm-up).
    #[arg(long, env = "RECSYS_BENCH_SECONDS", default_value_t = 20)]
    pub seconds: u64,
    /// Seconds of load before measuring (caches fill, sessions start).
    #[arg(long, env = "RECSYS_BENCH_WARMUP_S", default_value_t = 5)]
    pub warmup_s: u64,
    /// Share of NextSongs calls; the rest are HomeFeed.
    #[arg(long, env = "RECSYS_BENCH_NEXT_SHARE", default_value_t = 0.5)]
    pub next_share: f64,
    /// HTTP/2 connections the workers share.
    #[arg(long, env = "RECSYS_BENCH_CONNECTIONS", default_value_t = 2)]
    pub connections: usize,
    /// Also run the load through the JSON API and time page loads of the web player.
    #[arg(long, env = "RECSYS_BENCH_HTTP")]
    pub http: bool,
    /// Page loads of the web player timed with `--http`.
    #[arg(long, env = "RECSYS_BENCH_PAGE_LOADS", default_value_t = 10)]
    pub page_loads: usize,
    #[command(flatten)]
    pub catalog: crate::catalog::CatalogArgs,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    HomeFeed,
    NextSongs,
}

struct Sample {
    call: Call,
    micros: u64,
    ok: bool,
}

/// `recsys serve` on the lake, as a child process; killed on drop.
struct Server {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

async fn start_server(lake: &LakeArgs) -> Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let exe = std::env::current_exe()?;
    let child = std::process::Command::new(&exe)
        .args(["--data-dir", &lake.location, "serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .env(
            "RECSYS_LOG",
            std::env::var("RECSYS_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .with_context(|| format!("starting {} serve", exe.display()))?;
    let mut server = Server {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("recsys serve exited with {status} before it was ready");
        }
        if let Ok(client) = Client::connect(&server.endpoint).await
            && client
                .health
                .clone()
                .check(HealthCheckRequest::default())
                .await
                .is_ok()
        {
            return Ok(server);
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("recsys serve on {} not ready after 300 s", server.endpoint);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Users with an ALS factor (the bench's load is personalised).
async fn users(client: &Client) -> Result<Vec<String>> {
    let mut recs = client.recs.clone();
    let mut after = String::new();
    let mut users = Vec::new();
    loop {
        let page = recs
            .list_users(ListUsersRequest {
                limit: 1000,
                after: after.clone(),
            })
            .await?
            .into_inner()
            .users;
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        users.extend(
            page.into_iter()
                .filter(|u| u.long_term_source == "als")
                .map(|u| u.id),
        );
    }
    if users.is_empty() {
        bail!("the server knows no user with an ALS factor (train a model first)");
    }
    Ok(users)
}

/// The way in: gRPC, or the JSON API over HTTP/1.1.
#[derive(Clone)]
enum Door {
    Grpc(Box<Client>),
    Http(reqwest::Client, String),
}

/// The first song of a listing, and whether the session has more.
type Page = (Option<String>, bool);

impl Door {
    async fn feed(&self, user: String, refresh: bool) -> Result<Page> {
        match self {
            Door::Grpc(c) => {
                let r = c
                    .recs
                    .clone()
                    .home_feed(HomeFeedRequest {
                        user_id: user,
                        limit: 32,
                        refresh,
                        exclude_heard: false,
                    })
                    .await?;
                Ok(grpc_page(r.get_ref()))
            }
            Door::Http(http, base) => {
                let url = format!("{base}/api/v1/users/{user}/feed?limit=32&refresh={refresh}");
                json_page(http, &url).await
            }
        }
    }

    async fn next(&self, user: String, song: String, refresh: bool) -> Result<Page> {
        match self {
            Door::Grpc(c) => {
                let r = c
                    .recs
                    .clone()
                    .next_songs(NextSongsRequest {
                        user_id: user,
                        current_song_id: song,
                        limit: 32,
                        refresh,
                    })
                    .await?;
                Ok(grpc_page(r.get_ref()))
            }
            Door::Http(http, base) => {
                let url =
                    format!("{base}/api/v1/users/{user}/next/{song}?limit=32&refresh={refresh}");
                json_page(http, &url).await
            }
        }
    }
}

fn grpc_page(r: &recsys_proto::v1::Recommendations) -> Page {
    let first = r.songs.first().and_then(|s| s.song.as_ref());
    (first.map(|s| s.id.clone()), r.has_more)
}

async fn json_page(http: &reqwest::Client, url: &str) -> Result<Page> {
    let r = http.get(url).send().await?.error_for_status()?;
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
    let first = v["songs"][0]["id"].as_str().map(str::to_string);
    Ok((first, v["has_more"].as_bool().unwrap_or(false)))
}

/// One closed-loop worker until `end`; samples after `measure_from`.
async fn worker(
    door: Door,
    users: Arc<Vec<String>>,
    seed: u64,
    next_share: f64,
    measure_from: Instant,
    end: Instant,
) -> Vec<Sample> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut samples = Vec::new();
    let mut current: Option<String> = None;
    let mut refresh = false;
    while Instant::now() < end {
        let user = users[rng.random_range(0..users.len())].clone();
        let t = Instant::now();
        let (call, ok) = match current.clone() {
            Some(song) if rng.random_bool(next_share) => {
                let got = door.next(user, song, rng.random_bool(0.1)).await;
                if let Ok((Some(first), _)) = &got {
                    current = Some(first.clone());
                }
                (Call::NextSongs, got.is_ok())
            }
            _ => {
                let got = door.feed(user, refresh).await;
                if let Ok((first, has_more)) = &got {
                    // A finished session (cap reached) starts again next time.
                    refresh = !has_more;
                    if first.is_some() {
                        current = first.clone();
                    }
                }
                (Call::HomeFeed, got.is_ok())
            }
        };
        if t >= measure_from {
            samples.push(Sample {
                call,
                micros: t.elapsed().as_micros() as u64,
                ok,
            });
        }
    }
    samples
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

/// `(name, qps, p50, p95, p99, max, errors)` of the samples `keep` selects.
fn row(name: &str, samples: &[Sample], keep: impl Fn(&Sample) -> bool, secs: f64) -> (f64, f64) {
    let mut lat: Vec<u64> = samples
        .iter()
        .filter(|s| keep(s))
        .map(|s| s.micros)
        .collect();
    let errors = samples.iter().filter(|s| keep(s) && !s.ok).count();
    lat.sort_unstable();
    let qps = lat.len() as f64 / secs;
    let p99 = percentile(&lat, 0.99);
    println!(
        "{name:<10} {:>9} {qps:>9.0} {:>8.2} {:>8.2} {p99:>8.2} {:>8.2} {errors:>7}",
        lat.len(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.95),
        lat.last().map_or(0.0, |m| *m as f64 / 1000.0),
    );
    (qps, p99)
}

/// The closed-loop load through `doors` (workers share them round-robin); prints the table
/// and the target line, returns `(qps, p99 ms)` of all calls.
async fn load(
    name: &str,
    doors: &[Door],
    users: &Arc<Vec<String>>,
    args: &ServeBench,
) -> Result<(f64, f64)> {
    println!(
        "\n{name}: {} workers, {} s warm-up + {} s",
        args.concurrency, args.warmup_s, args.seconds
    );
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_s);
    let end = measure_from + Duration::from_secs(args.seconds.max(1));
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|w| {
            tokio::spawn(worker(
                doors[w % doors.len()].clone(),
                users.clone(),
                w as u64,
                args.next_share.clamp(0.0, 1.0),
                measure_from,
                end,
            ))
        })
        .collect();
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await?);
    }
    let secs = args.seconds.max(1) as f64;
    println!(
        "{:<10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "call", "requests", "QPS", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors"
    );
    row("HomeFeed", &samples, |s| s.call == Call::HomeFeed, secs);
    row("NextSongs", &samples, |s| s.call == Call::NextSongs, secs);
    let (qps, p99) = row("all", &samples, |_| true, secs);
    let errors = samples.iter().filter(|s| !s.ok).count();
    println!(
        "target p99 < {TARGET_P99_MS} ms at ≥ {TARGET_QPS} QPS: p99 {p99:.2} ms ({:.2}× the bound), {qps:.0} QPS ({:.2}× the target), {errors} errors",
        p99 / TARGET_P99_MS,
        qps / TARGET_QPS
    );
    Ok((qps, p99))
}

/// Loads the web player `n` times in headless Chromium with `user`'s profile chosen and times
/// the first feed cards on screen (from navigation start, as the page records it).
async fn page_loads(endpoint: &str, user: &str, n: usize) -> Result<()> {
    let Some((chromium, driver)) = recsys_cli::webdriver::locate() else {
        println!(
            "\npage loads: skipped (no chromium and chromedriver; apt-get install chromium chromium-driver)"
        );
        return Ok(());
    };
    let browser = recsys_cli::webdriver::Browser::start(&chromium, &driver, 1280, 900).await?;
    browser.goto(&format!("{endpoint}/")).await?;
    browser
        .eval(
            "localStorage.setItem('recsys.user', arguments[0]);",
            vec![serde_json::json!(user)],
        )
        .await?;
    let mut times = Vec::new();
    for _ in 0..n.max(1) {
        browser.goto(&format!("{endpoint}/")).await?;
        let shown = browser
            .wait_for(
                "the first feed on screen",
                "return document.body.dataset.feedShownMs;",
                Duration::from_secs(30),
            )
            .await?;
        let ms: f64 = shown.as_str().unwrap_or("0").parse().unwrap_or(0.0);
        times.push(ms);
    }
    browser.quit().await;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let max = times[times.len() - 1];
    println!(
        "\npage load (headless Chromium, navigation start → first feed cards), {} loads: median {median:.0} ms, max {max:.0} ms; target < 1000 ms: {:.2}× the bound (max)",
        times.len(),
        max / 1000.0
    );
    Ok(())
}

pub async fn run(lake: &LakeArgs, args: ServeBench) -> Result<()> {
    // The catalog's size, read before the server opens it (an embedded catalog allows one
    // process); unknown for a server already running.
    let songs = match &args.endpoint {
        None => {
            let catalog = args.catalog.open(&lake.open()?).await?;
            Some(catalog.stats().await?.songs)
        }
        Some(_) => None,
    };
    let server = match &args.endpoint {
        Some(_) => None,
        None => Some(start_server(lake).await?),
    };
    let endpoint = args
        .endpoint
        .clone()
        .or_else(|| server.as_ref().map(|s| s.endpoint.clone()))
        .expect("an endpoint");
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        clients.push(Client::connect(&endpoint).await?);
    }
    let users = Arc::new(users(&clients[0]).await?);
    println!(
        "recsys bench serve: {endpoint}, catalog of {} songs, {} users with a factor, {} workers on {} connections, {} s warm-up + {} s",
        songs.map_or("?".to_string(), |n| n.to_string()),
        users.len(),
        args.concurrency,
        clients.len(),
        args.warmup_s,
        args.seconds
    );
    if songs.is_some_and(|n| n < 50_000) {
        println!("note: the target is stated for a catalog of ≥ 50,000 songs");
    }
    let grpc: Vec<Door> = clients
        .into_iter()
        .map(|c| Door::Grpc(Box::new(c)))
        .collect();
    let (qps, p99) = load("gRPC", &grpc, &users, &args).await?;
    if let Some(server) = &server {
        println!(
            "server peak memory {} MB",
            crate::bench::peak_memory_mb_of(&server.child.id().to_string())
        );
    }
    if args.http {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(args.concurrency.max(1))
            .build()?;
        let doors = vec![Door::Http(http, endpoint.clone())];
        let (h_qps, h_p99) = load("JSON API", &doors, &users, &args).await?;
        println!(
            "JSON API ÷ gRPC: QPS {:.2}×, p99 {:.2}×",
            h_qps / qps.max(f64::MIN_POSITIVE),
            h_p99 / p99.max(f64::MIN_POSITIVE)
        );
        page_loads(&endpoint, &users[0], args.page_loads).await?;
    }
    Ok(())
}
