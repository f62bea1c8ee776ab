//! Serving end to end: the `recsys pipeline` command (which ends by serving its data, running
//! `recsys verify` against it and printing samples), then the server in-process on the same
//! embedded lake: every verification check must pass (none skipped), and a new model version is
//! picked up while requests keep succeeding.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use object_store::{ObjectStoreExt, PutPayload};
use recsys_catalog::{Catalog, EmbeddedCatalog};
use recsys_core::Store;
use recsys_core::models::{ALS_MODELS_DIR, current_als};
use recsys_ingest::{EmbeddedLog, FlushPolicy};
use recsys_proto::v1::{GetUserRequest, HomeFeedRequest, ListUsersRequest, RecordPlayRequest};
use recsys_serve::verify::{Client, Outcome, verify};
use recsys_serve::{Options, Recommender, Stores};
use recsys_vectors::{EmbeddedStore, VectorStore};

/// The lake of one small pipeline run, and what it printed.
struct Pipeline {
    dir: tempfile::TempDir,
    stdout: String,
}

fn pipeline() -> &'static Pipeline {
    static RUN: OnceLock<Pipeline> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let stdout = recsys_ok(
            dir.path(),
            &[
                "pipeline", "--users", "40", "--tracks", "2000", "--events", "30000",
            ],
        );
        Pipeline { dir, stdout }
    })
}

#[test]
fn pipeline_command_ends_by_serving_and_verifying() {
    let stdout = &pipeline().stdout;
    for needle in [
        "clean:",
        "rejected field_count",
        "sort:",
        "time-ranged files",
        "events/ (embedded log)",
        "from streamed events",
        "lyrics ",
        "clean-sync",
        "embed:",
        "lyrics closest to",
        "total",
        "recsys verify http://127.0.0.1:",
        "next songs (hybrid)",
        " 0 failed",
        "home feed of ",
        "next songs for ",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
}

/// A listening log in Last.fm-1K's format that the generator did not write (names and ids of
/// another shape, missing MBIDs, Windows line ends, a few malformed lines, and no lyrics file):
/// 48 listeners in 6 taste groups over 300 films-as-songs in 2009.
fn foreign_tsv(path: &Path) -> u64 {
    let mut out = String::new();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut lines = 0;
    for user in 0..48u64 {
        let group = user % 6;
        for k in 0..250u64 {
            // Four in five plays in the group's 50 titles, the rest anywhere.
            let item = if next(5) < 4 {
                group * 50 + next(50)
            } else {
                next(300)
            };
            let ts = 1_230_768_000 + user * 3_600 + k * 20_000 + next(600);
            let (date, time) = (ts / 86_400, ts % 86_400);
            let (y, m, d) = recsys_core::time::civil_from_days(date as i64);
            let track_mbid = if item % 7 == 0 {
                String::new()
            } else {
                format!("ml-{item:05}")
            };
            out.push_str(&format!(
                "ml_user_{user:03}\t{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z\tstudio-{}\tStudio {}\t{track_mbid}\tFilm number {item} ({})\r\n",
                time / 3600, time / 60 % 60, time % 60, item % 40, item % 40, 1950 + item % 70
            ));
            lines += 1;
        }
    }
    out.push_str("not a listen\r\n\tno user\tat all\r\n");
    std::fs::write(path, out).unwrap();
    lines
}

/// Lyrics for the films of `foreign_tsv` by studios 0 to 29 (230 of the 300), and for one
/// film that is not in the log (`Film number 1000`, by Studio 0), as JSON lines.
fn films_lyrics(path: &Path) {
    const THEMES: [&str; 6] = [
        "the sea and the boats that never come home",
        "a city at night with neon and rain",
        "dancing until the morning light",
        "a broken heart on a long road",
        "mountains, snow and quiet pine trees",
        "robots and stars and the cold of space",
    ];
    let mut out = String::new();
    for item in (0..300u64).chain([1000]) {
        if item % 40 >= 30 {
            continue;
        }
        let theme = THEMES[(item / 50 % 6) as usize];
        let record = serde_json::json!({
            "track_name": format!("Film number {item} ({})", 1950 + item % 70),
            "artist_name": format!("Studio {}", item % 40),
            "plain_lyrics": format!("Verse {item}: a song about {theme}.\nAnd again, {theme}."),
        });
        out.push_str(&format!("{record}\n"));
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, out).unwrap();
}

/// `recsys pipeline --input` on a log the generator did not write and without a lyrics source:
/// it says so at the start, keeps every song in the catalog, and serves and verifies ALS-only
/// recommendations. Then the orchestrator's enrich job: skipped without a source; given one,
/// lyrics, clean & sync and embeddings for the whole catalog; run again after a new song
/// arrived, only that song.
#[test]
fn pipeline_on_a_users_own_log_without_lyrics_serves_als_only_until_enriched() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("listens.tsv");
    let good = foreign_tsv(&tsv);
    let lake = dir.path().join("lake");
    let stdout = recsys_ok(&lake, &["pipeline", "--input", tsv.to_str().unwrap()]);
    for needle in [
        "no lyrics source: lyrics and embeddings are skipped",
        &format!("{good} clean, 2 rejected"),
        "no lyrics source: the server is ALS only",
        "song without lyrics: ALS only  PASS",
        " 0 failed",
        "home feed of ml_user_",
    ] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
    assert!(!stdout.contains("clean-sync"), "{stdout}");
    // Every song stays in the catalog: 300 titles, the ones without an MBID by name.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let songs = rt.block_on(async {
        let catalog = EmbeddedCatalog::open(&lake.join("catalog.redb"))
            .await
            .unwrap();
        catalog.stats().await.unwrap().songs
    });
    assert_eq!(songs, 300, "{stdout}");

    let enrich = |extra: &[&str]| {
        let mut args = vec!["orchestrate", "--once", "enrich"];
        args.extend_from_slice(extra);
        recsys_ok(&lake, &args)
    };
    let skipped = enrich(&[]);
    assert!(
        skipped.contains("enrich: skipped: no lyrics source (give one with --lrclib-url"),
        "{skipped}"
    );
    // A file of records that are not LRCLIB's is refused by line, not read as songs without
    // lyrics (which clean & sync would then remove).
    std::fs::create_dir_all(lake.join("raw")).unwrap();
    std::fs::write(
        lake.join("raw/other.jsonl"),
        "{\"title\": \"Film number 1\"}\n",
    )
    .unwrap();
    let refused = std::process::Command::new(RECSYS)
        .arg("--data-dir")
        .arg(&lake)
        .args([
            "orchestrate",
            "--once",
            "enrich",
            "--lyrics-file",
            "raw/other.jsonl",
        ])
        .env("RECSYS_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("line 1: a record needs `trackName` and `artistName`"),
        "{stderr}"
    );
    films_lyrics(&lake.join("raw/films.jsonl"));
    let source = ["--lyrics-file", "raw/films.jsonl"];
    let first = enrich(&source);
    assert!(
        first.contains(
            "enrich: 300 songs looked up in raw/films.jsonl (230 found, 70 missing, 0 instrumental, 0 errors); \
             70 songs without lyrics removed; 230 embedded, 0 already embedded, 0 too short; 230 vectors"
        ),
        "{first}"
    );
    let (songs, vectors) = rt.block_on(async {
        let catalog = EmbeddedCatalog::open(&lake.join("catalog.redb"))
            .await
            .unwrap();
        // A song the catalog gains after the first run (as an ETL load of new songs adds it).
        catalog
            .upsert_songs(&[recsys_catalog::SongStats {
                id: "ml-01000".into(),
                track_name: "Film number 1000 (1970)".into(),
                artist_name: "Studio 0".into(),
                ..Default::default()
            }])
            .await
            .unwrap();
        // And a track only events named (the counts job's entry: an id, no title or artist).
        catalog
            .set_play_counts(
                &[recsys_catalog::PlayCounts {
                    id: "events-only-track".into(),
                    plays: 3,
                    plays_7d: 3,
                }],
                true,
            )
            .await
            .unwrap();
        let vectors = EmbeddedStore::open(&lake.join("vectors.redb"), recsys_embed::DIM).unwrap();
        (
            catalog.stats().await.unwrap().songs,
            vectors.count().await.unwrap(),
        )
    });
    assert_eq!((songs, vectors), (232, 230));
    let second = enrich(&source);
    assert!(
        second.contains(
            "enrich: 1 songs looked up in raw/films.jsonl (1 found, 0 missing, 0 instrumental, 0 errors); \
             1 songs without a title or artist not looked up (kept until they get one); \
             0 songs without lyrics removed; 1 embedded, 230 already embedded, 0 too short; 231 vectors"
        ),
        "{second}"
    );
    let kept = rt.block_on(async {
        let catalog = EmbeddedCatalog::open(&lake.join("catalog.redb"))
            .await
            .unwrap();
        catalog.song("events-only-track").await.unwrap()
    });
    let kept = kept.expect("clean & sync keeps a song it could not look up");
    assert_eq!(
        (kept.stats.plays, kept.lyrics.is_none()),
        (3, true),
        "{kept:?}"
    );
    // The vectors are the lyrics': a film's nearest neighbours share its theme (films 50 apart).
    let hits = rt.block_on(async {
        let vectors = EmbeddedStore::open(&lake.join("vectors.redb"), recsys_embed::DIM).unwrap();
        let v = vectors.vector("ml-00001").await.unwrap().unwrap();
        vectors.search(&v, 5, &["ml-00001".into()]).await.unwrap()
    });
    for hit in &hits {
        let film: u64 = hit.payload.title["Film number ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(film < 50 && film != 1, "{hits:?}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A private copy of the pipeline's lake: each test that serves it (the embedded catalog and
/// vector store allow one process each, and tests write to them) takes its own.
fn lake_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(pipeline().dir.path(), dir.path());
    dir
}

/// The embedded log's flush policy in these tests: events reach `events/` within 200 ms.
fn flush_policy() -> FlushPolicy {
    FlushPolicy {
        rows: 10_000,
        interval: Duration::from_millis(200),
        in_flight: 1,
    }
}

async fn recommender(lake: &Path) -> (Arc<Recommender>, Arc<dyn VectorStore>) {
    let store = local_store(lake);
    let catalog: Arc<dyn Catalog> = Arc::new(
        EmbeddedCatalog::open(&lake.join("catalog.redb"))
            .await
            .unwrap(),
    );
    let vectors: Arc<dyn VectorStore> =
        Arc::new(EmbeddedStore::open(&lake.join("vectors.redb"), 384).unwrap());
    let log = Arc::new(
        EmbeddedLog::open(store.clone(), flush_policy())
            .await
            .unwrap(),
    );
    let rec = Recommender::open(
        Stores {
            lake: store,
            catalog,
            vectors: vectors.clone(),
            log,
        },
        Options::default(),
    )
    .await
    .unwrap();
    (Arc::new(rec), vectors)
}

/// The services the server's reflection lists.
async fn reflected_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    match responses.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// Copies the current model to version `version` and points CURRENT at it.
async fn publish_copy(lake: &Store, version: &str) {
    let current = current_als(lake).await.unwrap().unwrap();
    let store = lake.object_store();
    for file in ["users.parquet", "items.parquet", "metrics.json"] {
        let from = lake.path(&format!("{ALS_MODELS_DIR}/{current}/{file}"));
        let to = lake.path(&format!("{ALS_MODELS_DIR}/{version}/{file}"));
        store.copy(&from, &to).await.unwrap();
    }
    store
        .put(
            &lake.path(&format!("{ALS_MODELS_DIR}/CURRENT")),
            PutPayload::from(format!("{version}\n")),
        )
        .await
        .unwrap();
}

/// Clean & sync removing a song and embeddings adding a vector while a server runs: once
/// `models/STORES_CHANGED` says so, the server stops picking the removed song (ALS candidates
/// and lyrics neighbours) and its cached lyrics neighbours include the new vector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_follows_changes_to_the_catalog_and_vectors() {
    let copy = lake_copy();
    let lake_dir: PathBuf = copy.path().to_path_buf();
    tokio::time::timeout(Duration::from_secs(120), async {
        let (rec, vectors) = recommender(&lake_dir).await;
        let lake = local_store(&lake_dir);
        let catalog = rec.stores().catalog.clone();
        assert!(!rec.refresh_stores().await.unwrap(), "nothing changed yet");
        let model = rec.model().unwrap();
        let servable = model.servable();
        let mut song = None;
        for id in &model.item_ids {
            if vectors.vector(id).await.unwrap().is_some() {
                song = Some(id.clone());
                break;
            }
        }
        let song = song.expect("a model song with lyrics");
        let similar = |rec: Arc<Recommender>, song: String| async move {
            let got = rec.similar_songs(&song, 10).await.unwrap();
            got.into_iter().map(|(s, _)| s.stats.id).collect::<Vec<_>>()
        };
        let before = similar(rec.clone(), song.clone()).await;
        let gone = before[1..]
            .iter()
            .find(|id| model.item(id).is_some())
            .expect("a lyrics neighbour the model knows")
            .clone();

        // Clean & sync removes `gone`; another song gets `song`'s own vector (embedding).
        recsys_flow::lyrics::remove(
            &lake,
            catalog.as_ref(),
            vectors.as_ref(),
            std::slice::from_ref(&gone),
        )
        .await
        .unwrap();
        let twin = catalog
            .top_songs(200)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.stats)
            .find(|s| s.id != song && !before.contains(&s.id))
            .unwrap();
        let point = recsys_vectors::Point {
            payload: recsys_vectors::Payload {
                track_id: twin.id.clone(),
                title: twin.track_name.clone(),
                artist: twin.artist_name.clone(),
            },
            vector: vectors.vector(&song).await.unwrap().unwrap(),
        };
        vectors.upsert(&[point]).await.unwrap();
        assert_eq!(
            similar(rec.clone(), song.clone()).await.first(),
            before.first(),
            "the neighbours are cached until the stores say they changed"
        );
        recsys_core::models::mark_stores_changed(&lake)
            .await
            .unwrap();

        assert!(rec.refresh_stores().await.unwrap());
        assert!(!rec.refresh_stores().await.unwrap(), "once per change");
        assert_eq!(model.servable(), servable - 1);
        let item = model.item(&gone).unwrap();
        let everything = model.candidates(model.item_factor(item), model.item_ids.len(), |_| false);
        assert!(
            everything.iter().all(|(i, _)| *i != item),
            "{gone} is still an ALS candidate"
        );
        let after = similar(rec.clone(), song.clone()).await;
        assert_eq!(after.first(), Some(&twin.id), "{after:?}");
        assert!(!after.contains(&gone), "{after:?}");
    })
    .await
    .expect("the test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_server_passes_every_check_and_hot_reloads() {
    let copy = lake_copy();
    let lake_dir: PathBuf = copy.path().to_path_buf();
    tokio::time::timeout(Duration::from_secs(300), async {
        let (rec, vectors) = recommender(&lake_dir).await;
        // Take the lyrics vectors of every fifth servable song away, so that songs without one
        // exist (the ALS-only path of next songs).
        let model = rec.model().expect("the pipeline trained a model");
        let dropped: Vec<String> = model.item_ids.iter().step_by(5).cloned().collect();
        vectors.delete(&dropped).await.unwrap();

        let served = Served::with(copy, rec.clone(), Duration::from_millis(200)).await;
        let endpoint = served.endpoint.clone();
        let client = Client::connect(&endpoint).await.unwrap();
        let lake = local_store(&lake_dir);
        let report = verify(&client, Some(&lake), true).await;
        println!("{report}");
        assert!(report.passed(), "{report}");
        assert_eq!(report.count(Outcome::Skip), 0, "{report}");
        assert_eq!(report.checks.len(), 10);

        // Reflection lists the service (what grpcurl needs).
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let services = reflected_services(channel).await;
        assert!(
            services.iter().any(|s| s == "recsys.v1.RecommendService"),
            "{services:?}"
        );

        // exclude_heard: the songs of the user's history in the model's data and those the
        // server saw them play leave the next feed session.
        let mut recs = client.recs.clone();
        let listener_id = recs
            .list_users(ListUsersRequest {
                limit: 50,
                after: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .users
            .into_iter()
            .find(|u| u.long_term_source == "als")
            .unwrap()
            .id;
        let history: HashSet<String> = model
            .heard(&listener_id)
            .iter()
            .map(|&i| model.item_ids[i as usize].clone())
            .collect();
        assert!(history.len() > 10, "{} songs in the history", history.len());
        let feed = |exclude_heard| HomeFeedRequest {
            user_id: listener_id.clone(),
            limit: 100,
            refresh: true,
            exclude_heard,
        };
        let ids = |r: recsys_proto::v1::Recommendations| -> HashSet<String> {
            r.songs
                .into_iter()
                .filter_map(|s| s.song)
                .map(|s| s.id)
                .collect()
        };
        let played: Vec<String> = ids(recs.home_feed(feed(false)).await.unwrap().into_inner())
            .into_iter()
            .filter(|s| !history.contains(s))
            .take(10)
            .collect();
        for song in &played {
            recs.record_play(RecordPlayRequest {
                user_id: listener_id.clone(),
                song_id: song.clone(),
                decay: None,
            })
            .await
            .unwrap();
        }
        let heard: HashSet<&String> = history.iter().chain(&played).collect();
        let with_heard = ids(recs.home_feed(feed(false)).await.unwrap().into_inner());
        let without = ids(recs.home_feed(feed(true)).await.unwrap().into_inner());
        assert!(
            with_heard.iter().any(|s| heard.contains(s)),
            "the heard songs are not even candidates"
        );
        assert!(
            without.iter().all(|s| !heard.contains(s)),
            "exclude_heard served a heard song"
        );
        assert_eq!(without.len(), 100);

        // Hot reload: a new CURRENT is served within a few reload periods, and requests in
        // flight meanwhile all succeed.
        let user = listener_id;
        publish_copy(&lake, "hot-reload-test").await;
        let started = Instant::now();
        let mut requests = 0;
        loop {
            let feed = recs
                .home_feed(HomeFeedRequest {
                    user_id: user.clone(),
                    limit: 8,
                    refresh: true,
                    exclude_heard: false,
                })
                .await
                .expect("no request fails during a reload");
            assert_eq!(feed.into_inner().songs.len(), 8);
            requests += 1;
            let version = recs
                .get_user(GetUserRequest {
                    user_id: user.clone(),
                })
                .await
                .unwrap()
                .into_inner()
                .model_version;
            if version == "hot-reload-test" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "still serving {version}"
            );
        }
        assert!(requests > 0);
        served.stop().await;
    })
    .await
    .expect("test timed out");
}

/// `recsys serve`'s server (gRPC, JSON API, web player) in-process on a copy of the lake.
struct Served {
    dir: tempfile::TempDir,
    endpoint: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), recsys_ingest::server::ServeError>>,
}

impl Served {
    async fn start() -> Served {
        Served::start_on(lake_copy()).await
    }

    /// Serves the lake in `dir` (again, after a restart).
    async fn start_on(dir: tempfile::TempDir) -> Served {
        let (rec, _) = recommender(dir.path()).await;
        Served::with(dir, rec, Duration::from_secs(30)).await
    }

    /// Serves `rec` (over the lake in `dir`), checking for a new model every `reload`.
    async fn with(dir: tempfile::TempDir, rec: Arc<Recommender>, reload: Duration) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(recsys_serve::service::serve(
            listener,
            rec.clone(),
            Default::default(),
            reload,
            async {
                stopped.await.ok();
            },
        ));
        Served {
            dir,
            endpoint,
            stop,
            server,
        }
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.endpoint)
    }

    /// Stops the server; returns the lake (the stores closed).
    async fn stop(self) -> tempfile::TempDir {
        self.stop.send(()).ok();
        self.server.await.unwrap().unwrap();
        self.dir
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One request: status and the body as JSON (`Null` when empty or not JSON).
async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = http.request(method, url);
    if let Some(b) = body {
        request = request
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Requests the API must refuse, one a line: `METHOD /path [body] → status code [field]`, the
/// path under `/api/v1` with `vars` filled in, the body named from `bodies`.
async fn refusals(
    http: &reqwest::Client,
    served: &Served,
    vars: &[(&str, &str)],
    bodies: &HashMap<&str, String>,
    specs: &[&str],
) {
    for spec in specs {
        let (request, expected) = spec.split_once(" → ").unwrap();
        let request: Vec<&str> = request.split(' ').collect();
        let expected: Vec<&str> = expected.split(' ').collect();
        let mut path = request[1].to_string();
        for (name, value) in vars {
            path = path.replace(name, value);
        }
        let body = request.get(2).map(|name| bodies[name].as_str());
        let got = call(http, request[0], &served.api(&path), body).await;
        let status: u16 = expected[0].parse().unwrap();
        assert_eq!(got.0, status, "{spec}: {}", got.1);
        assert_error(&got, status, expected[1], expected.get(2).copied());
    }
}

/// Asserts a JSON error with `status`, `code` and (when given) the offending `field`.
fn assert_error(got: &(u16, serde_json::Value), status: u16, code: &str, field: Option<&str>) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(f) = field {
        assert_eq!(body["error"]["field"], f, "{body}");
    }
}

/// `(track_id, action)` of the events of `user` in the lake's `events/`.
fn logged_events(lake: &Path, user: &str) -> Vec<(String, String)> {
    use arrow::array::AsArray;
    fn dirs(dir: &Path, out: &mut Vec<PathBuf>) {
        out.push(dir.to_path_buf());
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs(&e.path(), out);
            }
        }
    }
    let mut all = Vec::new();
    dirs(&lake.join("events"), &mut all);
    let mut found = Vec::new();
    for dir in all {
        for (_, batches) in read_parquet_dir(&dir) {
            for b in batches {
                let col = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
                let (users, tracks, actions) = (col("user_id"), col("track_id"), col("action"));
                for i in 0..b.num_rows() {
                    if users.value(i) == user {
                        found.push((tracks.value(i).to_string(), actions.value(i).to_string()));
                    }
                }
            }
        }
    }
    found
}

/// Waits (up to 20 s) until `user`'s event `(track, action)` is in `events/`.
async fn wait_for_event(lake: &Path, user: &str, track: &str, action: &str) {
    let started = Instant::now();
    loop {
        let events = logged_events(lake, user);
        if events.iter().any(|(t, a)| t == track && a == action) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {action} of {track} by {user} in events/: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A user the model has a factor for, among the first `page` users by id.
async fn known_user(http: &reqwest::Client, served: &Served, page: u32) -> String {
    let (_, users) = call(
        http,
        "GET",
        &served.api(&format!("/users?limit={page}")),
        None,
    )
    .await;
    users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["long_term"] == "als")
        .expect("a user with an ALS factor")["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn ids(listing: &serde_json::Value) -> Vec<String> {
    listing["songs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn event_json(user: &str, song: &serde_json::Value, action: &str) -> String {
    serde_json::json!({
        "user_id": user,
        "track_id": song["id"],
        "artist_id": song["artist_id"],
        "action": action,
        "duration_s": 40,
        "total_duration_s": 0,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_serves_every_route_and_refuses_bad_input() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let served = Served::start().await;
        let http = http();
        let api = |p: &str| served.api(p);

        let (s, health) = call(&http, "GET", &api("/health"), None).await;
        assert_eq!(s, 200);
        assert!(health["model_version"].as_str().is_some(), "{health}");

        // Users: pages follow each other without overlap.
        let (s, first) = call(&http, "GET", &api("/users?limit=3"), None).await;
        assert_eq!(
            (s, first["has_more"].as_bool()),
            (200, Some(true)),
            "{first}"
        );
        let last = first["users"][2]["id"].as_str().unwrap();
        let (_, second) = call(
            &http,
            "GET",
            &api(&format!("/users?limit=3&after={last}")),
            None,
        )
        .await;
        let page = |v: &serde_json::Value| -> Vec<String> {
            v["users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert!(
            page(&second).iter().all(|id| id.as_str() > last),
            "{second}"
        );

        let user = known_user(&http, &served, 50).await;
        let (s, got) = call(&http, "GET", &api(&format!("/users/{user}")), None).await;
        assert_eq!(
            (s, got["user"]["long_term"].as_str()),
            (200, Some("als")),
            "{got}"
        );

        // The home feed: pages of one session never repeat a song.
        let feed = api(&format!("/users/{user}/feed?limit=10"));
        let (s, page1) = call(&http, "GET", &format!("{feed}&refresh=true"), None).await;
        assert_eq!(
            (s, page1["has_more"].as_bool()),
            (200, Some(true)),
            "{page1}"
        );
        let (_, page2) = call(&http, "GET", &feed, None).await;
        let (a, b) = (ids(&page1), ids(&page2));
        assert_eq!((a.len(), b.len()), (10, 10));
        assert!(
            a.iter().all(|id| !b.contains(id)),
            "a song came twice: {a:?} {b:?}"
        );
        assert_eq!(page1["songs"][0]["source"], "als", "{page1}");

        // Next songs: fused, and each tells why.
        let song = page1["songs"][0].clone();
        let song_id = song["id"].as_str().unwrap();
        let (s, next) = call(
            &http,
            "GET",
            &api(&format!(
                "/users/{user}/next/{song_id}?limit=15&refresh=true"
            )),
            None,
        )
        .await;
        assert_eq!(s, 200, "{next}");
        assert_eq!(ids(&next).len(), 15);
        assert!(!ids(&next).contains(&song_id.to_string()));
        let why = next["songs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["why"].is_object())
            .expect("a fused pick");
        let parts = why["why"]["als"].as_f64().unwrap_or(0.0)
            + why["why"]["lyrics"].as_f64().unwrap_or(0.0);
        assert!(
            (parts - why["score"].as_f64().unwrap()).abs() < 1e-4,
            "{why}"
        );

        // Record play (the 30-second rule).
        let plays = api(&format!("/users/{user}/plays/{song_id}"));
        let (s, played) = call(&http, "POST", &plays, None).await;
        assert_eq!(
            (s, played["short_term_updated"].as_bool()),
            (200, Some(true)),
            "{played}"
        );
        let (_, after) = call(&http, "GET", &api(&format!("/users/{user}")), None).await;
        assert_eq!(after["user"]["short_term"], true, "{after}");

        // Search with paging.
        let title = song["title"].as_str().unwrap();
        let q = |extra: &str| {
            api(&format!(
                "/search?query={}{extra}",
                url::form_urlencoded::byte_serialize(title.as_bytes()).collect::<String>()
            ))
        };
        let (s, found) = call(&http, "GET", &q("&limit=100"), None).await;
        assert_eq!(s, 200, "{found}");
        assert!(
            ids(&found).contains(&song_id.to_string()),
            "{title} not found: {found}"
        );
        let (_, one) = call(&http, "GET", &q("&limit=1"), None).await;
        assert_eq!(ids(&one).len(), 1);
        assert_eq!(one["has_more"], ids(&found).len() > 1);

        // Songs and similar songs.
        let (s, detail) = call(&http, "GET", &api(&format!("/songs/{song_id}")), None).await;
        assert_eq!(
            (s, detail["song"]["title"].as_str()),
            (200, Some(title)),
            "{detail}"
        );
        let (s, similar) = call(
            &http,
            "GET",
            &api(&format!("/songs/{song_id}/similar?limit=5")),
            None,
        )
        .await;
        assert_eq!(s, 200, "{similar}");
        if detail["has_lyrics_vector"] == true {
            assert_eq!(ids(&similar).len(), 5, "{similar}");
        }

        // Events: JSON, the sendBeacon form (text/plain), and everything wrong with them.
        let events = api("/events");
        let (s, _) = call(
            &http,
            "POST",
            &events,
            Some(&event_json(&user, &song, "skip")),
        )
        .await;
        assert_eq!(s, 202);
        let beacon = http
            .post(&events)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(event_json(&user, &next["songs"][0], "complete"))
            .send()
            .await
            .unwrap();
        assert_eq!(beacon.status().as_u16(), 202);
        let mut extra: serde_json::Value =
            serde_json::from_str(&event_json(&user, &song, "skip")).unwrap();
        extra["mood"] = "happy".into();
        let mut late = extra.clone();
        late.as_object_mut().unwrap().remove("mood");
        late["timestamp_ms"] = (i64::MAX / 1000).into();
        let huge = format!(
            r#"{{"name": "{}"}}"#,
            "x".repeat(recsys_serve::http::BODY_LIMIT + 1)
        );
        wait_for_event(served.dir.path(), &user, song_id, "skip").await;
        wait_for_event(
            served.dir.path(),
            &user,
            next["songs"][0]["id"].as_str().unwrap(),
            "complete",
        )
        .await;

        // Everything wrong with a request, each refused with the JSON error naming the field.
        let vars = [("{user}", user.as_str()), ("{song}", song_id)];
        let bodies = HashMap::from([
            ("rewind", event_json(&user, &song, "rewind")),
            ("anonymous", event_json("", &song, "skip")),
            ("partial", r#"{"user_id": "u"}"#.to_string()),
            ("broken", "{not json".to_string()),
            ("mood", extra.to_string()),
            ("late", late.to_string()),
            ("huge", huge.clone()),
            ("blank", r#"{"name": " "}"#.to_string()),
            ("number", r#"{"name": 7}"#.to_string()),
            ("list", "[]".to_string()),
        ]);
        refusals(
            &http,
            &served,
            &vars,
            &bodies,
            &[
                "GET /users?limit=0 → 422 invalid limit",
                "GET /users?limit=x → 400 bad_request limit",
                "GET /users?limit=2&limit=3 → 400 bad_request limit",
                "GET /users/nobody-at-all → 404 not_found user_id",
                "GET /users/{user}/feed?refresh=maybe → 400 bad_request refresh",
                "GET /users/{user}/feed?limit=501 → 422 invalid limit",
                "GET /users/nobody/feed → 404 not_found user_id",
                "GET /users/{user}/feed?colour=red → 400 bad_request colour",
                "GET /users/{user}/next/no-such-song → 404 not_found current_song_id",
                "POST /users/{user}/plays/{song}?decay=2 → 422 invalid decay",
                "POST /users/{user}/plays/{song}?decay=NaN → 400 bad_request decay",
                "POST /users/{user}/plays/no-such-song → 404 not_found song_id",
                "GET /search → 422 invalid query",
                "GET /search?query=%20 → 422 invalid query",
                "GET /search?query=a&skip=-1 → 400 bad_request skip",
                "GET /songs/no-such-song → 404 not_found song_id",
                "POST /events rewind → 422 invalid action",
                "POST /events anonymous → 422 invalid user_id",
                "POST /events partial → 422 invalid track_id",
                "POST /events broken → 400 bad_request body",
                "POST /events mood → 422 invalid mood",
                "POST /events late → 422 invalid timestamp",
                "POST /events huge → 413 too_large",
                "POST /users huge → 413 too_large",
                "POST /users blank → 422 invalid name",
                "POST /users number → 422 invalid",
                "POST /users list → 422 invalid",
                "GET /recs/someone → 404 no_route",
                "PUT /users → 405 method_not_allowed",
            ],
        )
        .await;

        // Profiles: create, and delete so that checks clean up after themselves.
        let (s, created) = call(
            &http,
            "POST",
            &api("/users"),
            Some(r#"{"name": "  Ann  "}"#),
        )
        .await;
        assert_eq!(
            (s, created["user"]["name"].as_str()),
            (201, Some("Ann")),
            "{created}"
        );
        let new_id = created["user"]["id"].as_str().unwrap();
        let (s, cold) = call(
            &http,
            "GET",
            &api(&format!("/users/{new_id}/feed?limit=5")),
            None,
        )
        .await;
        assert_eq!(
            (s, cold["songs"][0]["source"].as_str()),
            (200, Some("popularity")),
            "{cold}"
        );
        let (s, _) = call(&http, "DELETE", &api(&format!("/users/{new_id}")), None).await;
        assert_eq!(s, 204);
        let gone = [("{new}", new_id)];
        refusals(
            &http,
            &served,
            &gone,
            &HashMap::new(),
            &[
                "GET /users/{new} → 404 not_found user_id",
                "DELETE /users/{new} → 404 not_found user_id",
            ],
        )
        .await;

        // No route, wrong method; gRPC still answers on the same port.
        let (s, _) = call(&http, "GET", &format!("{}/nowhere", served.endpoint), None).await;
        assert_eq!(s, 404);
        let client = Client::connect(&served.endpoint).await.unwrap();
        let grpc_user = client
            .recs
            .clone()
            .get_user(GetUserRequest {
                user_id: user.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(grpc_user.id, user);
        let missing = client
            .recs
            .clone()
            .get_user(GetUserRequest {
                user_id: "nobody".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        // A gRPC service this port does not serve is gRPC's UNIMPLEMENTED, not a JSON 404.
        let channel = tonic::transport::Endpoint::from_shared(served.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut ingest = recsys_proto::v1::ingest_service_client::IngestServiceClient::new(channel);
        let event = recsys_proto::v1::ListenEvent::default();
        let unimplemented = ingest.log_event(event).await.unwrap_err();
        assert_eq!(unimplemented.code(), tonic::Code::Unimplemented);

        // The operator's view.
        let (s, status) = call(&http, "GET", &api("/status"), None).await;
        assert_eq!(s, 200);
        let ndcg = &status["model"]["evaluation"];
        assert!(
            ndcg["model"]["ndcg_at_10"].as_f64().is_some()
                && ndcg["popularity"]["ndcg_at_10"].as_f64().is_some(),
            "{status}"
        );
        assert!(status["catalog"]["songs"].as_u64().unwrap() > 0, "{status}");
        assert!(
            status["catalog"]["lyrics_coverage"].as_f64().unwrap() > 0.5,
            "{status}"
        );
        let svg = http
            .get(api("/models/current/loss.svg"))
            .send()
            .await
            .unwrap();
        assert_eq!(svg.headers()["content-type"], "image/svg+xml");
        assert!(svg.text().await.unwrap().starts_with("<svg"));
        for (page, needle) in [
            ("/", "Who is listening?"),
            ("/status", "recsys status"),
            ("/web/app.js", "import"),
        ] {
            let got = http
                .get(format!("{}{page}", served.endpoint))
                .send()
                .await
                .unwrap();
            assert_eq!(got.status().as_u16(), 200, "{page}");
            assert!(got.text().await.unwrap().contains(needle), "{page}");
        }
        served.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let served = Served::start().await;
        let http = http();
        let (s, doc) = call(&http, "GET", &served.api("/openapi.json"), None).await;
        assert_eq!(s, 200);
        assert_eq!(doc["openapi"], "3.1.0");
        let user = known_user(&http, &served, 50).await;
        let (_, feed) = call(
            &http,
            "GET",
            &served.api(&format!("/users/{user}/feed?limit=1")),
            None,
        )
        .await;
        let song = feed["songs"][0].clone();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(
            paths
                .values()
                .map(|p| p.as_object().unwrap().len())
                .sum::<usize>(),
            recsys_serve::http::ROUTES.len()
        );
        let mut checked = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                // Every documented route answers a valid request with its documented success.
                let mut user_id = user.clone();
                if method == "delete" {
                    let (_, u) = call(
                        &http,
                        "POST",
                        &served.api("/users"),
                        Some(r#"{"name": "doc check"}"#),
                    )
                    .await;
                    user_id = u["user"]["id"].as_str().unwrap().to_string();
                }
                let mut url = path
                    .replace("{user_id}", &user_id)
                    .replace("{song_id}", song["id"].as_str().unwrap());
                let required: Vec<&str> = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["in"] == "query" && p["required"] == true)
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                if !required.is_empty() {
                    let title: String = url::form_urlencoded::byte_serialize(
                        song["title"].as_str().unwrap().as_bytes(),
                    )
                    .collect();
                    url += &format!(
                        "?{}",
                        required
                            .iter()
                            .map(|p| format!("{p}={title}"))
                            .collect::<Vec<_>>()
                            .join("&")
                    );
                }
                let body = match op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                    .as_str()
                {
                    Some("#/components/schemas/NewUser") => {
                        Some(r#"{"name": "doc check"}"#.to_string())
                    }
                    Some("#/components/schemas/Event") => Some(event_json(&user, &song, "listen")),
                    Some(other) => panic!("no example for {other}"),
                    None => None,
                };
                let full = format!("{}{url}", served.endpoint);
                let (status, answer) =
                    call(&http, &method.to_uppercase(), &full, body.as_deref()).await;
                let responses = op["responses"].as_object().unwrap();
                let success: Vec<&String> =
                    responses.keys().filter(|k| k.starts_with('2')).collect();
                assert_eq!(success, [&status.to_string()], "{method} {url}: {answer}");
                // Its documented schema names the fields it answers with.
                if let Some(schema) = responses[&status.to_string()]["content"]["application/json"]
                    ["schema"]["$ref"]
                    .as_str()
                {
                    let name = schema.rsplit('/').next().unwrap();
                    for field in doc["components"]["schemas"][name]["required"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        let field = field.as_str().unwrap();
                        assert!(
                            answer.get(field).is_some(),
                            "{method} {url}: no `{field}` in {answer}"
                        );
                    }
                }
                // Every error status it documents has the error schema.
                for (code, r) in responses.iter().filter(|(k, _)| !k.starts_with('2')) {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{code}"
                    );
                }
                // A method the document does not list for this path is refused as such.
                for other in ["get", "post", "delete", "put", "patch"] {
                    if !item.as_object().unwrap().contains_key(other) {
                        let (s, _) = call(&http, &other.to_uppercase(), &full, None).await;
                        assert_eq!(s, 405, "{other} {url} is routed but not documented");
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, recsys_serve::http::ROUTES.len());
        // Paths the document does not list (the seed's among them) are not routed.
        let unrouted = [
            "GET /recs/x → 404 no_route",
            "GET /user/x → 404 no_route",
            "GET /new-user → 404 no_route",
            "GET /logs/event → 404 no_route",
            "GET /users/x/y → 404 no_route",
            "GET /songs → 404 no_route",
        ];
        refusals(&http, &served, &[], &HashMap::new(), &unrouted).await;
        served.stop().await;
    })
    .await
    .expect("test timed out");
}

#[test]
fn random_requests_never_get_a_server_error() {
    use proptest::prelude::*;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = rt.block_on(Served::start());
    let client = http();
    let user = rt.block_on(known_user(&client, &served, 50));
    let segment = prop_oneof![
        Just("users".to_string()),
        Just("feed".to_string()),
        Just("next".to_string()),
        Just("plays".to_string()),
        Just("songs".to_string()),
        Just("similar".to_string()),
        Just("search".to_string()),
        Just("events".to_string()),
        Just(user.clone()),
        Just("%FF%FE".to_string()),
        "[a-z0-9%._~-]{0,12}",
        "\\PC{0,6}".prop_map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect()),
    ];
    let param = (
        prop_oneof![
            Just("limit"),
            Just("skip"),
            Just("refresh"),
            Just("query"),
            Just("decay"),
            Just("after"),
            Just("exclude_heard"),
            Just("x")
        ],
        prop_oneof![
            Just("-1".to_string()),
            Just("0".to_string()),
            Just("1e9".to_string()),
            Just("4294967296".to_string()),
            Just("NaN".to_string()),
            Just("true".to_string()),
            "\\PC{0,8}",
        ],
    );
    let body = prop_oneof![
        Just(None),
        Just(Some("{}".to_string())),
        Just(Some(r#"{"name": null}"#.to_string())),
        Just(Some(format!(
            r#"{{"user_id": "{user}", "track_id": "t", "artist_id": "a", "action": "listen", "duration_s": -1}}"#
        ))),
        "\\PC{0,64}".prop_map(Some),
    ];
    let request = (
        prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("PUT")],
        proptest::collection::vec(segment, 0..5),
        proptest::collection::vec(param, 0..4),
        body,
    );
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&request, |(method, segments, params, body)| {
            let query: Vec<String> = params
                .iter()
                .map(|(k, v)| {
                    let v: String = url::form_urlencoded::byte_serialize(v.as_bytes()).collect();
                    format!("{k}={v}")
                })
                .collect();
            let url = format!(
                "{}/api/v1/{}?{}",
                served.endpoint,
                segments.join("/"),
                query.join("&")
            );
            let (status, answer) = rt.block_on(call(&client, method, &url, body.as_deref()));
            prop_assert!(status < 500, "{method} {url} {body:?} → {status} {answer}");
            if status >= 400 {
                prop_assert!(
                    answer["error"]["code"].is_string(),
                    "{method} {url} → {status} {answer}"
                );
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(served.stop());
}

/// The browser and its driver, or `None` (the test says why) where they are missing and
/// `RECSYS_REQUIRE_BROWSER` is not set; `scripts/test` sets it, so CI never passes silently.
fn browser_paths() -> Option<(PathBuf, PathBuf)> {
    let found = recsys_cli::webdriver::locate();
    if found.is_none() {
        let message = "no chromium and chromedriver (apt-get install chromium chromium-driver)";
        assert!(
            std::env::var_os("RECSYS_REQUIRE_BROWSER").is_none(),
            "{message}"
        );
        eprintln!("SKIPPED: {message}");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_player_works_in_a_real_browser() {
    let Some((chromium, driver)) = browser_paths() else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(300), async {
        let served = Served::start().await;
        let browser = recsys_cli::webdriver::Browser::start(&chromium, &driver, 1280, 900)
            .await
            .unwrap();
        let outcome = drive_the_player(&browser, &served).await;
        if let Err(e) = &outcome {
            let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_player_failure.png");
            browser.screenshot(&shot).await.ok();
            browser.quit().await;
            panic!("{e:#}\nscreenshot: {}", shot.display());
        }
        browser.quit().await;
        served.stop().await;
    })
    .await
    .expect("test timed out");
}

/// A listener's session, step by step, checked in the page and on the server.
async fn drive_the_player(
    b: &recsys_cli::webdriver::Browser,
    served: &Served,
) -> anyhow::Result<()> {
    use anyhow::{Context, ensure};
    use serde_json::json;
    let wait = Duration::from_secs(20);
    let http = http();
    let user = known_user(&http, served, 50).await;
    let at_least =
        |css: &str, n: usize| format!("return document.querySelectorAll('{css}').length >= {n};");
    let feed_ids =
        "return [...document.querySelectorAll('#feed button.card')].map(b => b.dataset.songId);";

    // Pick a profile. The clock runs 40× (30 s of listening take 0.75 s).
    b.goto(&format!("{}/?speed=40", served.endpoint)).await?;
    b.wait_for("profiles", &at_least("#profile-list button", 1), wait)
        .await?;
    b.click(&format!("#profile-list button[data-user-id='{user}']"))
        .await?;

    // The feed shows cards; scrolling loads more, never a song twice.
    b.wait_for(
        "the first feed page",
        &at_least("#feed button.card", 20),
        wait,
    )
    .await?;
    let shown = b
        .eval("return document.body.dataset.feedShownMs;", vec![])
        .await?;
    ensure!(shown.as_str().is_some(), "no first-feed time recorded");
    b.eval("const m = document.getElementById('main'); m.scrollTop = m.scrollHeight; m.dispatchEvent(new Event('scroll'));", vec![]).await?;
    b.wait_for(
        "the second feed page",
        &at_least("#feed button.card", 40),
        wait,
    )
    .await?;
    let ids: Vec<String> = serde_json::from_value(b.eval(feed_ids, vec![]).await?)?;
    let unique: HashSet<&String> = ids.iter().collect();
    ensure!(
        unique.len() == ids.len(),
        "the feed repeated a song: {ids:?}"
    );

    // Play the first song: the queue fills with next songs, each saying why.
    let first = ids[0].clone();
    b.click(&format!("#feed button.card[data-song-id='{first}']"))
        .await?;
    let playing = b
        .eval(
            "return document.getElementById('player').dataset.songId;",
            vec![],
        )
        .await?;
    ensure!(playing == json!(first), "playing {playing}, not {first}");
    b.wait_for("up next", &at_least("#queue li", 1), wait)
        .await?;
    let why = b
        .eval(
            "return document.querySelector('#queue .why').textContent;",
            vec![],
        )
        .await?;
    ensure!(
        why.as_str().is_some_and(|w| !w.is_empty()),
        "no reason shown: {why}"
    );

    // The 30-second rule: the page records the play once, and the server has it.
    b.wait_for(
        "the recorded play",
        &format!("return document.getElementById('player').dataset.recorded === '{first}';"),
        wait,
    )
    .await?;
    let (_, u) = call(&http, "GET", &served.api(&format!("/users/{user}")), None).await;
    ensure!(
        u["user"]["short_term"] == true,
        "no short-term vector after the play: {u}"
    );

    // Next after ~40 s of 210 (assumed length): a skip, in events/.
    b.click("#next").await?;
    let last = b
        .wait_for(
            "the skip event",
            "return document.body.dataset.lastEvent;",
            wait,
        )
        .await?;
    let event: serde_json::Value = serde_json::from_str(last.as_str().context("event")?)?;
    ensure!(
        event["action"] == "skip" && event["track_id"] == json!(first),
        "{event}"
    );
    wait_for_event(served.dir.path(), &user, &first, "skip").await;

    // The next song plays to its end (5 s at 40×): `complete`, and autoplay moves on.
    let second = b
        .eval(
            "return document.getElementById('player').dataset.songId;",
            vec![],
        )
        .await?;
    let second = second.as_str().context("a second song")?.to_string();
    ensure!(second != first);
    b.wait_for("the complete event", &format!("const e = document.body.dataset.lastEvent; return e && JSON.parse(e).track_id === '{second}' && JSON.parse(e).action;"), wait).await?;
    let last: serde_json::Value = serde_json::from_str(
        b.eval("return document.body.dataset.lastEvent;", vec![])
            .await?
            .as_str()
            .context("event")?,
    )?;
    ensure!(last["action"] == "complete", "{last}");
    wait_for_event(served.dir.path(), &user, &second, "complete").await;
    let third = b
        .eval(
            "return document.getElementById('player').dataset.songId;",
            vec![],
        )
        .await?;
    ensure!(third != json!(second), "autoplay did not move on");

    // Space pauses (the keyboard), and the button says so to screen readers.
    b.eval("document.getElementById('main').focus(); document.getElementById('main').dispatchEvent(new KeyboardEvent('keydown', {key: ' ', bubbles: true}));", vec![]).await?;
    let label = b
        .eval(
            "return document.getElementById('play').getAttribute('aria-label');",
            vec![],
        )
        .await?;
    ensure!(label == json!("Play"), "space did not pause: {label}");

    // Search finds a known title.
    let (_, song) = call(&http, "GET", &served.api(&format!("/songs/{first}")), None).await;
    let title = song["song"]["title"].as_str().context("title")?.to_string();
    b.type_into("#search-box", &title).await?;
    b.click("#search button").await?;
    b.wait_for("search results", &format!("return [...document.querySelectorAll('#result-list button')].some(b => b.dataset.songId === '{first}');"), wait).await?;

    // What it looks like (kept beside a failure's screenshot, for people).
    b.screenshot(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("web_player.png"))
        .await?;

    // Phone width: nothing wider than the screen.
    b.resize(390, 844).await?;
    let overflow = b
        .eval(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await?;
    ensure!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "wider than a phone by {overflow} px"
    );
    b.resize(1280, 900).await?;

    // Add a profile; it appears among the profiles (and is removed again).
    b.click("#switch-profile").await?;
    b.type_into("#profile-name", "Browser Tester").await?;
    b.click("#add-profile button").await?;
    let new_id = b.wait_for("the new profile", "const b = [...document.querySelectorAll('#profile-list button')].find(b => b.textContent.includes('Browser Tester')); return b && b.dataset.userId;", wait).await?;
    let new_id = new_id.as_str().context("id")?;
    let (s, _) = call(
        &http,
        "DELETE",
        &served.api(&format!("/users/{new_id}")),
        None,
    )
    .await;
    ensure!(s == 204, "deleting the new profile: {s}");

    // The operator page shows the model against popularity.
    b.goto(&format!("{}/status", served.endpoint)).await?;
    b.wait_for(
        "the status page",
        "return document.body.dataset.loaded;",
        wait,
    )
    .await?;
    let table = b
        .eval(
            "return document.getElementById('evaluation').textContent;",
            vec![],
        )
        .await?;
    ensure!(
        table.as_str().is_some_and(|t| t.contains("NDCG@10")),
        "{table}"
    );
    let img = b
        .wait_for(
            "the loss chart",
            "const i = document.getElementById('loss'); return i.complete && i.naturalWidth;",
            wait,
        )
        .await?;
    ensure!(img.as_u64().unwrap_or(0) > 0);
    Ok(())
}

/// A feed page and whether the user has a short-term vector, through the JSON API.
async fn feed_page(
    http: &reqwest::Client,
    served: &Served,
    user: &str,
    refresh: bool,
) -> Vec<String> {
    let url = served.api(&format!("/users/{user}/feed?limit=10&refresh={refresh}"));
    let (s, page) = call(http, "GET", &url, None).await;
    assert_eq!(s, 200, "{page}");
    ids(&page)
}

async fn has_short_term(http: &reqwest::Client, served: &Served, user: &str) -> bool {
    let (_, u) = call(http, "GET", &served.api(&format!("/users/{user}")), None).await;
    u["user"]["short_term"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart_and_are_shared_by_replicas() {
    tokio::time::timeout(Duration::from_secs(300), async {
        let http = http();
        // Embedded: a restart of the server keeps the feed session and the short-term vector.
        let served = Served::start().await;
        let user = known_user(&http, &served, 50).await;
        let first = feed_page(&http, &served, &user, true).await;
        let plays = served.api(&format!("/users/{user}/plays/{}", first[0]));
        assert_eq!(call(&http, "POST", &plays, None).await.0, 200);
        assert!(has_short_term(&http, &served, &user).await);
        let lake = served.stop().await;
        let served = Served::start_on(lake).await;
        assert!(
            has_short_term(&http, &served, &user).await,
            "the short-term vector was lost"
        );
        let second = feed_page(&http, &served, &user, false).await;
        assert_eq!(second.len(), 10);
        assert!(
            second.iter().all(|id| !first.contains(id)),
            "the session started over: {first:?} {second:?}"
        );
        let lake = served.stop().await;

        // MongoDB (CongoDB): two replicas share sessions.
        let congo = MongoServer::congodb();
        let embedded = EmbeddedCatalog::open(&lake.path().join("catalog.redb"))
            .await
            .unwrap();
        let songs: Vec<_> = embedded
            .top_songs(1_000_000)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.stats)
            .collect();
        let users = embedded.list_users(None, 1_000_000).await.unwrap();
        drop(embedded);
        let options = recsys_catalog::MongoOptions::new(&congo.uri);
        let mongo = recsys_catalog::MongoCatalog::connect(&options)
            .await
            .unwrap();
        mongo.upsert_songs(&songs).await.unwrap();
        mongo.upsert_users(&users).await.unwrap();
        drop(mongo);
        let store = local_store(lake.path());
        let vectors: Arc<dyn VectorStore> =
            Arc::new(EmbeddedStore::open(&lake.path().join("vectors.redb"), 384).unwrap());
        // One event log for both: the embedded log has one writer per lake.
        let log = Arc::new(
            EmbeddedLog::open(store.clone(), flush_policy())
                .await
                .unwrap(),
        );
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let catalog: Arc<dyn Catalog> = Arc::new(
                recsys_catalog::MongoCatalog::connect(&options)
                    .await
                    .unwrap(),
            );
            let log = log.clone();
            let stores = Stores {
                lake: store.clone(),
                catalog,
                vectors: vectors.clone(),
                log,
            };
            let rec = Arc::new(Recommender::open(stores, Options::default()).await.unwrap());
            let replica = Served::with(tempfile::tempdir().unwrap(), rec, Duration::from_secs(30));
            replicas.push(replica.await);
        }
        let (a, b) = (&replicas[0], &replicas[1]);
        let first = feed_page(&http, a, &user, true).await;
        let second = feed_page(&http, b, &user, false).await;
        assert_eq!((first.len(), second.len()), (10, 10));
        assert!(
            second.iter().all(|id| !first.contains(id)),
            "replica b repeated a's songs"
        );
        assert!(!has_short_term(&http, b, &user).await);
        let plays = a.api(&format!("/users/{user}/plays/{}", first[0]));
        assert_eq!(call(&http, "POST", &plays, None).await.0, 200);
        assert!(
            has_short_term(&http, b, &user).await,
            "replica b does not see a's play"
        );
        // Deleting the user's sessions on one replica ends them for both.
        let (_, created) = call(
            &http,
            "POST",
            &a.api("/users"),
            Some(r#"{"name": "two replicas"}"#),
        )
        .await;
        let new_id = created["user"]["id"].as_str().unwrap();
        assert_eq!(feed_page(&http, b, new_id, true).await.len(), 10);
        assert_eq!(
            call(&http, "DELETE", &a.api(&format!("/users/{new_id}")), None)
                .await
                .0,
            204
        );
        let gone = [("{new}", new_id)];
        let spec = ["GET /users/{new}/feed → 404 not_found user_id"];
        refusals(&http, b, &gone, &HashMap::new(), &spec).await;
        for r in replicas {
            r.stop().await;
        }
    })
    .await
    .expect("test timed out");
}

/// Plays (`listen` and `complete`) per track and UTC day in the lake's events/, counted from
/// the files.
fn recount(lake: &Path) -> HashMap<String, HashMap<i64, i64>> {
    use arrow::array::AsArray;
    let mut out = HashMap::new();
    for day in std::fs::read_dir(lake.join("events")).unwrap() {
        for (_, batches) in read_parquet_dir(&day.unwrap().path()) {
            for b in batches {
                let tracks = b.column_by_name("track_id").unwrap().as_string::<i32>();
                let actions = b.column_by_name("action").unwrap().as_string::<i32>();
                let ts = b
                    .column_by_name("ts")
                    .unwrap()
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
                for i in 0..b.num_rows() {
                    if matches!(actions.value(i), "listen" | "complete") {
                        let day = ts.value(i).div_euclid(86_400_000_000);
                        *out.entry(tracks.value(i).to_string())
                            .or_insert_with(HashMap::new)
                            .entry(day)
                            .or_insert(0) += 1;
                    }
                }
            }
        }
    }
    out
}

/// `recsys --data-dir <lake> <args>`; its stdout, after checking it succeeded.
fn recsys_ok(lake: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(RECSYS)
        .arg("--data-dir")
        .arg(lake)
        .args(args)
        .env("RECSYS_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "recsys {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// (plays, plays_7d) of every catalog song.
async fn catalog_counts(lake: &Path) -> HashMap<String, (i64, i64)> {
    let catalog = EmbeddedCatalog::open(&lake.join("catalog.redb"))
        .await
        .unwrap();
    let mut out = HashMap::new();
    let mut ids = Vec::new();
    for (_, batches) in read_parquet_dir(&lake.join("catalog/songs")) {
        for b in batches {
            use arrow::array::AsArray;
            let col = b.column_by_name("track_id").unwrap().as_string::<i32>();
            ids.extend(col.iter().flatten().map(str::to_string));
        }
    }
    ids.push(NEW_TRACK.into());
    for song in catalog.songs(&ids).await.unwrap() {
        out.insert(
            song.stats.id.clone(),
            (song.stats.plays, song.stats.plays_7d),
        );
    }
    out
}

const NEW_TRACK: &str = "orchestrate-new-track";

/// Appends `plays` plays of `track` and 3 skips at `day` (µs) through the embedded log.
async fn append_plays(to: Via<'_>, track: &str, plays: usize, day: i64) {
    use recsys_ingest::event::{Action, Event, EventBuilder};
    use recsys_ingest::{EventLog, GrpcLog};
    let log: Box<dyn EventLog> = match to {
        Via::Lake(lake) => Box::new(
            EmbeddedLog::open(local_store(lake), flush_policy())
                .await
                .unwrap(),
        ),
        // The service may still be starting.
        Via::Ingest(endpoint) => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match GrpcLog::connect(endpoint).await {
                    Ok(log) => break Box::new(log),
                    Err(e) if Instant::now() > deadline => panic!("{e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    };
    let mut builder = EventBuilder::default();
    for i in 0..plays + 3 {
        let event = Event {
            user_id: format!("orchestrate-user-{}", i % 4),
            track_id: track.into(),
            artist_id: "orchestrate-artist".into(),
            timestamp: day + i as i64 * 1_000_000,
            action: if i < plays {
                Action::Listen
            } else {
                Action::Skip
            },
            source: "test".into(),
            duration_s: 100.0,
            total_duration_s: 200.0,
        };
        builder.push(&event, 0, 0);
    }
    log.append(builder.finish()).await.unwrap().await.unwrap();
    log.close().await.unwrap();
}

/// Where [`append_plays`] sends events: the lake's embedded log, or an ingest service.
#[derive(Clone, Copy)]
enum Via<'a> {
    Lake(&'a Path),
    Ingest(&'a str),
}

/// Every song's (plays, plays_7d) equals a recount of events/ with the window ending on day
/// `window_end`.
fn assert_counts_match_recount(lake: &Path, counts: &HashMap<String, (i64, i64)>, window_end: i64) {
    let recount = recount(lake);
    for (id, got) in counts {
        let days = recount.get(id).cloned().unwrap_or_default();
        let plays = days.values().sum::<i64>();
        let plays_7d = days
            .iter()
            .filter(|(d, _)| (window_end - 6..=window_end).contains(*d))
            .map(|(_, n)| n)
            .sum::<i64>();
        assert_eq!(
            *got,
            (plays, plays_7d),
            "counts of {id} differ from a recount of events/"
        );
    }
}

/// A copy of the pipeline's lake without the events its verification logged at the wall clock,
/// after its ETL: events/ holds what the ETL counted (the replayed history), its last date is
/// the ETL's anchor, and the newest play is the replay's.
fn replayed_lake() -> tempfile::TempDir {
    let copy = lake_copy();
    let lake = copy.path();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(lake.join("catalog/MANIFEST.json")).unwrap())
            .unwrap();
    let anchor_day = manifest["anchor_us"]
        .as_i64()
        .unwrap()
        .div_euclid(86_400_000_000);
    let (y, m, d) = recsys_core::time::civil_from_days(anchor_day);
    let last = format!("date={y:04}-{m:02}-{d:02}");
    for day in std::fs::read_dir(lake.join("events")).unwrap() {
        let day = day.unwrap();
        if day.file_name().to_string_lossy().as_ref() > last.as_str() {
            std::fs::remove_dir_all(day.path()).unwrap();
        }
    }
    copy
}

/// The orchestrator's counts job on the pipeline's lake: the first run over the replayed
/// history changes no song (same rule and window as the ETL); plays logged while it runs reach
/// the catalog (a new track gets an entry); a kill -9 mid-run and a rerun leave counts equal to
/// a recount of events/; compacting the closed dates leaves them so; the window roll on the
/// wall clock drops the 2009-era songs to 0; and `recsys status` reports it all.
#[test]
fn orchestrator_keeps_play_counts_equal_to_a_recount() {
    let copy = replayed_lake();
    let lake = copy.path().to_path_buf();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let before = rt.block_on(catalog_counts(&lake));
    let out = recsys_ok(&lake, &["orchestrate", "--once", "counts"]);
    assert!(out.contains("counts: "), "{out}");
    let after = rt.block_on(catalog_counts(&lake));
    let changed: Vec<_> = after
        .iter()
        .filter(|(id, c)| before.get(*id) != Some(c))
        .map(|(id, c)| (id, before.get(id), c))
        .take(10)
        .collect();
    assert!(
        changed.is_empty() && before.len() == after.len(),
        "the first count changed the ETL's numbers (id, before, after): {changed:?}"
    );

    // Plays of a known song a day after the newest event, while the orchestrator runs.
    let (song, (plays, _)) = after
        .iter()
        .max_by_key(|(id, c)| (c.1, id.as_str()))
        .unwrap();
    let (song, plays) = (song.clone(), *plays);
    let newest_day = rt.block_on(async {
        let store = local_store(&lake);
        let totals = recsys_ingest::counts::totals(
            &store,
            "music_log",
            recsys_ingest::counts::Anchor::NewestEvent,
            0,
        )
        .await
        .unwrap();
        totals.window_end.unwrap()
    });
    assert_counts_match_recount(&lake, &after, newest_day);
    let next_day = (newest_day + 1) * 86_400_000_000;
    // The plays reach it through its own ingest service (the lake's one event-log writer).
    let ingest = format!("127.0.0.1:{}", free_port());
    let mut orchestrator = std::process::Command::new(RECSYS)
        .arg("--data-dir")
        .arg(&lake)
        .args(["orchestrate", "--counts-every-s", "0.2", "--jitter", "0"])
        .args(["--ingest-listen", &ingest])
        .env("RECSYS_LOG", "warn")
        .spawn()
        .unwrap();
    let via = format!("grpc://{ingest}");
    rt.block_on(async {
        append_plays(Via::Ingest(&via), &song, 50, next_day).await;
        // Not beside it: the embedded log has one writer.
        let err = EmbeddedLog::open(local_store(&lake), flush_policy())
            .await
            .err();
        assert!(
            matches!(err, Some(recsys_ingest::LogError::InUse { .. })),
            "{err:?}"
        );
        append_plays(Via::Ingest(&via), NEW_TRACK, 5, next_day).await;
        let store = local_store(&lake);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (held, counted) = held_and_counted(&store, "music_log").await;
            if counted == held {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "counted {counted} of {held} events"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // One more interval: the publication follows the aggregation.
        tokio::time::sleep(Duration::from_millis(800)).await;
    });
    unsafe { libc::kill(orchestrator.id() as i32, libc::SIGTERM) };
    assert!(
        wait_for(&mut orchestrator, 30).success(),
        "SIGTERM stops it cleanly"
    );
    let live = rt.block_on(catalog_counts(&lake));
    assert_eq!(live[&song].0, plays + 50, "plays logged while it ran");
    assert_eq!(live[NEW_TRACK], (5, 5), "a new track gets an entry");
    // ...and so do the new users, with the first and last time they were seen.
    let users = rt.block_on(async {
        let catalog = EmbeddedCatalog::open(&lake.join("catalog.redb"))
            .await
            .unwrap();
        let mut users = Vec::new();
        for i in 0..4 {
            users.push(
                catalog
                    .user(&format!("orchestrate-user-{i}"))
                    .await
                    .unwrap(),
            );
        }
        users
    });
    for (i, user) in users.iter().enumerate() {
        let user = user.as_ref().expect("a new user gets an entry");
        // The user's events: the 50 plays of `song`, then NEW_TRACK's 8 events, a second apart.
        assert_eq!(user.stats.first_seen_ms, next_day / 1000 + i as i64 * 1000);
        assert!(
            user.stats.last_seen_ms > user.stats.first_seen_ms,
            "{user:?}"
        );
    }
    assert_counts_match_recount(&lake, &live, newest_day + 1);

    // kill -9 while it counts more; a rerun finishes the job exactly.
    rt.block_on(append_plays(Via::Lake(&lake), &song, 20, next_day));
    let mut killed = std::process::Command::new(RECSYS)
        .arg("--data-dir")
        .arg(&lake)
        .args(["orchestrate", "--counts-every-s", "0.05", "--jitter", "0"])
        .env("RECSYS_LOG", "warn")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    killed.kill().unwrap();
    killed.wait().unwrap();
    recsys_ok(&lake, &["orchestrate", "--once", "counts"]);
    let rerun = rt.block_on(catalog_counts(&lake));
    assert_eq!(rerun[&song].0, plays + 70);
    assert_counts_match_recount(&lake, &rerun, newest_day + 1);

    // Compaction by month of the closed dates (all but the newest): a day of the replayed
    // history is one file already. Fewer files, the same counts.
    let files = |lake: &std::path::Path| {
        std::fs::read_dir(lake.join("events"))
            .unwrap()
            .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
            .sum::<usize>()
    };
    assert!(files(&lake) > 100);
    let before_compaction = files(&lake);
    let out = recsys_ok(
        &lake,
        &[
            "orchestrate",
            "--once",
            "compact",
            "--compact-period",
            "month",
        ],
    );
    assert!(out.contains("compact: "), "{out}");
    let after_compaction = files(&lake);
    assert!(
        after_compaction * 10 < before_compaction,
        "{before_compaction} files became {after_compaction}: {out}"
    );
    recsys_ok(&lake, &["orchestrate", "--once", "counts"]);
    assert_eq!(rt.block_on(catalog_counts(&lake)), rerun);
    assert_counts_match_recount(&lake, &rerun, newest_day + 1);

    // The window on the wall clock: nothing was played in the last 7 days.
    let out = recsys_ok(
        &lake,
        &[
            "orchestrate",
            "--once",
            "window-roll",
            "--window-clock",
            "wall",
        ],
    );
    assert!(out.contains("window-roll: "), "{out}");
    let rolled = rt.block_on(catalog_counts(&lake));
    assert_eq!(rolled[&song], (plays + 70, 0), "dropped to 0, plays kept");
    assert!(rolled.values().all(|c| c.1 == 0));

    let status = recsys_ok(&lake, &["status"]);
    for needle in ["counts", "window-roll", "compact", "ok", "lag 0", "model: "] {
        assert!(status.contains(needle), "missing `{needle}` in:\n{status}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&recsys_ok(&lake, &["status", "--json"])).unwrap();
    assert_eq!(json["events"]["lag"], 0, "{json}");
    assert_eq!(json["jobs"]["counts"]["outcome"], "ok", "{json}");
}

/// Files under `models/als/<version>/` (none when the folder is gone).
fn model_files(lake: &Path, version: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), files);
            } else {
                files.push(e.path());
            }
        }
    }
    let mut files = Vec::new();
    walk(&lake.join(ALS_MODELS_DIR).join(version), &mut files);
    files
}

/// The version folders under `models/als/`.
fn model_versions(lake: &Path) -> Vec<String> {
    std::fs::read_dir(lake.join(ALS_MODELS_DIR))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect()
}

fn current_version(lake: &Path) -> String {
    std::fs::read_to_string(lake.join(ALS_MODELS_DIR).join("CURRENT"))
        .unwrap()
        .trim()
        .to_string()
}

/// The user ids of a model version, in the file's order.
fn model_users(lake: &Path, version: &str) -> Vec<String> {
    let file = lake
        .join(ALS_MODELS_DIR)
        .join(version)
        .join("users.parquet");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(file).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut out = Vec::new();
    for b in reader {
        use arrow::array::AsArray;
        out.extend(
            b.unwrap()
                .column(0)
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string),
        );
    }
    out
}

/// The retrain job, with the server in the orchestrator's process (`--serve`, the embedded
/// stores held by one process): at start the missed daily retrain trains on a trailing window,
/// carries the users outside it over, passes the gate, is published, and the server picks it up;
/// the old version beyond `--keep-models` goes. A version worse than the gate allows is not
/// published and is removed. A kill -9 mid-retrain leaves CURRENT on a complete model, and the
/// next retrain removes what the killed one left.
#[test]
fn orchestrator_retrains_on_a_window_behind_a_gate_and_its_server_reloads() {
    let copy = replayed_lake();
    let lake = copy.path().to_path_buf();
    let first = current_version(&lake);
    let first_users: HashSet<String> = model_users(&lake, &first).into_iter().collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut orchestrator = std::process::Command::new(RECSYS)
        .arg("--data-dir")
        .arg(&lake)
        .args([
            "orchestrate",
            "--serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--reload-s",
            "1",
            "--retrain-window-days",
            "180",
            "--retrain-max-ndcg-drop",
            "1",
            "--keep-models",
            "1",
        ])
        .env("RECSYS_LOG", "warn")
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let served = rt.block_on(async {
        let http = http();
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            if let Ok(r) = http.get(format!("{endpoint}/api/v1/health")).send().await {
                let health: serde_json::Value =
                    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or_default();
                let version = health["model_version"].as_str().unwrap_or_default();
                if !version.is_empty() && version != first {
                    break version.to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "the server never served a retrained model"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let second = current_version(&lake);
    assert_eq!(served, second, "the server serves what CURRENT names");
    let metrics: serde_json::Value = serde_json::from_slice(
        &std::fs::read(lake.join(ALS_MODELS_DIR).join(&second).join("metrics.json")).unwrap(),
    )
    .unwrap();
    let data = &metrics["data"];
    assert!(data["window"]["since"].is_string(), "{data}");
    let carried = data["carried_over"]["users"].as_u64().unwrap();
    assert!(
        carried > 0,
        "a 180-day window leaves some users out: {data}"
    );
    let second_order = model_users(&lake, &second);
    let second_users: HashSet<String> = second_order.iter().cloned().collect();
    assert!(
        first_users.is_subset(&second_users),
        "every user of the old model has a vector in the new one"
    );
    assert_eq!(
        second_users.len() as u64,
        data["users"].as_u64().unwrap() + carried
    );
    // A carried-over user (after the trained ones in the file) is served from the new model.
    rt.block_on(async {
        let user = &second_order[data["users"].as_u64().unwrap() as usize];
        let (status, feed) = call(
            &http(),
            "GET",
            &format!("{endpoint}/api/v1/users/{user}/feed?limit=5"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{feed}");
        assert_eq!(feed["songs"].as_array().unwrap().len(), 5, "{feed}");
    });
    assert_eq!(
        model_files(&lake, &first),
        Vec::<PathBuf>::new(),
        "--keep-models 1 removed the old version"
    );
    // The status page shows the job that did it (the server shares the orchestrator's catalog).
    let status = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, status) =
                call(&http(), "GET", &format!("{endpoint}/api/v1/status"), None).await;
            assert_eq!(code, 200, "{status}");
            if status["jobs"]["retrain"]["outcome"] == "ok" {
                break status;
            }
            assert!(Instant::now() < deadline, "no retrain record: {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let detail = status["jobs"]["retrain"]["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("published {second}")), "{detail}");
    assert_eq!(status["model"]["data"]["carried_over"]["users"], carried);
    unsafe { libc::kill(orchestrator.id() as i32, libc::SIGTERM) };
    assert!(
        wait_for(&mut orchestrator, 60).success(),
        "SIGTERM stops it cleanly"
    );

    // A 30-day window: too few plays for a model as good as the serving one.
    let out = recsys_ok(
        &lake,
        &[
            "orchestrate",
            "--once",
            "retrain",
            "--retrain-window-days",
            "30",
        ],
    );
    assert!(
        out.contains("not published") && out.contains("NDCG@10"),
        "{out}"
    );
    assert_eq!(current_version(&lake), second);
    let versions: Vec<String> = std::fs::read_dir(lake.join(ALS_MODELS_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|v| v != "CURRENT")
        .collect();
    for v in &versions {
        assert!(
            v == &second || model_files(&lake, v).is_empty(),
            "{v} left files"
        );
    }

    // kill -9 in the middle of a retrain: as soon as its version has a file (the ratings'
    // preparation has begun; training, evaluation and publication are still ahead).
    let before: Vec<String> = model_versions(&lake);
    let mut killed = std::process::Command::new(RECSYS)
        .arg("--data-dir")
        .arg(&lake)
        .args([
            "orchestrate",
            "--once",
            "retrain",
            "--retrain-max-ndcg-drop",
            "1",
        ])
        .env("RECSYS_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let half = loop {
        let started = model_versions(&lake)
            .into_iter()
            .find(|v| !before.contains(v) && !model_files(&lake, v).is_empty());
        if let Some(v) = started {
            break v;
        }
        assert!(
            Instant::now() < deadline && killed.try_wait().unwrap().is_none(),
            "the retrain wrote no file"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert!(
        !model_files(&lake, &half)
            .iter()
            .any(|f| f.ends_with("metrics.json")),
        "killed before the train was complete"
    );
    assert_eq!(
        current_version(&lake),
        second,
        "CURRENT never names a half-written model"
    );
    let out = recsys_ok(
        &lake,
        &[
            "orchestrate",
            "--once",
            "retrain",
            "--retrain-max-ndcg-drop",
            "1",
            "--keep-models",
            "1",
        ],
    );
    assert!(out.contains("published"), "{out}");
    let third = current_version(&lake);
    assert_ne!(third, second);
    for v in std::fs::read_dir(lake.join(ALS_MODELS_DIR)).unwrap() {
        let v = v.unwrap().file_name().to_string_lossy().to_string();
        if v != "CURRENT" && v != third {
            assert_eq!(
                model_files(&lake, &v),
                Vec::<PathBuf>::new(),
                "{v} left files after the next retrain"
            );
        }
    }
    let status = recsys_ok(&lake, &["status"]);
    assert!(
        status.contains("retrain") && status.contains("carried over"),
        "{status}"
    );
}

/// How many runs of each job the orchestrator's log (`RECSYS_LOG=info`) reports as ended.
fn job_runs(log: &Path) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap_or_default().lines() {
        // `run_recorded` ends every run, ok or failed, with the job's name and its time.
        let Some(job) = line.split("job=\"").nth(1) else {
            continue;
        };
        if line.contains(" elapsed=") {
            let name = job.split('"').next().unwrap_or_default().to_string();
            *runs.entry(name).or_default() += 1;
        }
    }
    runs
}

/// Waits until every job has ended `n` runs in `log` (or fails after `secs`).
fn wait_for_runs(log: &Path, jobs: &[&str], n: usize, secs: u64) -> HashMap<String, usize> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let runs = job_runs(log);
        if jobs.iter().all(|j| runs.get(*j).copied().unwrap_or(0) >= n) {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "not every job ran {n} times in {secs} s: {runs:?}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The orchestrator's own wall clock jumps two days ahead while it runs (libfaketime, its
/// offset changed through a file; the monotonic clock its sleeps use stays real): every job,
/// the 10-minute ones and the daily ones alike, catches up with one run, not one per interval
/// or day it missed, and the interval jobs then wait a whole interval again.
#[test]
fn a_wall_clock_jump_is_caught_up_once_per_job() {
    let faketime = std::env::var("RECSYS_TEST_FAKETIME").expect(
        "RECSYS_TEST_FAKETIME names Debian's libfaketimeMT.so.1: run the tests with \
         scripts/test, which installs it",
    );
    let copy = replayed_lake();
    let lake = copy.path().to_path_buf();
    let clock = lake.join("faketime-offset");
    std::fs::write(&clock, "+0\n").unwrap();
    let log = lake.join("orchestrate.log");
    let mut orchestrator = Killed(
        std::process::Command::new(RECSYS)
            .arg("--data-dir")
            .arg(&lake)
            .args(["orchestrate", "--jitter", "0"])
            .args(["--counts-every-s", "600", "--supervise-every-s", "600"])
            .args(["--retrain-max-ndcg-drop", "1"])
            .env("RECSYS_LOG", "info,ballista=warn,datafusion=warn")
            .env("LD_PRELOAD", &faketime)
            .env("FAKETIME_TIMESTAMP_FILE", &clock)
            .env("FAKETIME_NO_CACHE", "1")
            .env("DONT_FAKE_MONOTONIC", "1")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let jobs = recsys_catalog::jobs::JOBS;
    // At start: the interval jobs run, and so do the daily ones (never run on this lake).
    let first = wait_for_runs(&log, &jobs, 1, 300);
    assert!(jobs.iter().all(|j| first[*j] == 1), "{first:?}");
    // Nothing more is due for 10 minutes...
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(job_runs(&log), first, "a job ran again before it was due");

    // ...until the clock skips two days: 288 missed intervals of the 10-minute jobs, two of
    // every daily one. One run each.
    std::fs::write(&clock, "+2d\n").unwrap();
    let second = wait_for_runs(&log, &jobs, 2, 300);
    // The loop looks at the clock every second: a few seconds more would show a second
    // catch-up run.
    std::thread::sleep(Duration::from_secs(5));
    let after = job_runs(&log);
    assert_eq!(after, second, "a job ran again after catching up");
    assert!(jobs.iter().all(|j| after[*j] == 2), "{after:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(" ERROR "), "a job failed:\n{text}");

    unsafe { libc::kill(orchestrator.0.id() as i32, libc::SIGTERM) };
    assert!(
        wait_for(&mut orchestrator.0, 60).success(),
        "SIGTERM stops it cleanly"
    );
}

/// Kills a child process on drop (a failing test leaves no server behind).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The production path on one machine, every store a separate server: MongoDB (SecantusDB, a
/// MongoDB-compatible server over WiredTiger), Qdrant (the protocol stand-in in this process) and Kafka (tansu)
/// with `recsys sink` writing the topic into `events/`. The pipeline fills them and verifies
/// its own server on them; then `recsys serve` on the same stores passes `recsys verify
/// --events`: the event it logs travels through Kafka and the sink into `events/`.
#[test]
fn serving_on_mongodb_qdrant_and_kafka() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let qdrant = rt
        .block_on(recsys_testkit::qdrant::Running::start())
        .unwrap();
    let mongo_dir = tempfile::tempdir().unwrap();
    let mongo_port = free_port();
    let mongo = MongoServer::secantusdb_on(mongo_port, Some(mongo_dir.path()));
    let mongo_uri = mongo.uri.clone();
    // Kafka keeps its log in S3 (the bucket of an S3 server in this process), so a broker
    // started again on the same port carries on with the topic and the consumer's offsets.
    let kafka_s3 = rt.block_on(S3Server::start("tansu"));
    let kafka_port = free_port();
    let kafka = Broker::launch(kafka_port, Some(&kafka_s3));
    kafka.create_topic("music_log", 3);
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    let recsys = |args: &[&str]| {
        let mut cmd = std::process::Command::new(RECSYS);
        cmd.arg("--data-dir")
            .arg(lake)
            .args(args)
            .env("RECSYS_KAFKA", &kafka.brokers)
            .env("RECSYS_MONGO", &mongo_uri)
            .env("RECSYS_MONGO_TIMEOUT_S", "2")
            .env("RECSYS_KAFKA_DELIVERY_TIMEOUT_MS", "3000")
            .env("RECSYS_QDRANT", &qdrant.url)
            .env("RECSYS_LOG", "warn");
        cmd
    };
    let _sink = Killed(recsys(&["sink", "--assign-all"]).spawn().unwrap());
    let out = recsys(&[
        "pipeline", "--users", "40", "--tracks", "2000", "--events", "30000",
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in ["replayed at max× into Kafka", "embed:", " 0 failed"] {
        assert!(stdout.contains(needle), "missing `{needle}` in:\n{stdout}");
    }
    // The stores hold what the pipeline made, not the lake's embedded files.
    assert!(!lake.join("catalog.redb").exists() && !lake.join("vectors.redb").exists());
    let in_qdrant = rt.block_on(async {
        let options = recsys_vectors::QdrantOptions::new(&qdrant.url);
        let store = recsys_vectors::QdrantStore::connect(&options, recsys_embed::DIM)
            .await
            .unwrap();
        store.count().await.unwrap()
    });
    assert!(in_qdrant > 100, "{in_qdrant} vectors in Qdrant");
    let stats = recsys(&["catalog", "stats"]).output().unwrap();
    let stats = String::from_utf8_lossy(&stats.stdout);
    assert!(stats.contains(&format!("MongoDB {mongo_uri}")), "{stats}");

    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let _server = Killed(
        recsys(&["serve", "--listen", &format!("127.0.0.1:{port}")])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "recsys serve did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = recsys(&["verify", "--endpoint", &endpoint, "--events"])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(report.contains(" 0 failed"), "{report}");

    // Each store stopped while serving: what needs it answers 503 naming it (never a hang or a
    // 500), what does not keep working, and service resumes when it is back, no restart.
    let api = |path: &str| format!("{endpoint}/api/v1{path}");
    let http = http();
    let get = |path: String| {
        let http = http.clone();
        rt.block_on(async move { call(&http, "GET", &path, None).await })
    };
    let (s, users) = get(api("/users?limit=5"));
    assert_eq!(s, 200, "{users}");
    let user = users["users"][0]["id"].as_str().unwrap().to_string();
    let (s, feed) = get(api(&format!("/users/{user}/feed")));
    assert_eq!(s, 200, "{feed}");
    let songs: Vec<String> = feed["songs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert!(songs.len() >= 3, "{feed}");
    let until_ok = |path: String| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (s, body) = get(path.clone());
            if s == 200 {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never recovered: {s} {body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // Qdrant: lyrics neighbours need it (a song not asked before: nothing cached).
    let addr = qdrant.addr;
    let data = qdrant.stop();
    // (`recsys verify` asked for the neighbours of a song at the top of a feed: cached.)
    let unasked = songs.last().unwrap();
    let (s, body) = get(api(&format!("/songs/{unasked}/similar")));
    assert_eq!(s, 503, "{body}");
    assert!(
        body.to_string().contains(&format!("Qdrant http://{addr}")),
        "{body}"
    );
    // (A song's page does: it says whether the song has a lyrics vector.)
    let (s, body) = get(api(&format!("/users/{user}")));
    assert_eq!(s, 200, "a user's page does not need Qdrant: {body}");
    let _qdrant = rt.block_on(data.serve(addr)).unwrap();
    until_ok(api(&format!("/songs/{unasked}/similar")));

    // MongoDB: a song's page needs the catalog; the health check does not.
    drop(mongo);
    let (s, body) = get(api(&format!("/songs/{}", songs[1])));
    assert_eq!(s, 503, "{body}");
    assert!(
        body.to_string().contains(&format!("MongoDB {mongo_uri}")),
        "{body}"
    );
    let (s, body) = get(api("/health"));
    assert_eq!(s, 200, "{body}");
    let _mongo = MongoServer::secantusdb_on(mongo_port, Some(mongo_dir.path()));
    let song = until_ok(api(&format!("/songs/{}", songs[1])));
    assert_eq!(
        song["song"]["id"].as_str(),
        Some(songs[1].as_str()),
        "{song}"
    );

    // Kafka: a logged event is refused (503) once the producer gives up
    // (`--kafka-delivery-timeout-ms`, 3 s here), never accepted and lost.
    drop(kafka);
    let event = event_json(&user, &feed["songs"][2], "complete");
    let post = |event: &str| {
        rt.block_on(async { call(&http, "POST", &api("/events"), Some(event)).await })
    };
    let (s, body) = post(&event);
    assert_eq!(s, 503, "{body}");
    // Back on the same port and storage: the server's producer and the sink reconnect by
    // themselves; events are accepted again and reach `events/`, the refused one never does.
    let track = feed["songs"][2]["id"].as_str().unwrap();
    let count = |action: &str| {
        let logged = logged_events(lake, &user);
        logged
            .iter()
            .filter(|(t, a)| t == track && a == action)
            .count()
    };
    let (listens_before, completes_before) = (count("listen"), count("complete"));
    let _kafka = Broker::launch(kafka_port, Some(&kafka_s3));
    let listen = event_json(&user, &feed["songs"][2], "listen");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (s, body) = post(&listen);
        if s == 202 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka never came back: {s} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while count("listen") <= listens_before {
        assert!(
            Instant::now() < deadline,
            "the accepted event never reached events/"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        count("complete"),
        completes_before,
        "a refused event was logged"
    );
}
