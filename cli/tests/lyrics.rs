//! Lyrics end to end.
//! - The LRCLIB client and enrichment against a local HTTP server that answers as LRCLIB does:
//!   found, search-only, exact lookup refused (400), not found (404), instrumental, 429 then
//!   success, permanent 500, a response slower than the timeout, malformed JSON. Transient failures must be retried and
//!   never recorded as "missing"; a second run picks up exactly the songs that failed.
//! - `recsys lyrics fetch` killed with SIGKILL mid-run resumes where it stopped.
//! - `recsys lyrics clean-sync`: dry run, confirmation, removal from catalog and vector store,
//!   idempotence.
//! - `recsys submit embed`: resumable, Parquet + vector store in step, lyrics neighbours share
//!   their theme; `recsys embed text` matches the sentence-transformers reference.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use recsys_catalog::{Catalog, EmbeddedCatalog, LyricsStatus, SongStats};
use recsys_embed::enrich::{EnrichOptions, enrich};
use recsys_embed::lyrics::{Lrclib, USER_AGENT};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Default)]
struct Server {
    /// Requests per track name.
    hits: Mutex<HashMap<String, usize>>,
    agents: Mutex<Vec<String>>,
    healthy: AtomicBool,
    /// Added to every answer (to make a run slow enough to kill midway).
    delay: Duration,
}

fn record(track: &str, artist: &str, duration: f64, lyrics: Option<&str>) -> serde_json::Value {
    json!({
        "id": 1, "trackName": track, "artistName": artist, "albumName": "Album",
        "duration": duration, "instrumental": lyrics.is_none() && track.contains("Instrumental"),
        "plainLyrics": lyrics, "syncedLyrics": lyrics.map(|l| format!("[00:01.00] {l}")),
    })
}

impl Server {
    /// (status, body, delay) for one request.
    fn answer(&self, path: &str, q: &HashMap<String, String>) -> (u16, String, Duration) {
        let track = q.get("track_name").cloned().unwrap_or_default();
        let artist = q.get("artist_name").cloned().unwrap_or_default();
        let n = {
            let mut hits = self.hits.lock().unwrap();
            let n = hits.entry(track.clone()).or_default();
            *n += 1;
            *n
        };
        let ok = |v: serde_json::Value| (200, v.to_string(), Duration::ZERO);
        let not_found = (
            404,
            json!({"code": 404, "name": "TrackNotFound"}).to_string(),
            Duration::ZERO,
        );
        let get = path == "/api/get";
        match track.as_str() {
            "Found Song" if get => ok(record(&track, &artist, 200.0, Some("found words"))),
            "Instrumental Piece" if get => ok(record(&track, &artist, 200.0, None)),
            "Search Only" if get => not_found,
            // An exact lookup refused for want of an album: search finds it.
            "Needs Album" if get => (400, json!({"code": 400}).to_string(), Duration::ZERO),
            "Needs Album" => ok(json!([record(
                "Needs Album",
                &artist,
                201.0,
                Some("by search")
            )])),
            "Search Only" => ok(json!([
                record("Search Only", "Somebody Else", 200.0, Some("decoy")),
                record(
                    "Search Only (Remastered)",
                    &artist,
                    204.0,
                    Some("right one")
                ),
            ])),
            "Busy" if n <= 2 => (429, "{}".into(), Duration::ZERO),
            "Busy" if get => ok(record(&track, &artist, 200.0, Some("after the rush"))),
            "Broken" if !self.healthy.load(Ordering::SeqCst) => {
                (500, "oops".into(), Duration::ZERO)
            }
            "Broken" if get => ok(record(&track, &artist, 200.0, Some("mended"))),
            "Slow Once" if n == 1 => ok_after(record(&track, &artist, 200.0, Some("late")), 2),
            "Slow Once" if get => ok(record(&track, &artist, 200.0, Some("on time"))),
            "Always Slow" => ok_after(record(&track, &artist, 200.0, Some("never")), 2),
            "Garbled" => (200, "{\"trackName\": ".into(), Duration::ZERO),
            t if t.starts_with("Song ") && get => {
                ok(record(&track, &artist, 200.0, Some("la la la")))
            }
            _ if get => not_found,
            _ => ok(json!([])),
        }
    }
}

fn ok_after(v: serde_json::Value, secs: u64) -> (u16, String, Duration) {
    (200, v.to_string(), Duration::from_secs(secs))
}

/// A minimal HTTP/1.1 server (keep-alive, GET only) on 127.0.0.1.
async fn serve(server: Arc<Server>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let server = server.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(request)) = lines.next_line().await {
                    let target = request.split(' ').nth(1).unwrap_or("/").to_string();
                    while let Ok(Some(header)) = lines.next_line().await {
                        if header.is_empty() {
                            break;
                        }
                        if let Some(agent) = header.strip_prefix("user-agent: ") {
                            server.agents.lock().unwrap().push(agent.to_string());
                        }
                    }
                    let parsed = url::Url::parse(&format!("http://x{target}")).unwrap();
                    let q: HashMap<String, String> = parsed.query_pairs().into_owned().collect();
                    let (status, body, delay) = server.answer(parsed.path(), &q);
                    tokio::time::sleep(delay + server.delay).await;
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nretry-after: 0\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if write.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn song(track: &str) -> SongStats {
    SongStats {
        id: format!("id-{}", track.to_lowercase().replace(' ', "-")),
        track_name: track.into(),
        artist_name: "The Band".into(),
        artist_id: "artist".into(),
        plays: 10,
        plays_7d: 1,
        listeners: 3,
        first_played_ms: None,
        last_played_ms: None,
        duration_s: Some(201.0),
    }
}

const TRACKS: [&str; 11] = [
    "Found Song",
    "Instrumental Piece",
    "Search Only",
    "Needs Album",
    "Nowhere",
    "Busy",
    "Broken",
    "Slow Once",
    "Always Slow",
    "Garbled",
    "",
];

#[tokio::test]
async fn enrichment_against_an_lrclib_shaped_server() {
    let server = Arc::new(Server::default());
    let url = serve(server.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb"))
        .await
        .unwrap();
    catalog
        .upsert_songs(&TRACKS.iter().map(|t| song(t)).collect::<Vec<_>>())
        .await
        .unwrap();
    let api = Lrclib::new(&url, Duration::from_millis(400)).unwrap();
    let options = EnrichOptions {
        concurrency: 4,
        attempts: 3,
        backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..EnrichOptions::default()
    };
    let counts = enrich(&catalog, &api, &options, &|_| {}).await.unwrap();
    let status = |track: &str| {
        let catalog = &catalog;
        let id = song(track).id;
        async move { catalog.song(&id).await.unwrap().unwrap().lyrics.unwrap() }
    };
    let found = |track: &'static str, text: &'static str| async move {
        let l = status(track).await;
        assert_eq!(
            (l.status, l.plain.as_deref()),
            (LyricsStatus::Found, Some(text)),
            "{track}"
        );
        assert_eq!(l.synced, Some(format!("[00:01.00] {text}")), "{track}");
    };
    found("Found Song", "found words").await;
    found("Search Only", "right one").await;
    found("Needs Album", "by search").await;
    found("Busy", "after the rush").await;
    found("Slow Once", "on time").await;
    assert_eq!(
        status("Instrumental Piece").await.status,
        LyricsStatus::Instrumental
    );
    assert_eq!(status("Nowhere").await.status, LyricsStatus::Missing);
    // A song without a title is never sent to the API, and stays pending (not `missing`, which
    // clean & sync would remove) until it gets one.
    let untitled = catalog.song(&song("").id).await.unwrap().unwrap();
    assert!(untitled.lyrics.is_none(), "{untitled:?}");
    assert_eq!(counts.unnamed, 1);
    // Transient failures that never recover are errors, not "missing".
    for t in ["Broken", "Always Slow", "Garbled"] {
        assert_eq!(status(t).await.status, LyricsStatus::Error, "{t}");
    }
    assert_eq!(
        (
            counts.found,
            counts.instrumental,
            counts.missing,
            counts.errors
        ),
        (5, 1, 1, 3)
    );
    {
        let hits = server.hits.lock().unwrap();
        assert_eq!(hits["Broken"], 3, "3 attempts");
        assert_eq!(hits["Busy"], 3, "2 × 429, then found");
        assert!(!hits.contains_key(""));
    }
    assert!(counts.retries >= 2 + 2 + 1 + 2 + 2, "{counts:?}");
    assert!(
        server
            .agents
            .lock()
            .unwrap()
            .iter()
            .all(|a| a == USER_AGENT),
        "{:?}",
        server.agents.lock().unwrap()
    );

    // The next run looks up exactly the songs that failed, and nothing else.
    server.healthy.store(true, Ordering::SeqCst);
    server.hits.lock().unwrap().clear();
    let again = enrich(&catalog, &api, &options, &|_| {}).await.unwrap();
    assert_eq!((again.found, again.errors), (1, 2), "{again:?}");
    found("Broken", "mended").await;
    let mut visited: Vec<String> = server.hits.lock().unwrap().keys().cloned().collect();
    visited.sort();
    assert_eq!(visited, ["Always Slow", "Broken", "Garbled"]);
    let stats = catalog.stats().await.unwrap();
    assert_eq!(stats.lyrics_pending, 1, "the untitled song");
}

#[tokio::test]
async fn unreachable_lrclib_is_an_error_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = EmbeddedCatalog::open(&dir.path().join("c.redb"))
        .await
        .unwrap();
    catalog.upsert_songs(&[song("Found Song")]).await.unwrap();
    let api = Lrclib::new("http://127.0.0.1:9", Duration::from_millis(300)).unwrap();
    let options = EnrichOptions {
        attempts: 2,
        backoff: Duration::from_millis(5),
        ..EnrichOptions::default()
    };
    let counts = enrich(&catalog, &api, &options, &|_| {}).await.unwrap();
    assert_eq!(counts.errors, 1);
    let err = recsys_embed::lyrics::lookup(
        &api,
        &recsys_embed::lyrics::Query {
            track: "x".into(),
            artist: "y".into(),
            album: None,
            duration_s: None,
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("http://127.0.0.1:9/api/get"),
        "{err}"
    );
}

fn recsys(lake: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(common::RECSYS);
    cmd.arg("--data-dir").arg(lake).env("RECSYS_LOG", "warn");
    cmd
}

fn ok(out: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_killed_midway_resumes_where_it_stopped() {
    let server = Arc::new(Server {
        delay: Duration::from_millis(60),
        ..Server::default()
    });
    let url = serve(server.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let songs: Vec<SongStats> = (0..120).map(|i| song(&format!("Song {i:03}"))).collect();
    {
        let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb"))
            .await
            .unwrap();
        catalog.upsert_songs(&songs).await.unwrap();
    }
    let lake = dir.path().to_path_buf();
    let fetch = move || {
        let mut cmd = recsys(&lake);
        cmd.args([
            "lyrics",
            "fetch",
            "--lrclib-url",
            &url,
            "--concurrency",
            "4",
        ]);
        cmd
    };
    // 120 songs × 60 ms / 4 in flight ≈ 1.8 s: kill it once about half were answered.
    let mut child = fetch().spawn().unwrap();
    let answered = || server.hits.lock().unwrap().values().sum::<usize>();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while answered() < 60 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let done: Vec<String> = {
        let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb"))
            .await
            .unwrap();
        let found = catalog
            .songs_by_lyrics_status(Some(LyricsStatus::Found), None, 1000)
            .await
            .unwrap();
        found.into_iter().map(|s| s.stats.track_name).collect()
    };
    assert!(
        !done.is_empty() && done.len() < songs.len(),
        "the kill should land midway: {} of {} done",
        done.len(),
        songs.len()
    );
    let before: HashMap<String, usize> = server.hits.lock().unwrap().clone();

    let again = fetch.clone();
    let out = tokio::task::spawn_blocking(move || again().output().unwrap())
        .await
        .unwrap();
    let stdout = ok(out);
    assert!(
        stdout.contains(&format!("{} songs", songs.len() - done.len())),
        "{stdout}"
    );
    // Songs recorded before the kill were not asked for again; every song is found now.
    let hits = server.hits.lock().unwrap().clone();
    for track in &done {
        assert_eq!(hits[track], before[track], "{track} was looked up again");
    }
    let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb"))
        .await
        .unwrap();
    let stats = catalog.stats().await.unwrap();
    assert_eq!(stats.lyrics_pending, 0);
    assert_eq!(stats.lyrics[0], (LyricsStatus::Found, songs.len() as u64));
}

fn lyrics(status: LyricsStatus, text: Option<&str>) -> recsys_catalog::Lyrics {
    recsys_catalog::Lyrics {
        status,
        plain: text.map(str::to_string),
        synced: None,
    }
}

const OCEAN: [&str; 3] = [
    "The tide pulls the sailor back to the harbor, salt on the anchor, waves against the shore all night long",
    "Deep under the waves the coral sleeps, the lighthouse calls the sailors home across the stormy sea",
    "Salt water in my hair, I follow the current to the shore, the ocean tide keeps calling me back again",
];
const CITY: [&str; 3] = [
    "Neon lights on the subway, taxis racing down the street, sirens echo off the concrete towers at midnight",
    "On the rooftop over the traffic, the skyline hums, crowds in the alley, the city never sleeps tonight",
    "Concrete and neon, the subway train is late again, I walk the crowded streets under the tower lights",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_sync_then_embed_resumably() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    {
        let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb"))
            .await
            .unwrap();
        let songs: Vec<SongStats> = ids
            .iter()
            .map(|id| SongStats {
                id: id.clone(),
                track_name: format!("Title {id}"),
                ..song("x")
            })
            .collect();
        catalog.upsert_songs(&songs).await.unwrap();
        let mut updates = Vec::new();
        for (i, text) in OCEAN.iter().chain(&CITY).enumerate() {
            updates.push((ids[i].clone(), lyrics(LyricsStatus::Found, Some(text))));
        }
        updates.push((
            ids[6].clone(),
            lyrics(LyricsStatus::Found, Some("too short")),
        ));
        updates.push((ids[7].clone(), lyrics(LyricsStatus::Missing, None)));
        updates.push((ids[8].clone(), lyrics(LyricsStatus::Instrumental, None)));
        updates.push((ids[9].clone(), lyrics(LyricsStatus::Error, None)));
        catalog.set_lyrics(&updates).await.unwrap();
    }
    // A vector left from an earlier run for a song that has since lost its lyrics.
    {
        let store =
            recsys_vectors::EmbeddedStore::open(&dir.path().join("vectors.redb"), 384).unwrap();
        let point = recsys_vectors::Point {
            payload: recsys_vectors::Payload {
                track_id: ids[7].clone(),
                title: "old".into(),
                artist: "old".into(),
            },
            vector: vec![1.0; 384],
        };
        recsys_vectors::VectorStore::upsert(&store, &[point])
            .await
            .unwrap();
    }
    let lake = dir.path().to_path_buf();
    let run = move |args: &'static [&'static str], stdin: &'static str| {
        let lake = lake.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut child = recsys(&lake)
                    .args(args)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(stdin.as_bytes())
                    .unwrap();
                child.wait_with_output().unwrap()
            })
            .await
            .unwrap()
        }
    };
    let dry = ok(run(&["lyrics", "clean-sync", "--dry-run"], "").await);
    assert!(dry.contains("2 songs without lyrics"), "{dry}");
    let refused = run(&["lyrics", "clean-sync"], "no\n").await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing removed"));
    let removed = ok(run(&["lyrics", "clean-sync"], "yes\n").await);
    assert!(
        removed.contains("removed 2 songs; 0 vectors remain"),
        "{removed}"
    );
    let again = ok(run(&["lyrics", "clean-sync", "--yes"], "").await);
    assert!(again.contains("0 songs without lyrics"), "{again}");

    // Embed 3, then the rest: nothing twice, the too-short text skipped.
    let first = ok(run(&["submit", "embed", "--limit", "3", "--chunk", "2"], "").await);
    assert!(first.contains("3 embedded"), "{first}");
    let rest = ok(run(&["submit", "embed"], "").await);
    assert!(
        rest.contains("3 embedded")
            && rest.contains("3 already embedded")
            && rest.contains("1 too short"),
        "{rest}"
    );
    let parts = common::read_parquet_dir(&dir.path().join("embeddings/lyrics"));
    let mut embedded: Vec<String> = parts
        .iter()
        .flat_map(|(_, batches)| batches.iter())
        .flat_map(|b| {
            use arrow::array::AsArray;
            b.column(0)
                .as_string::<i32>()
                .iter()
                .map(|s| s.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    embedded.sort();
    assert_eq!(embedded, ids[..6]);

    // Lyrics neighbours share their theme.
    let store = recsys_vectors::EmbeddedStore::open(&dir.path().join("vectors.redb"), 384).unwrap();
    use recsys_vectors::VectorStore;
    assert_eq!(store.count().await.unwrap(), 6);
    for (i, id) in ids[..6].iter().enumerate() {
        let v = store.vector(id).await.unwrap().unwrap();
        let hits = store.search(&v, 2, std::slice::from_ref(id)).await.unwrap();
        for hit in hits {
            let j = ids.iter().position(|x| *x == hit.payload.track_id).unwrap();
            assert_eq!(
                i < 3,
                j < 3,
                "{id}'s neighbour {} is of the other theme",
                hit.payload.track_id
            );
        }
    }
    drop(store);

    // A new, empty vector store (Qdrant switched on for this lake, say) gets the earlier
    // parts' vectors again, except for a song that has since lost its lyrics.
    std::fs::remove_file(dir.path().join("vectors.redb")).unwrap();
    {
        let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb"))
            .await
            .unwrap();
        let gone = (ids[0].clone(), lyrics(LyricsStatus::Missing, None));
        catalog.set_lyrics(&[gone]).await.unwrap();
    }
    let restored = ok(run(&["submit", "embed"], "").await);
    assert!(
        restored.contains("0 embedded")
            && restored.contains("5 already embedded (5 stored again in the vector store)"),
        "{restored}"
    );
    let again = ok(run(&["submit", "embed"], "").await);
    assert!(
        again.contains("5 already embedded,") && !again.contains("stored again"),
        "{again}"
    );
    let store = recsys_vectors::EmbeddedStore::open(&dir.path().join("vectors.redb"), 384).unwrap();
    assert_eq!(store.count().await.unwrap(), 5);
    assert!(store.vector(&ids[0]).await.unwrap().is_none());
}

#[test]
fn embed_text_prints_token_ids_and_the_reference_embedding() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(recsys(dir.path())
        .args(["embed", "text", "Hello world"])
        .output()
        .unwrap());
    let printed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reference: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!(
            "{}/../minilm/tests/fixtures/minilm_reference.json",
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into())
        ))
        .unwrap(),
    )
    .unwrap();
    let case = &reference["texts"][0];
    assert_eq!(case["text"], "Hello world");
    assert_eq!(printed[0]["token_ids"], case["token_ids"]);
    let got = printed[0]["embedding"].as_array().unwrap();
    let want = case["embedding"].as_array().unwrap();
    assert_eq!(got.len(), 384);
    for (g, w) in got.iter().zip(want) {
        assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-5);
    }
}
