//! The LRCLIB client and enrichment against a local HTTP server that answers as LRCLIB does:
//! found, search-only, not found (404), instrumental, 429 then success, permanent 500, a
//! response slower than the timeout, malformed JSON. Transient failures must be retried and
//! never recorded as "missing"; a second run picks up exactly the songs that failed.

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
                    tokio::time::sleep(delay).await;
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

const TRACKS: [&str; 10] = [
    "Found Song",
    "Instrumental Piece",
    "Search Only",
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
    found("Busy", "after the rush").await;
    found("Slow Once", "on time").await;
    assert_eq!(
        status("Instrumental Piece").await.status,
        LyricsStatus::Instrumental
    );
    assert_eq!(status("Nowhere").await.status, LyricsStatus::Missing);
    // A song without a title is never sent to the API.
    assert_eq!(status("").await.status, LyricsStatus::Missing);
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
        (4, 1, 2, 3)
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
    let hits = server.hits.lock().unwrap();
    let mut visited: Vec<&str> = hits.keys().map(String::as_str).collect();
    visited.sort();
    assert_eq!(visited, ["Always Slow", "Broken", "Garbled"]);
    let stats = catalog.stats().await.unwrap();
    assert_eq!(stats.lyrics_pending, 0);
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
