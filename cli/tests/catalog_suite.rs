//! One behavioural suite, run against every catalog implementation with the same cases and the
//! same expectations:
//! - `embedded`: the redb store in a temporary folder;
//! - `congodb`: the MongoDB implementation against CongoDB, a MongoDB wire-protocol emulator
//!   (`RECSYS_TEST_CONGODB` names its start script; scripts/test installs it);
//! - `secantusdb`: the same against SecantusDB, a MongoDB-compatible server over WiredTiger
//!   (`RECSYS_TEST_SECANTUSDB` names its `secantusd-py`; scripts/test installs it);
//! - `mongodb`: the MongoDB implementation against a real MongoDB when `RECSYS_TEST_MONGO_URI`
//!   is set (each test uses its own database and drops it); otherwise these tests say so and
//!   check nothing.

mod common;

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use recsys_catalog::load::{UserVectors, checkpoint_key, load};
use recsys_catalog::{
    Catalog, CatalogError, EmbeddedCatalog, LatentVector, Lyrics, LyricsStatus, MongoCatalog,
    MongoOptions, Song, SongStats, User, UserStats,
};
use recsys_core::manifest::{EtlManifest, TableFiles};
use recsys_core::schema::{song_schema, user_schema};
use recsys_core::{S3Options, Store};

/// A catalog under test and whatever keeps its server or folder alive.
struct Subject {
    catalog: Box<dyn Catalog>,
    _guard: Box<dyn std::any::Any>,
}

async fn embedded() -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let catalog = EmbeddedCatalog::open(&dir.path().join("catalog.redb"))
        .await
        .unwrap();
    Some(Subject {
        catalog: Box::new(catalog),
        _guard: Box::new(dir),
    })
}

async fn congodb() -> Option<Subject> {
    mongo_subject(common::MongoServer::congodb()).await
}

async fn secantusdb() -> Option<Subject> {
    mongo_subject(common::MongoServer::secantusdb()).await
}

async fn mongo_subject(server: common::MongoServer) -> Option<Subject> {
    let catalog = MongoCatalog::connect(&MongoOptions::new(&server.uri))
        .await
        .unwrap();
    Some(Subject {
        catalog: Box::new(catalog),
        _guard: Box::new(server),
    })
}

/// Drops its database on drop (on a thread of its own: drop is synchronous).
struct DropDatabase(String, String);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let (uri, db) = (self.0.clone(), self.1.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(client) = mongodb::Client::with_uri_str(&uri).await {
                    let _ = client.database(&db).drop().await;
                }
            });
        })
        .join()
        .unwrap();
    }
}

async fn mongodb(case: &str) -> Option<Subject> {
    let Ok(uri) = std::env::var("RECSYS_TEST_MONGO_URI") else {
        eprintln!("RECSYS_TEST_MONGO_URI is not set: not run against a real MongoDB");
        return None;
    };
    let mut options = MongoOptions::new(&uri);
    options.database = format!("recsys_test_{case}_{}", std::process::id());
    let catalog = MongoCatalog::connect(&options).await.unwrap();
    Some(Subject {
        catalog: Box::new(catalog),
        _guard: Box::new(DropDatabase(uri, options.database)),
    })
}

fn song(id: &str, title: &str, artist: &str, plays: i64, plays_7d: i64) -> SongStats {
    SongStats {
        id: id.to_string(),
        track_name: title.to_string(),
        artist_name: artist.to_string(),
        artist_id: format!("artist-{artist}"),
        plays,
        plays_7d,
        listeners: plays / 2,
        first_played_ms: Some(1_230_000_000_000),
        last_played_ms: Some(1_240_000_000_000 + plays),
        duration_s: None,
    }
}

fn user(id: &str, plays: i64, latent: Option<(&str, Vec<f32>)>) -> User {
    User {
        stats: UserStats {
            id: id.to_string(),
            plays,
            distinct_tracks: plays / 2,
            distinct_artists: plays / 3,
            first_seen_ms: 1_100_000_000_000,
            last_seen_ms: 1_200_000_000_123,
            active_days: 7,
        },
        name: None,
        latent: latent.map(|(v, vector)| LatentVector {
            model_version: v.to_string(),
            vector,
        }),
    }
}

fn ids(songs: &[recsys_catalog::Song]) -> Vec<&str> {
    songs.iter().map(|s| s.stats.id.as_str()).collect()
}

fn found(text: &str) -> Lyrics {
    Lyrics {
        status: LyricsStatus::Found,
        plain: Some(text.to_string()),
        synced: Some(format!("[00:01.00] {text}")),
    }
}

async fn upsert_is_idempotent(c: &dyn Catalog) {
    let mut songs = vec![
        song("s1", "Blue Monday", "New Order", 10, 2),
        song("s2", "Hey Jude", "The Beatles", 30, 0),
    ];
    songs[1].duration_s = Some(431.5);
    c.upsert_songs(&songs).await.unwrap();
    c.upsert_songs(&songs).await.unwrap();
    let stats = c.stats().await.unwrap();
    assert_eq!((stats.songs, stats.lyrics_pending), (2, 2));
    let s2 = c.song("s2").await.unwrap().unwrap();
    assert_eq!(s2.stats, songs[1]);
    assert_eq!(s2.lyrics, None);
    assert!(c.song("nope").await.unwrap().is_none());

    // New statistics replace the old; lyrics survive a re-run of the ETL.
    assert_eq!(
        c.set_lyrics(&[("s1".into(), found("how does it feel"))])
            .await
            .unwrap(),
        1
    );
    let mut again = songs.clone();
    again[0].plays = 11;
    again[0].track_name = "Blue Monday '88".into();
    c.upsert_songs(&again).await.unwrap();
    let s1 = c.song("s1").await.unwrap().unwrap();
    assert_eq!(s1.stats, again[0]);
    assert_eq!(s1.lyrics, Some(found("how does it feel")));
    assert_eq!(c.stats().await.unwrap().songs, 2);
    // Listings carry the lyrics' status, not their texts.
    let card = |s: Song| s.lyrics.map(|l| (l.status, l.plain, l.synced));
    let listed = c.songs(&["s1".to_string()]).await.unwrap().pop().unwrap();
    assert_eq!(listed.stats, again[0]);
    assert_eq!(card(listed), Some((LyricsStatus::Found, None, None)));
    let top = c.top_songs(10).await.unwrap();
    let top = top.into_iter().find(|s| s.stats.id == "s1").unwrap();
    assert_eq!(card(top), Some((LyricsStatus::Found, None, None)));

    // Users: statistics replaced, the vector kept unless a new one is given.
    let v1 = vec![0.25_f32, -1.5, 3.0e-7];
    c.upsert_users(&[
        user("u1", 12, Some(("m1", v1.clone()))),
        user("u2", 3, None),
    ])
    .await
    .unwrap();
    c.upsert_users(&[user("u1", 14, None), user("u2", 3, None)])
        .await
        .unwrap();
    let u1 = c.user("u1").await.unwrap().unwrap();
    assert_eq!(u1.stats, user("u1", 14, None).stats);
    assert_eq!(
        u1.latent,
        Some(LatentVector {
            model_version: "m1".into(),
            vector: v1
        })
    );
    c.upsert_users(&[user("u1", 14, Some(("m2", vec![1.0, 2.0, 3.0])))])
        .await
        .unwrap();
    let u1 = c.user("u1").await.unwrap().unwrap();
    assert_eq!(u1.latent.unwrap().model_version, "m2");
    assert_eq!(c.user("u2").await.unwrap().unwrap().latent, None);
    let stats = c.stats().await.unwrap();
    assert_eq!((stats.users, stats.users_with_vector), (2, 1));
}

async fn batch_lookup_listing_and_names(c: &dyn Catalog) {
    c.upsert_songs(&[
        song("s1", "Blue Monday", "New Order", 10, 2),
        song("s2", "Hey Jude", "The Beatles", 30, 0),
        song("s3", "Atmosphere", "Joy Division", 5, 1),
    ])
    .await
    .unwrap();
    let asked: Vec<String> = ["s3", "nope", "s1"].map(String::from).to_vec();
    assert_eq!(ids(&c.songs(&asked).await.unwrap()), ["s3", "s1"]);
    assert!(c.songs(&[]).await.unwrap().is_empty());

    let users: Vec<User> = ["u3", "u1", "u2"].map(|id| user(id, 1, None)).to_vec();
    c.upsert_users(&users).await.unwrap();
    let listed = |after: Option<&'static str>, limit| async move {
        c.list_users(after, limit)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.stats.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(None, 2).await, ["u1", "u2"]);
    assert_eq!(listed(Some("u2"), 10).await, ["u3"]);
    assert!(listed(Some("u3"), 10).await.is_empty());
    let asked: Vec<String> = ["u2", "nope", "u3"].map(String::from).to_vec();
    let found: Vec<String> = c
        .users(&asked)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.stats.id)
        .collect();
    assert_eq!(found, ["u2", "u3"]);
    assert!(c.users(&[]).await.unwrap().is_empty());

    // A name given is stored; an upsert without one keeps it.
    let mut named = user("u9", 0, None);
    named.name = Some("Ada".into());
    c.upsert_users(&[named]).await.unwrap();
    c.upsert_users(&[user("u9", 5, None)]).await.unwrap();
    let u9 = c.user("u9").await.unwrap().unwrap();
    assert_eq!((u9.name.as_deref(), u9.stats.plays), (Some("Ada"), 5));

    // Deleting users: only the ones that exist count.
    let gone: Vec<String> = ["u9", "u1", "nope"].map(String::from).to_vec();
    assert_eq!(c.delete_users(&gone).await.unwrap(), 2);
    assert!(c.user("u9").await.unwrap().is_none());
    assert_eq!(listed(None, 10).await, ["u2", "u3"]);
}

async fn sessions_expire_and_can_be_deleted(c: &dyn Catalog) {
    use std::time::Duration;
    let keys: Vec<String> = ["feed:u1", "next:u1", "short:u1"]
        .map(String::from)
        .to_vec();
    assert_eq!(c.sessions(&keys).await.unwrap(), [None, None, None]);
    c.put_sessions(&[
        (
            "feed:u1".into(),
            "queue".to_string(),
            Duration::from_secs(3600),
        ),
        (
            "short:u1".into(),
            "[0.5, \"ü\"]".to_string(),
            Duration::from_millis(400),
        ),
    ])
    .await
    .unwrap();
    let got = c.sessions(&keys).await.unwrap();
    assert_eq!(
        got,
        [
            Some("queue".to_string()),
            None,
            Some("[0.5, \"ü\"]".to_string())
        ]
    );
    // A write replaces the value and renews its lifetime.
    c.put_sessions(&[(
        "feed:u1".into(),
        "queue 2".to_string(),
        Duration::from_secs(3600),
    )])
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let got = c.sessions(&keys).await.unwrap();
    assert_eq!(
        got,
        [Some("queue 2".to_string()), None, None],
        "short:u1 expired"
    );
    // A later write sweeps the expired one (and writes the same key again from scratch).
    c.put_sessions(&[("short:u1".into(), "7".to_string(), Duration::from_secs(60))])
        .await
        .unwrap();
    assert_eq!(
        c.sessions(&keys[2..]).await.unwrap(),
        [Some("7".to_string())]
    );
    c.delete_sessions(&keys).await.unwrap();
    assert_eq!(c.sessions(&keys).await.unwrap(), [None, None, None]);
}

async fn search_ranks_and_pages(c: &dyn Catalog) {
    c.upsert_songs(&[
        song("a", "Blue Monday", "New Order", 10, 0),
        song("b", "Blue Monday '88", "New Order", 50, 0),
        song("c", "Monday Morning", "Blue Jays", 99, 0),
        song("d", "Something Else", "Blue", 500, 0),
        song("e", "Ceremony", "New Order", 7, 0),
        song("f", "Blue Monday", "Orkestra Obsolete", 10, 0),
    ])
    .await
    .unwrap();
    // Exact title first (ties by plays, then id), then title matches, then mixed matches.
    let page = c.search_songs("blue MONDAY", 10, 0).await.unwrap();
    assert_eq!(ids(&page.items), vec!["a", "f", "b", "c"]);
    assert!(!page.has_more);
    let first = c.search_songs("blue monday", 2, 0).await.unwrap();
    assert_eq!((ids(&first.items), first.has_more), (vec!["a", "f"], true));
    let second = c.search_songs("blue monday", 2, 2).await.unwrap();
    assert_eq!(
        (ids(&second.items), second.has_more),
        (vec!["b", "c"], false)
    );
    let past = c.search_songs("blue monday", 2, 4).await.unwrap();
    assert_eq!((past.items.len(), past.has_more), (0, false));
    // Artist words count too, with less weight than title words.
    let page = c.search_songs("new order", 10, 0).await.unwrap();
    assert_eq!(ids(&page.items), vec!["b", "a", "e"]);
    // Every word must match.
    assert!(
        c.search_songs("blue ceremony", 10, 0)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // A retitled song is found by its new words only.
    c.upsert_songs(&[song("e", "Temptation", "New Order", 7, 0)])
        .await
        .unwrap();
    assert!(
        c.search_songs("ceremony", 10, 0)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        ids(&c.search_songs("temptation", 10, 0).await.unwrap().items),
        vec!["e"]
    );
    // A query without words is refused, naming the query.
    match c.search_songs(" -- ", 10, 0).await {
        Err(CatalogError::Invalid(msg)) => assert!(msg.contains("` -- `"), "{msg}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

/// The counts job's writes: values set (a repeat changes nothing), known songs keep their
/// names and the top-N order follows, unknown songs created only when asked.
async fn play_counts_are_set_not_added(c: &dyn Catalog) {
    use recsys_catalog::PlayCounts;
    c.upsert_songs(&[song("a", "A", "X", 100, 5), song("b", "B", "X", 10, 9)])
        .await
        .unwrap();
    let counts = |id: &str, plays, plays_7d| PlayCounts {
        id: id.into(),
        plays,
        plays_7d,
    };
    let set = [counts("a", 120, 25), counts("new", 3, 3)];
    assert_eq!(c.set_play_counts(&set, false).await.unwrap(), 1);
    assert!(
        c.song("new").await.unwrap().is_none(),
        "created without `create`"
    );
    assert_eq!(c.set_play_counts(&set, true).await.unwrap(), 2);
    assert_eq!(c.set_play_counts(&set, true).await.unwrap(), 2);
    let a = c.song("a").await.unwrap().unwrap();
    assert_eq!(
        (a.stats.track_name.as_str(), a.stats.plays, a.stats.plays_7d),
        ("A", 120, 25)
    );
    let new = c.song("new").await.unwrap().unwrap();
    assert_eq!((new.stats.plays, new.stats.plays_7d), (3, 3));
    assert_eq!(ids(&c.top_songs(10).await.unwrap()), vec!["a", "b", "new"]);
}

async fn checkpoints_swap_atomically_and_leases_exclude(c: &dyn Catalog) {
    use recsys_catalog::jobs::{Lease, Leased, acquire_lease, release_lease};
    let get = || c.checkpoint("k");
    assert!(c.swap_checkpoint("k", None, Some("a")).await.unwrap());
    assert!(!c.swap_checkpoint("k", None, Some("b")).await.unwrap());
    assert!(!c.swap_checkpoint("k", Some("x"), Some("b")).await.unwrap());
    assert_eq!(get().await.unwrap().as_deref(), Some("a"));
    assert!(c.swap_checkpoint("k", Some("a"), Some("b")).await.unwrap());
    assert!(!c.swap_checkpoint("k", Some("a"), None).await.unwrap());
    assert!(c.swap_checkpoint("k", Some("b"), None).await.unwrap());
    assert_eq!(get().await.unwrap(), None);
    assert!(c.swap_checkpoint("k", None, None).await.unwrap());

    // Of concurrent first writers, exactly one wins.
    let values: Vec<String> = (0..8).map(|i| format!("v{i}")).collect();
    let won = futures::future::join_all(
        values
            .iter()
            .map(|v| c.swap_checkpoint("race", None, Some(v))),
    )
    .await;
    let winners: Vec<&String> = values
        .iter()
        .zip(&won)
        .filter(|(_, w)| *w.as_ref().unwrap())
        .map(|(v, _)| v)
        .collect();
    assert_eq!(winners.len(), 1, "{won:?}");
    assert_eq!(
        c.checkpoint("race").await.unwrap().as_ref(),
        Some(winners[0])
    );

    // Leases: held until they run out, renewed by their owner, taken over after, or when the
    // holder is known dead.
    let alive = |_: &Lease| false;
    let a = Lease {
        owner: "a".into(),
        until_ms: 2_000,
    };
    assert_eq!(
        acquire_lease(c, "counts", "a", (1_000, 2_000), &alive)
            .await
            .unwrap(),
        Leased::Acquired
    );
    assert_eq!(
        acquire_lease(c, "counts", "b", (1_500, 2_500), &alive)
            .await
            .unwrap(),
        Leased::HeldBy(a)
    );
    assert_eq!(
        acquire_lease(c, "retrain", "b", (1_500, 2_500), &alive)
            .await
            .unwrap(),
        Leased::Acquired,
        "a lease is per job"
    );
    assert_eq!(
        acquire_lease(c, "counts", "a", (1_900, 3_000), &alive)
            .await
            .unwrap(),
        Leased::Acquired
    );
    assert!(matches!(
        acquire_lease(c, "counts", "b", (2_999, 4_000), &alive)
            .await
            .unwrap(),
        Leased::HeldBy(Lease {
            until_ms: 3_000,
            ..
        })
    ));
    assert_eq!(
        acquire_lease(c, "counts", "b", (3_001, 4_000), &alive)
            .await
            .unwrap(),
        Leased::Acquired
    );
    assert!(
        !release_lease(c, "counts", "a").await.unwrap(),
        "a's lease ran out"
    );
    assert_eq!(
        acquire_lease(c, "counts", "a", (3_002, 5_000), &|l: &Lease| l.owner
            == "b")
        .await
        .unwrap(),
        Leased::Acquired,
        "b died"
    );
    assert!(
        !release_lease(c, "counts", "b").await.unwrap(),
        "a took it over"
    );
    assert!(release_lease(c, "counts", "a").await.unwrap());
    assert!(!release_lease(c, "counts", "a").await.unwrap());

    // Of concurrent takers, exactly one gets it.
    let owners: Vec<String> = (0..6).map(|i| format!("o{i}")).collect();
    let got = futures::future::join_all(
        owners
            .iter()
            .map(|o| acquire_lease(c, "compact", o, (5_000, 6_000), &alive)),
    )
    .await;
    let got: Vec<Leased> = got.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        got.iter().filter(|g| **g == Leased::Acquired).count(),
        1,
        "{got:?}"
    );
}

async fn top_by_plays_7d(c: &dyn Catalog) {
    c.upsert_songs(&[
        song("a", "A", "X", 100, 5),
        song("b", "B", "X", 10, 9),
        song("c", "C", "X", 20, 5),
        song("d", "D", "X", 20, 5),
        song("e", "E", "X", 1000, 0),
    ])
    .await
    .unwrap();
    assert_eq!(
        ids(&c.top_songs(10).await.unwrap()),
        vec!["b", "a", "c", "d", "e"]
    );
    assert_eq!(ids(&c.top_songs(2).await.unwrap()), vec!["b", "a"]);
    assert!(c.top_songs(0).await.unwrap().is_empty());
    // A new week of data reorders them.
    c.upsert_songs(&[song("e", "E", "X", 1010, 10)])
        .await
        .unwrap();
    assert_eq!(ids(&c.top_songs(2).await.unwrap()), vec!["e", "b"]);
}

async fn lyrics_status_queries(c: &dyn Catalog) {
    let songs: Vec<SongStats> = (1..=6)
        .map(|i| song(&format!("s{i}"), &format!("Song {i}"), "Band", i, 0))
        .collect();
    c.upsert_songs(&songs).await.unwrap();
    let pending = c.songs_by_lyrics_status(None, None, 100).await.unwrap();
    assert_eq!(ids(&pending), vec!["s1", "s2", "s3", "s4", "s5", "s6"]);
    let both = [("s2".into(), found("la la")), ("s5".into(), found("na na"))];
    assert_eq!(c.set_lyrics(&both).await.unwrap(), 2);
    let missing = Lyrics {
        status: LyricsStatus::Missing,
        plain: None,
        synced: None,
    };
    assert_eq!(
        c.set_lyrics(&[("s3".into(), missing.clone())])
            .await
            .unwrap(),
        1
    );
    let instrumental = Lyrics {
        status: LyricsStatus::Instrumental,
        plain: None,
        synced: None,
    };
    // Unknown ids are skipped, the known ones in the same call still written.
    let mixed = [("s4".into(), instrumental), ("unknown".into(), missing)];
    assert_eq!(c.set_lyrics(&mixed).await.unwrap(), 1);

    let with = |s| async move {
        ids(&c.songs_by_lyrics_status(s, None, 100).await.unwrap())
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(with(Some(LyricsStatus::Found)).await, vec!["s2", "s5"]);
    assert_eq!(with(Some(LyricsStatus::Missing)).await, vec!["s3"]);
    assert_eq!(with(Some(LyricsStatus::Error)).await, Vec::<String>::new());
    assert_eq!(with(None).await, vec!["s1", "s6"]);
    // Paging by id: after a given id, at most `limit`.
    let page = c.songs_by_lyrics_status(None, Some("s1"), 1).await.unwrap();
    assert_eq!(ids(&page), vec!["s6"]);
    let page = c
        .songs_by_lyrics_status(Some(LyricsStatus::Found), Some("s2"), 5)
        .await
        .unwrap();
    assert_eq!(ids(&page), vec!["s5"]);
    // A song whose lookup changes status moves between the lists.
    assert_eq!(
        c.set_lyrics(&[("s3".into(), found("at last"))])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        with(Some(LyricsStatus::Found)).await,
        vec!["s2", "s3", "s5"]
    );
    assert_eq!(
        with(Some(LyricsStatus::Missing)).await,
        Vec::<String>::new()
    );
    let s3 = c.song("s3").await.unwrap().unwrap();
    assert_eq!(s3.lyrics, Some(found("at last")));

    let stats = c.stats().await.unwrap();
    assert_eq!(stats.lyrics_pending, 2);
    assert_eq!(
        stats.lyrics,
        vec![
            (LyricsStatus::Found, 3),
            (LyricsStatus::Missing, 0),
            (LyricsStatus::Instrumental, 1),
            (LyricsStatus::Error, 0),
        ]
    );

    // Deleting removes the songs from every listing (clean & sync); unknown ids are skipped.
    let gone = ["s4".to_string(), "s6".to_string(), "unknown".to_string()];
    assert_eq!(c.delete_songs(&gone).await.unwrap(), 2);
    assert_eq!(c.delete_songs(&gone).await.unwrap(), 0);
    assert!(c.song("s4").await.unwrap().is_none());
    assert_eq!(with(None).await, vec!["s1"]);
    assert_eq!(
        with(Some(LyricsStatus::Instrumental)).await,
        Vec::<String>::new()
    );
    assert!(!ids(&c.top_songs(10).await.unwrap()).contains(&"s6"));
    assert!(
        c.search_songs("song 6", 10, 0)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let stats = c.stats().await.unwrap();
    assert_eq!((stats.songs, stats.lyrics_pending), (4, 1));
}

/// Writes a small ETL output (songs in two files, users in one) and its manifest.
async fn fixture_lake(dir: &std::path::Path, run_id: &str) -> (Store, EtlManifest) {
    let lake = Store::open(dir.to_str().unwrap(), &S3Options::default()).unwrap();
    let songs = |range: std::ops::Range<i64>| {
        let n = range.clone().count();
        let text = |f: &dyn Fn(i64) -> String| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(range.clone().map(f)))
        };
        let ts = |base: i64| -> ArrayRef {
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(range.clone().map(|i| base + i))
                    .with_timezone("UTC"),
            )
        };
        RecordBatch::try_new(
            song_schema(),
            vec![
                text(&|i| format!("track-{i:03}")),
                text(&|i| format!("Title {i}")),
                text(&|i| format!("Artist {}", i % 3)),
                text(&|i| format!("artist-{}", i % 3)),
                Arc::new(Int64Array::from_iter_values(range.clone().map(|i| 10 * i))),
                Arc::new(Int64Array::from_iter_values(range.clone().map(|i| i % 4))),
                Arc::new(Int64Array::from_iter_values(range.clone().map(|i| i + 1))),
                ts(1_000_000_000_000_000),
                ts(1_200_000_000_000_000),
                Arc::new(Float64Array::from(vec![None; n])),
            ],
        )
        .unwrap()
    };
    let users = RecordBatch::try_new(
        user_schema(),
        vec![
            Arc::new(StringArray::from(vec!["u1", "u2"])),
            Arc::new(Int64Array::from(vec![5, 9])),
            Arc::new(Int64Array::from(vec![4, 8])),
            Arc::new(Int64Array::from(vec![2, 3])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![1_000_000, 2_000_000]).with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(vec![3_000_000, 4_000_000]).with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from(vec![1, 2])),
        ],
    )
    .unwrap();
    let write = |path: &str, batch: RecordBatch| {
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, buf).unwrap();
    };
    write("catalog/songs/part-00000.parquet", songs(0..7));
    write("catalog/songs/part-00001.parquet", songs(7..12));
    write("catalog/users/part-00000.parquet", users);
    let manifest = EtlManifest {
        run_id: run_id.to_string(),
        source: "listens".into(),
        anchor_us: 0,
        plays: 14,
        songs: TableFiles {
            files: vec![
                "catalog/songs/part-00000.parquet".into(),
                "catalog/songs/part-00001.parquet".into(),
            ],
            rows: 12,
        },
        users: TableFiles {
            files: vec!["catalog/users/part-00000.parquet".into()],
            rows: 2,
        },
    };
    manifest.write(&lake).await.unwrap();
    (lake, manifest)
}

async fn resume_after_partial_load(c: &dyn Catalog) {
    let dir = tempfile::tempdir().unwrap();
    let (lake, manifest) = fixture_lake(dir.path(), "run-1").await;
    let vectors = UserVectors {
        model_version: "m1".into(),
        by_user: [("u2".to_string(), vec![0.5_f32, 0.25])]
            .into_iter()
            .collect(),
    };

    // Stop after the second batch of 3 songs: as if the process died there.
    let mut batches = 0;
    let stopped = load(c, &lake, &manifest, Some(&vectors), 3, &mut |_| {
        batches += 1;
        if batches == 2 {
            return Err(CatalogError::Stopped("test stop".into()));
        }
        Ok(())
    })
    .await;
    assert!(
        matches!(stopped, Err(CatalogError::Stopped(_))),
        "{stopped:?}"
    );
    assert_eq!(c.stats().await.unwrap().songs, 6);
    assert!(
        c.checkpoint(&checkpoint_key("songs"))
            .await
            .unwrap()
            .unwrap()
            .contains("\"rows\":6")
    );

    // Resume: only the rest is loaded (batches end at file boundaries).
    let mut seen = Vec::new();
    let report = load(c, &lake, &manifest, Some(&vectors), 3, &mut |p| {
        seen.push((p.table, p.rows));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!((report.songs.skipped, report.songs.loaded), (6, 6));
    assert_eq!((report.users.skipped, report.users.loaded), (0, 2));
    assert_eq!(
        seen,
        vec![("songs", 7), ("songs", 10), ("songs", 12), ("users", 2)]
    );
    let stats = c.stats().await.unwrap();
    assert_eq!(
        (stats.songs, stats.users, stats.users_with_vector),
        (12, 2, 1)
    );
    let s = c.song("track-008").await.unwrap().unwrap();
    assert_eq!(
        (s.stats.plays, s.stats.plays_7d, s.stats.listeners),
        (80, 0, 9)
    );
    assert_eq!(s.stats.first_played_ms, Some(1_000_000_000_000));
    assert_eq!(
        (s.stats.track_name.as_str(), s.stats.artist_name.as_str()),
        ("Title 8", "Artist 2")
    );
    let u2 = c.user("u2").await.unwrap().unwrap();
    assert_eq!(u2.latent.unwrap().vector, vec![0.5, 0.25]);
    assert_eq!(
        (u2.stats.first_seen_ms, u2.stats.last_seen_ms),
        (2_000, 4_000)
    );

    // The same run again: nothing to do.
    let report = load(c, &lake, &manifest, Some(&vectors), 3, &mut |_| Ok(()))
        .await
        .unwrap();
    assert_eq!((report.songs.loaded, report.users.loaded), (0, 0));

    // A new ETL run loads everything again, and the catalog ends the same (idempotent).
    let before = c.stats().await.unwrap();
    let (lake, manifest) = fixture_lake(dir.path(), "run-2").await;
    let report = load(c, &lake, &manifest, Some(&vectors), 5, &mut |_| Ok(()))
        .await
        .unwrap();
    assert_eq!((report.songs.loaded, report.users.loaded), (12, 2));
    assert_eq!(c.stats().await.unwrap(), before);
    assert_eq!(c.song("track-008").await.unwrap().unwrap(), s);
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod embedded_store {
            $(
                #[tokio::test]
                async fn $case() {
                    let s = super::embedded().await.unwrap();
                    super::$case(s.catalog.as_ref()).await;
                }
            )*
        }
        mod congodb_server {
            $(
                #[tokio::test]
                async fn $case() {
                    let s = super::congodb().await.unwrap();
                    super::$case(s.catalog.as_ref()).await;
                }
            )*
        }
        mod secantusdb_server {
            $(
                #[tokio::test]
                async fn $case() {
                    let s = super::secantusdb().await.unwrap();
                    super::$case(s.catalog.as_ref()).await;
                }
            )*
        }
        mod real_mongodb {
            $(
                #[tokio::test]
                async fn $case() {
                    if let Some(s) = super::mongodb(stringify!($case)).await {
                        super::$case(s.catalog.as_ref()).await;
                    }
                }
            )*
        }
    };
}

suite!(
    upsert_is_idempotent,
    batch_lookup_listing_and_names,
    search_ranks_and_pages,
    top_by_plays_7d,
    play_counts_are_set_not_added,
    lyrics_status_queries,
    resume_after_partial_load,
    sessions_expire_and_can_be_deleted,
    checkpoints_swap_atomically_and_leases_exclude,
);

#[tokio::test]
async fn an_embedded_catalog_another_process_holds_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.redb");
    let _held = EmbeddedCatalog::open(&path).await.unwrap();
    // redb's lock is a file lock: a second open in this process meets it as another would.
    let Err(e) = EmbeddedCatalog::open(&path).await else {
        panic!("opened twice");
    };
    assert!(matches!(e, CatalogError::InUse { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("--serve"),
        "{text}"
    );
}
