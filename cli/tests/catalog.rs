//! The master-data ETL: aggregates against hand-computed values (listens and events), the same
//! output on a re-run, and `recsys submit etl` / `recsys catalog …` end to end on generated data.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use common::*;
use recsys_core::Store;
use recsys_core::schema::{CATALOG_SONGS_DIR, CATALOG_USERS_DIR, SORTED_DIR, listen_schema};
use recsys_ingest::event::{Action, Event, EventBuilder};
use recsys_ingest::log::EventLog;
use recsys_ingest::{EmbeddedLog, FlushPolicy};
use recsys_jobs::Cluster;
use recsys_jobs::etl::run_etl;
use recsys_jobs::source::ListenSource;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
/// 2009-01-01T00:00:00Z.
const D0: i64 = 1_230_768_000_000_000;

/// (user, µs, artist id, artist, track id, title).
type Row = (
    &'static str,
    i64,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
);

/// Hand-made listens. The anchor (latest play) is day 10 12:00, so `plays_7d` counts plays of
/// the 7 UTC days 4 to 10.
fn fixture() -> Vec<Row> {
    vec![
        ("u1", D0 + 10 * HOUR, "a1", "Art X", "t1", "Song A"),
        ("u1", D0 + 11 * HOUR, "a1", "Art X", "t1", "Song A"),
        ("u2", D0 + 5 * DAY, "a1", "Art X", "t1", "Song A"),
        ("u1", D0 + 9 * DAY, "a1", "Art X", "t1", "Song A"),
        ("u2", D0 + DAY, "a2", "Art Y", "t2", "Song B"),
        (
            "u3",
            D0 + 10 * DAY + 12 * HOUR,
            "a2",
            "Art Y",
            "t2",
            "Song B",
        ),
        // t3: two spellings, the most frequent wins.
        ("u1", D0 + 2 * DAY, "a1", "Art X", "t3", "Song C"),
        ("u3", D0 + 8 * DAY, "a1", "Art X", "t3", "Song C"),
        ("u2", D0 + 4 * DAY, "a1", "Art X", "t3", "song c"),
        // t4: a tie between spellings goes to the smallest; plays on day 3, outside the window.
        ("u4", D0 + 3 * DAY + 12 * HOUR, "a4", "Art Z", "t4", "Zeta"),
        ("u4", D0 + 3 * DAY + 11 * HOUR, "a4", "Art Z", "t4", "Alpha"),
    ]
}

/// Writes `rows` as the sorted listens; with `statistics` (the writer's default) the footer
/// holds each column's minimum and maximum.
fn write_sorted(dir: &std::path::Path, rows: &[Row], statistics: bool) {
    let mut rows = rows.to_vec();
    rows.sort_by_key(|r| (r.1, r.0, r.4));
    let text = |f: fn(&Row) -> &str| -> Arc<dyn Array> {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let batch = RecordBatch::try_new(
        listen_schema(),
        vec![
            text(|r| r.0),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                    .with_timezone("UTC"),
            ),
            text(|r| r.2),
            text(|r| r.3),
            text(|r| r.4),
            text(|r| r.5),
        ],
    )
    .unwrap();
    let path = dir.join(SORTED_DIR).join("part-00000.parquet");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_statistics_enabled(if statistics {
            parquet::file::properties::EnabledStatistics::Page
        } else {
            parquet::file::properties::EnabledStatistics::None
        })
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[derive(Debug, Clone, PartialEq)]
struct SongRow {
    title: String,
    artist: String,
    artist_id: String,
    plays: i64,
    plays_7d: i64,
    listeners: i64,
    first: Option<i64>,
    last: Option<i64>,
    duration: Option<f64>,
}

fn read_songs(dir: &std::path::Path) -> BTreeMap<String, SongRow> {
    let mut out = BTreeMap::new();
    for b in read_parquet_dir(&dir.join(CATALOG_SONGS_DIR))
        .iter()
        .flat_map(|(_, b)| b)
    {
        let s = |n: &str| {
            arrow::compute::cast(
                b.column_by_name(n).unwrap(),
                &arrow::datatypes::DataType::Utf8,
            )
            .unwrap()
        };
        let (id, title, artist, artist_id) = (
            s("track_id"),
            s("track_name"),
            s("artist_name"),
            s("artist_id"),
        );
        let i = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        };
        let (plays, p7, listeners) = (i("plays"), i("plays_7d"), i("listeners"));
        let t = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
        };
        let (first, last) = (t("first_played"), t("last_played"));
        let duration = b
            .column_by_name("duration_s")
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone();
        for r in 0..b.num_rows() {
            let opt =
                |a: &arrow::array::TimestampMicrosecondArray| (!a.is_null(r)).then(|| a.value(r));
            out.insert(
                id.as_string::<i32>().value(r).to_string(),
                SongRow {
                    title: title.as_string::<i32>().value(r).to_string(),
                    artist: artist.as_string::<i32>().value(r).to_string(),
                    artist_id: artist_id.as_string::<i32>().value(r).to_string(),
                    plays: plays.value(r),
                    plays_7d: p7.value(r),
                    listeners: listeners.value(r),
                    first: opt(&first),
                    last: opt(&last),
                    duration: (!duration.is_null(r)).then(|| duration.value(r)),
                },
            );
        }
    }
    out
}

/// user → (plays, distinct tracks, distinct artists, first, last, active days).
fn read_users(dir: &std::path::Path) -> BTreeMap<String, (i64, i64, i64, i64, i64, i64)> {
    let mut out = BTreeMap::new();
    for b in read_parquet_dir(&dir.join(CATALOG_USERS_DIR))
        .iter()
        .flat_map(|(_, b)| b)
    {
        let id = arrow::compute::cast(
            b.column_by_name("user_id").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let i = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        };
        let t = |n: &str| {
            b.column_by_name(n)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
        };
        let (plays, tracks, artists, days) = (
            i("plays"),
            i("distinct_tracks"),
            i("distinct_artists"),
            i("active_days"),
        );
        let (first, last) = (t("first_seen"), t("last_seen"));
        for r in 0..b.num_rows() {
            out.insert(
                id.as_string::<i32>().value(r).to_string(),
                (
                    plays.value(r),
                    tracks.value(r),
                    artists.value(r),
                    first.value(r),
                    last.value(r),
                    days.value(r),
                ),
            );
        }
    }
    out
}

/// A song row from (title, artist, artist id), [plays, plays_7d, listeners], (first, last).
fn song(names: (&str, &str, &str), counts: [i64; 3], span: (i64, i64)) -> SongRow {
    SongRow {
        title: names.0.into(),
        artist: names.1.into(),
        artist_id: names.2.into(),
        plays: counts[0],
        plays_7d: counts[1],
        listeners: counts[2],
        first: Some(span.0),
        last: Some(span.1),
        duration: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etl_aggregates_listens_as_computed_by_hand() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        write_sorted(dir.path(), &fixture(), true);
        let lake = local_store(dir.path());
        let cluster = Cluster::embedded(&Default::default(), 2).await.unwrap();
        let summary = run_etl(&cluster, &lake, ListenSource::Auto, 3)
            .await
            .unwrap();
        let m = &summary.manifest;
        assert_eq!(
            (m.source.as_str(), m.plays, m.songs.rows, m.users.rows),
            ("listens", 11, 4, 4)
        );
        assert_eq!(m.anchor_us, D0 + 10 * DAY + 12 * HOUR);

        let songs = read_songs(dir.path());
        let expected: BTreeMap<String, SongRow> = [
            (
                "t1",
                song(
                    ("Song A", "Art X", "a1"),
                    [4, 2, 2],
                    (D0 + 10 * HOUR, D0 + 9 * DAY),
                ),
            ),
            (
                "t2",
                song(
                    ("Song B", "Art Y", "a2"),
                    [2, 1, 2],
                    (D0 + DAY, D0 + 10 * DAY + 12 * HOUR),
                ),
            ),
            (
                "t3",
                song(
                    ("Song C", "Art X", "a1"),
                    [3, 2, 3],
                    (D0 + 2 * DAY, D0 + 8 * DAY),
                ),
            ),
            (
                "t4",
                song(
                    ("Alpha", "Art Z", "a4"),
                    [2, 0, 1],
                    (D0 + 3 * DAY + 11 * HOUR, D0 + 3 * DAY + 12 * HOUR),
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(songs, expected);

        let users = read_users(dir.path());
        let expected: BTreeMap<String, _> = [
            ("u1", (4, 2, 1, D0 + 10 * HOUR, D0 + 9 * DAY, 3)),
            ("u2", (3, 3, 2, D0 + DAY, D0 + 5 * DAY, 3)),
            ("u3", (2, 2, 2, D0 + 8 * DAY, D0 + 10 * DAY + 12 * HOUR, 2)),
            (
                "u4",
                (
                    2,
                    1,
                    1,
                    D0 + 3 * DAY + 11 * HOUR,
                    D0 + 3 * DAY + 12 * HOUR,
                    1,
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(users, expected);

        // Same data in, same tables out: a re-run writes the same files with the same rows.
        let files = |d: &std::path::Path| {
            read_parquet_dir(d)
                .into_iter()
                .map(|(p, b)| (p, b.iter().map(|b| b.num_rows()).sum::<usize>()))
                .collect::<Vec<_>>()
        };
        let before = (
            files(&dir.path().join(CATALOG_SONGS_DIR)),
            files(&dir.path().join(CATALOG_USERS_DIR)),
        );
        // The play count and the anchor came from the footers; without statistics there, a
        // query counts them, to the same figures.
        write_sorted(dir.path(), &fixture(), false);
        let again = run_etl(&cluster, &lake, ListenSource::Auto, 3)
            .await
            .unwrap();
        assert_ne!(again.manifest.run_id, summary.manifest.run_id);
        assert_eq!(
            (again.manifest.plays, again.manifest.anchor_us),
            (11, D0 + 10 * DAY + 12 * HOUR)
        );
        assert_eq!(read_songs(dir.path()), songs);
        assert_eq!(read_users(dir.path()), users);
        assert_eq!(
            (
                files(&dir.path().join(CATALOG_SONGS_DIR)),
                files(&dir.path().join(CATALOG_USERS_DIR))
            ),
            before
        );
    })
    .await
    .expect("the ETL test finished within 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etl_counts_streamed_plays_not_skips() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        write_sorted(dir.path(), &fixture(), true);
        let lake: Store = local_store(dir.path());
        let policy = FlushPolicy {
            rows: 1000,
            interval: Duration::from_millis(20),
            in_flight: 1,
        };
        let log = EmbeddedLog::open(lake.clone(), policy).await.unwrap();
        let mut builder = EventBuilder::default();
        let events = [
            ("u1", "t1", Action::Complete, 200.0, 0),
            ("u1", "t1", Action::Listen, 210.0, 1),
            ("u2", "t1", Action::Skip, 999.0, 2),
            ("u2", "t2", Action::Listen, 0.0, 3),
            ("u9", "t9", Action::Complete, 180.0, 4),
        ];
        for (user, track, action, total, day) in events {
            let event = Event {
                user_id: user.into(),
                track_id: track.into(),
                artist_id: "a1".into(),
                timestamp: D0 + day * DAY,
                action,
                source: "app".into(),
                duration_s: total / 2.0,
                total_duration_s: total,
            };
            builder.push(&event, 0, 0);
        }
        log.append(builder.finish()).await.unwrap().await.unwrap();
        log.shutdown().await.unwrap();

        let cluster = Cluster::embedded(&Default::default(), 2).await.unwrap();
        let m = run_etl(&cluster, &lake, ListenSource::Auto, 2)
            .await
            .unwrap()
            .manifest;
        assert_eq!(
            (m.source.as_str(), m.plays, m.anchor_us),
            ("events", 4, D0 + 4 * DAY)
        );
        let songs = read_songs(dir.path());
        // Titles still come from the listens; skips are not plays; duration from the events.
        let t1 = &songs["t1"];
        assert_eq!(
            (t1.title.as_str(), t1.plays, t1.listeners, t1.duration),
            ("Song A", 2, 1, Some(210.0))
        );
        assert_eq!((songs["t2"].plays, songs["t2"].duration), (1, None));
        // Catalogued tracks nobody played in the events stay, with no plays.
        assert_eq!(
            (
                songs["t3"].title.as_str(),
                songs["t3"].plays,
                songs["t3"].first
            ),
            ("Song C", 0, None)
        );
        // A track only the events know gets a document without names.
        assert_eq!((songs["t9"].title.as_str(), songs["t9"].plays), ("", 1));
        let users = read_users(dir.path());
        assert_eq!(users["u2"].0, 1);
        assert_eq!(users.len(), 3);
    })
    .await
    .expect("the ETL test finished within 120 s");
}

/// The fixture's listens as events of partition 0 (every third a skip), a file each: the small
/// files compaction merges.
async fn stream_fixture_in_small_files(lake: &Store) {
    let policy = FlushPolicy {
        rows: 1,
        interval: Duration::from_secs(60),
        in_flight: 1,
    };
    let mut sink = recsys_ingest::Sink::open(lake.clone(), "music_log", policy)
        .await
        .unwrap();
    sink.reload(&[0]).await.unwrap();
    let mut rows = fixture();
    rows.sort_by_key(|r| r.1);
    for (offset, (user, ts, artist, _, track, _)) in rows.into_iter().enumerate() {
        let mut builder = EventBuilder::default();
        let event = Event {
            user_id: user.into(),
            track_id: track.into(),
            artist_id: artist.into(),
            timestamp: ts,
            action: if offset % 3 == 2 {
                Action::Skip
            } else {
                Action::Complete
            },
            source: "app".into(),
            duration_s: 100.0,
            total_duration_s: 200.0,
        };
        builder.push(&event, 0, offset as i64);
        sink.push(0, builder.finish()).await.unwrap();
    }
    sink.flush_all().await.unwrap();
}

/// Compaction changes no job's result: the ETL and the ALS preparation read the same events
/// from the compacted layout, also when a crash left a compacted file's inputs beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etl_and_als_preparation_read_a_compacted_lake_as_before() {
    use recsys_ingest::compact::{CompactOptions, compact};
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        write_sorted(dir.path(), &fixture(), true);
        let lake: Store = local_store(dir.path());
        stream_fixture_in_small_files(&lake).await;
        let cluster = Cluster::embedded(&Default::default(), 2).await.unwrap();
        let results = || async {
            let etl = run_etl(&cluster, &lake, ListenSource::Events, 2)
                .await
                .unwrap()
                .manifest;
            let prep = recsys_jobs::als::prep::prepare(
                &cluster,
                &lake,
                "tmp/prep",
                1.0,
                2,
                ListenSource::Events,
                None,
            )
            .await
            .unwrap();
            (
                (etl.plays, etl.anchor_us),
                read_songs(dir.path()),
                read_users(dir.path()),
                (
                    prep.users,
                    prep.items,
                    prep.popularity,
                    prep.nnz,
                    prep.listens,
                ),
            )
        };
        let before = results().await;
        assert_eq!(before.0.0, 8, "11 events, 3 of them skips");

        let files = recsys_ingest::sink::written_files(&lake, "music_log")
            .await
            .unwrap();
        assert_eq!(files.len(), 11, "a file per event");
        let events_dir = dir.path().join("events");
        let inputs: Vec<_> = walk(&events_dir);
        let options = CompactOptions {
            closed_before: Some(i64::MAX / DAY),
            min_files: 2,
            max_offsets: 1_000,
            period: recsys_ingest::compact::Period::Day,
        };
        let done = compact(&lake, "music_log", options).await.unwrap();
        // Days 0 and 3 have two plays each: two runs of two files.
        assert_eq!((done.written, done.replaced, done.events), (2, 4, 4));
        assert_eq!(walk(&events_dir).len(), 9);
        // A crash between the write and the deletes: an input is back beside its replacement.
        let (input, bytes) = &inputs[0];
        assert!(!input.exists());
        std::fs::write(input, bytes).unwrap();
        assert_eq!(results().await, before);
    })
    .await
    .expect("the compaction test finished within 120 s");
}

/// Every file below `dir` with its bytes.
fn walk(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
    out.sort();
    out
}

/// Runs `recsys --object-store DIR ARGS…`, which must succeed; its standard output.
fn recsys_ok(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(RECSYS)
        .args(["--object-store", dir.to_str().unwrap()])
        .args(args)
        .env("RECSYS_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `recsys data generate`, `submit clean`, `submit sort` into `dir`.
fn sorted_from_the_command_line(dir: &std::path::Path, users: &str, tracks: &str, events: &str) {
    let args = [
        "--users", users, "--tracks", tracks, "--events", events, "--seed", "3",
    ];
    recsys_ok(dir, &[&["data", "generate"][..], &args].concat());
    recsys_ok(dir, &["submit", "clean", "--vcores", "2"]);
    recsys_ok(dir, &["submit", "sort", "--vcores", "2"]);
}

/// `recsys submit etl` on generated data into the embedded catalog, then `catalog stats` and
/// `catalog search` find what the ETL computed.
#[test]
fn submit_etl_then_search_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| recsys_ok(dir.path(), args);
    sorted_from_the_command_line(dir.path(), "30", "400", "8000");
    let out = run(&["submit", "etl", "--vcores", "2"]);
    assert!(out.contains("catalog:"), "{out}");
    let stats = run(&["catalog", "stats"]);
    let songs = read_songs(dir.path());
    assert!(
        stats.contains(&format!("songs              {:>10}", songs.len())),
        "{stats}"
    );
    assert!(
        stats.contains(&format!("users              {:>10}", 30)),
        "{stats}"
    );
    // The most played song, searched by its exact title, comes first.
    let (id, top) = songs
        .iter()
        .max_by_key(|(id, s)| (s.plays, std::cmp::Reverse(id.to_string())))
        .unwrap();
    let found = run(&["catalog", "search", &top.title, "--limit", "3"]);
    let first = found.lines().next().unwrap_or_default();
    assert!(first.contains(id.as_str()), "{found}");
    // A second load of the same ETL run has nothing left to do.
    let again = run(&["catalog", "load"]);
    assert!(again.contains("0 songs + 0 users loaded"), "{again}");
}

/// The production path from the command line: `recsys submit etl --mongo …` into a MongoDB
/// wire-protocol server, then `recsys catalog stats|search --mongo …` read it back; the same
/// numbers as the embedded catalog gives for the same lake. Against both stand-ins.
#[test]
fn submit_etl_into_congodb_from_the_command_line() {
    submit_etl_into_mongodb_from_the_command_line(MongoServer::congodb());
}

#[test]
fn submit_etl_into_secantusdb_from_the_command_line() {
    submit_etl_into_mongodb_from_the_command_line(MongoServer::secantusdb());
}

fn submit_etl_into_mongodb_from_the_command_line(mongo: MongoServer) {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| recsys_ok(dir.path(), args);
    sorted_from_the_command_line(dir.path(), "20", "150", "3000");
    let out = run(&["submit", "etl", "--vcores", "2", "--mongo", &mongo.uri]);
    assert!(
        out.contains(&format!("MongoDB {} (database music_recsys)", mongo.uri)),
        "{out}"
    );
    let in_mongo = run(&["catalog", "stats", "--mongo", &mongo.uri]);
    run(&["catalog", "load"]);
    let embedded = run(&["catalog", "stats"]);
    let counts = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(counts(&in_mongo), counts(&embedded));
    let songs = read_songs(dir.path());
    let (_, top) = songs
        .iter()
        .max_by_key(|(id, s)| (s.plays, std::cmp::Reverse(id.to_string())))
        .unwrap();
    let query = &top.title;
    assert_eq!(
        run(&["catalog", "search", query, "--mongo", &mongo.uri]),
        run(&["catalog", "search", query])
    );
}

/// Two processes sharing a catalog never run the same job at once: `orchestrate --once` finds
/// the job's lease held (here by a process elsewhere) and says so without running it, then runs
/// it once the lease is given up. On the embedded stores a second process cannot open the
/// catalog at all, and is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_another_process_runs_is_left_alone() {
    use recsys_catalog::jobs::{Leased, acquire_lease, record, release_lease};
    use recsys_catalog::{Catalog, EmbeddedCatalog, MongoCatalog, MongoOptions};
    let dir = tempfile::tempdir().unwrap();
    let mongo = MongoServer::congodb();
    let catalog = MongoCatalog::connect(&MongoOptions::new(&mongo.uri))
        .await
        .unwrap();
    let now = recsys_catalog::now_ms();
    let elsewhere = "elsewhere:1:1";
    let span = (now, now + 600_000);
    let taken = acquire_lease(&catalog, "compact", elsewhere, span, &|_| false);
    assert_eq!(taken.await.unwrap(), Leased::Acquired);
    let once = || {
        std::process::Command::new(RECSYS)
            .args(["--object-store", dir.path().to_str().unwrap()])
            .args(["orchestrate", "--once", "compact", "--mongo", &mongo.uri])
            .output()
            .unwrap()
    };
    let out = once();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "job compact is running in another process, {elsewhere}"
        )),
        "{err}"
    );
    assert_eq!(record(&catalog, "compact").await.unwrap(), None, "not run");
    assert!(release_lease(&catalog, "compact", elsewhere).await.unwrap());
    let out = once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        record(&catalog, "compact").await.unwrap().unwrap().outcome,
        "ok"
    );
    assert_eq!(
        catalog.checkpoint("lease:compact").await.unwrap(),
        None,
        "given up"
    );

    let path = dir.path().join("catalog.redb");
    let _held = EmbeddedCatalog::open(&path).await.unwrap();
    let out = std::process::Command::new(RECSYS)
        .args(["--object-store", dir.path().to_str().unwrap()])
        .args(["orchestrate", "--once", "compact"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "embedded catalog {} is open in another process",
            path.display()
        )),
        "{err}"
    );
}

/// An unreachable MongoDB fails the ETL before it runs, naming the URI without the password.
#[test]
fn unreachable_mongodb_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let uri = format!("mongodb://etl:hunter2@127.0.0.1:{port}/");
    let out = std::process::Command::new(RECSYS)
        .args(["--object-store", dir.path().to_str().unwrap()])
        .args(["submit", "etl", "--mongo", &uri, "--mongo-timeout-s", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("MongoDB mongodb://***@127.0.0.1:{port}/")),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

/// ALS on a trailing window (the orchestrator's retrain) reads only the plays of its last days,
/// ending at the newest play (from the footers, or by a query where the files have no
/// statistics); a window without plays is refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn als_preparation_reads_only_its_trailing_window() {
    use recsys_jobs::als::{TrainWindow, WindowEnd};
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Cluster::embedded(&Default::default(), 2).await.unwrap();
        for statistics in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            write_sorted(dir.path(), &fixture(), statistics);
            let lake: Store = local_store(dir.path());
            let window = |days, end| {
                recsys_jobs::als::prep::prepare(
                    &cluster,
                    &lake,
                    "tmp/prep",
                    1.0,
                    2,
                    ListenSource::Listens,
                    Some(TrainWindow { days, end }),
                )
            };
            // Three days up to the newest play (day 10, 12:00): days 8 and 9 and that play.
            let prep = window(3, WindowEnd::NewestPlay).await.unwrap();
            let newest = D0 + 10 * DAY + 12 * HOUR;
            assert_eq!(prep.window, Some((newest + 1 - 3 * DAY, newest + 1)));
            assert_eq!(prep.listens, 3);
            assert_eq!(prep.users, ["u1", "u3"]);
            assert_eq!(prep.items, ["t1", "t2", "t3"]);
            // Ninety days up to now: the fixture's plays are older.
            let err = window(90, WindowEnd::Now).await.unwrap_err().to_string();
            assert!(err.contains("nothing to train on"), "{err}");
        }
    })
    .await
    .expect("the window test finished within 120 s");
}
