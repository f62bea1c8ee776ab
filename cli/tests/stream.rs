//! Streaming ingestion end to end: the embedded log, the gRPC ingest service (validation over
//! real gRPC), and replay → Kafka (the tansu broker) → sink with the sink killed at random.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type, TimestampMicrosecondType};
use common::*;
use recsys_core::Store;
use recsys_core::schema::{EVENTS_DIR, SORTED_DIR, col};
use recsys_datasets::GenerateConfig;
use recsys_ingest::log::EMBEDDED_TOPIC;
use recsys_ingest::replay::{ReplayOptions, replay};
use recsys_ingest::sink::check_coverage;
use recsys_ingest::{EmbeddedLog, FlushPolicy};
use recsys_jobs::Cluster;
use recsys_proto::v1::ingest_service_client::IngestServiceClient;
use recsys_proto::v1::{Action, ListenEvent};

fn stream_config() -> GenerateConfig {
    GenerateConfig {
        users: 50,
        tracks: 2000,
        events: 40_000,
        seed: 5,
        groups: 5,
    }
}

/// (ts, user, track, artist) of every row, sorted: the content the stream must preserve.
type Listen = (i64, String, String, String);

fn listens(files: &[(std::path::PathBuf, Vec<RecordBatch>)]) -> Vec<Listen> {
    let mut out = Vec::new();
    for batch in files.iter().flat_map(|(_, b)| b) {
        let s = |name: &str| batch.column_by_name(name).unwrap().as_string::<i32>();
        let ts = batch
            .column_by_name(col::TS)
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        for r in 0..batch.num_rows() {
            out.push((
                ts.value(r),
                s(col::USER_ID).value(r).to_string(),
                s(col::TRACK_ID).value(r).to_string(),
                s(col::ARTIST_ID).value(r).to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// Every Parquet file under `events/` (all date folders).
fn event_files(lake: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<RecordBatch>)> {
    let root = lake.join(EVENTS_DIR);
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.iter()
        .inspect(|d| {
            let name = d.file_name().unwrap().to_string_lossy().to_string();
            assert!(name.starts_with("date="), "{name}");
        })
        .flat_map(|d| read_parquet_dir(d))
        .collect()
}

/// No (partition, offset) twice, and every file's rows share its folder's date.
fn check_events(files: &[(std::path::PathBuf, Vec<RecordBatch>)]) -> BTreeMap<i32, u64> {
    let mut seen = std::collections::HashSet::new();
    let mut per_partition = BTreeMap::new();
    for (path, batches) in files {
        let folder = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy();
        for b in batches {
            let p = b
                .column_by_name(col::LOG_PARTITION)
                .unwrap()
                .as_primitive::<Int32Type>();
            let o = b
                .column_by_name(col::LOG_OFFSET)
                .unwrap()
                .as_primitive::<Int64Type>();
            let ts = b
                .column_by_name(col::TS)
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            for r in 0..b.num_rows() {
                assert!(
                    seen.insert((p.value(r), o.value(r))),
                    "duplicate {:?}",
                    (p.value(r), o.value(r))
                );
                *per_partition.entry(p.value(r)).or_default() += 1;
                let date = recsys_core::time::date_string(ts.value(r));
                assert_eq!(folder, format!("date={date}"), "{}", path.display());
            }
        }
    }
    per_partition
}

async fn lake_with_sorted_listens(dir: &std::path::Path) -> (Store, Vec<Listen>) {
    let cluster = Cluster::embedded(&Default::default(), 2).await.unwrap();
    let lake = sorted_lake(&cluster, dir, &stream_config()).await;
    let sorted = listens(&read_parquet_dir(&dir.join(SORTED_DIR)));
    (lake, sorted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_replay_writes_every_event_once_into_date_partitions() {
    tokio::time::timeout(Duration::from_secs(180), async {
        let dir = tempfile::tempdir().unwrap();
        let (lake, sorted) = lake_with_sorted_listens(dir.path()).await;
        let policy = FlushPolicy {
            rows: 3000,
            interval: Duration::from_millis(200),
            in_flight: 4,
        };
        let log = EmbeddedLog::open(lake.clone(), policy.clone())
            .await
            .unwrap();
        let options = ReplayOptions {
            speed: 0.0,
            max_sleep: Duration::from_secs(2),
            limit: Some(25_000),
            batch_rows: 4096,
        };
        let stats = replay(&lake, &log, &options, |_, _| {}).await.unwrap();
        assert_eq!(stats.events, 25_000);
        // A second log on the same lake resumes after the first one's offsets.
        let log = EmbeddedLog::open(lake.clone(), policy).await.unwrap();
        let rest = ReplayOptions {
            limit: None,
            ..options
        };
        let again = replay(&lake, &log, &rest, |_, _| {}).await.unwrap();
        assert_eq!(again.events, sorted.len() as u64);

        let files = event_files(dir.path());
        let per_partition = check_events(&files);
        let total = 25_000 + sorted.len() as u64;
        assert_eq!(per_partition, BTreeMap::from([(0, total)]));
        let coverage = check_coverage(&lake, EMBEDDED_TOPIC).await.unwrap();
        assert_eq!(coverage, BTreeMap::from([(0, total)]));
        // The first 25 000 listens in time order, then all of them: nothing lost or doubled.
        let mut expected = sorted[..25_000].to_vec();
        expected.extend(sorted.iter().cloned());
        expected.sort();
        assert_eq!(listens(&files), expected);
    })
    .await
    .expect("embedded replay within 180 s");
}

fn event(user: &str) -> ListenEvent {
    ListenEvent {
        user_id: user.into(),
        track_id: "track-1".into(),
        artist_id: "artist-1".into(),
        timestamp_us: 1_250_000_000_000_000,
        action: Action::Complete as i32,
        source: "app".into(),
        duration_s: 120.0,
        total_duration_s: 240.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ingest_validates_every_field_and_acks_durable_events() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let dir = tempfile::tempdir().unwrap();
        let lake = local_store(dir.path());
        let policy = FlushPolicy {
            rows: 1000,
            interval: Duration::from_millis(50),
            in_flight: 2,
        };
        let log = Arc::new(EmbeddedLog::open(lake.clone(), policy).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(recsys_ingest::server::serve(listener, log.clone(), async {
            let _ = stopped.await;
        }));
        let endpoint = format!("http://{addr}");
        let mut client = loop {
            if let Ok(c) = IngestServiceClient::connect(endpoint.clone()).await {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };

        type Breaker = fn(&mut ListenEvent);
        let invalid: Vec<(&str, Breaker)> = vec![
            ("user_id", |e| e.user_id.clear()),
            ("track_id", |e| e.track_id.clear()),
            ("artist_id", |e| e.artist_id.clear()),
            ("source", |e| e.source.clear()),
            ("action", |e| e.action = 0),
            ("action", |e| e.action = 9),
            ("timestamp", |e| e.timestamp_us = -5),
            ("timestamp", |e| e.timestamp_us = 4_102_444_800_000_000),
            ("duration_s", |e| e.duration_s = -1.0),
            ("total_duration_s", |e| e.total_duration_s = -1.0),
            ("duration_s", |e| e.duration_s = 500.0),
        ];
        for (field, break_it) in &invalid {
            let mut e = event("u1");
            break_it(&mut e);
            let status = client.log_event(e).await.unwrap_err();
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{field}: {status:?}"
            );
            assert!(
                status.message().starts_with(field),
                "{field}: {}",
                status.message()
            );
        }

        // A valid event is durable when acknowledged.
        client.log_event(event("u1")).await.unwrap();
        let files = event_files(dir.path());
        assert_eq!(check_events(&files), BTreeMap::from([(0, 1)]));

        // A stream with a bad event in the middle: the events before it are kept, and said so.
        let mut bad = event("u3");
        bad.user_id.clear();
        let stream = vec![event("u2"), event("u2"), bad, event("u4")];
        let status = client
            .publish(tokio_stream::iter(stream))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("event #2: user_id"),
            "{}",
            status.message()
        );
        let ok = client
            .publish(tokio_stream::iter(vec![event("u5"); 2500]))
            .await
            .unwrap();
        assert_eq!(ok.into_inner().accepted, 2500);
        let files = event_files(dir.path());
        assert_eq!(check_events(&files), BTreeMap::from([(0, 2503)]));

        // Health and reflection answer.
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let serving = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "recsys.v1.IngestService".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            serving.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        log.shutdown().await.unwrap();
    })
    .await
    .expect("gRPC ingest within 60 s");
}

fn recsys(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(RECSYS);
    cmd.arg("--data-dir").arg(dir).env("RECSYS_LOG", "warn");
    cmd
}

fn spawn_sink(dir: &std::path::Path, brokers: &str) -> Child {
    recsys(dir)
        .args([
            "sink",
            "--kafka",
            brokers,
            "--flush-rows",
            "2000",
            "--flush-interval-ms",
            "100",
            // Static membership: tansu 0.6 does not hand a killed member's partitions to a new
            // member (see the README), but gives a restarted static member its own back.
            "--instance-id",
            "sink-1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Offsets the sink has covered so far. A local folder listed while the sink writes may miss a
/// file created during the walk (directory reads are not atomic): such a listing counts as no
/// progress here; the final check, after the sink stopped, is strict.
async fn progress(lake: &Store) -> u64 {
    check_coverage(lake, "music_log")
        .await
        .map(|c| c.values().sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_sink_survives_kill_9_with_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (lake, sorted) = lake_with_sorted_listens(dir.path()).await;
    let broker = Broker::start("music_log", 3);
    let mut sink = spawn_sink(dir.path(), &broker.brokers);
    let mut replayer = recsys(dir.path())
        .args(["replay", "--kafka", &broker.brokers, "--speed", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let status = wait_for(&mut replayer, 120);
    assert!(status.success(), "replay failed");

    // Kill the sink at pseudo-random moments while it is writing, and restart it.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    let mut before = 0;
    let total = sorted.len() as u64;
    let mut stalls = 0;
    while kills < 2 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let covered = loop {
            let covered = progress(&lake).await;
            if covered > before || covered == total || Instant::now() > deadline {
                break covered;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        // A listing can count less than `before`: a file the killed sink left beyond a gap
        // breaks the coverage check until the restarted sink, given its partitions, deletes it.
        if covered <= before && covered < total && stalls < 2 {
            // Seen in a few of many runs: a restarted static member got no partitions back
            // from tansu for over a minute (not diagnosed; see the README on tansu's
            // rebalances). One more restart is one more crash for the sink to survive.
            stalls += 1;
            sink.kill().unwrap();
            sink.wait().unwrap();
            sink = spawn_sink(dir.path(), &broker.brokers);
            continue;
        }
        assert!(
            covered > before || covered == total,
            "the sink made no progress after restart {kills} ({stalls} restarts after a stall)"
        );
        if covered == total {
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(seed % 40)).await;
        sink.kill().unwrap();
        sink.wait().unwrap();
        kills += 1;
        before = progress(&lake).await;
        sink = spawn_sink(dir.path(), &broker.brokers);
    }
    assert!(
        kills >= 2,
        "the sink was killed while writing ({kills} times)"
    );

    // The sink catches up: every offset of every partition written once.
    let expected = sorted.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut stalled_since = Instant::now();
    let mut last = progress(&lake).await;
    loop {
        let covered = progress(&lake).await;
        if covered >= expected {
            assert_eq!(covered, expected);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sink wrote {covered} of {expected} events ({stalls} restarts after a stall)"
        );
        if covered > last {
            (last, stalled_since) = (covered, Instant::now());
        } else if stalled_since.elapsed() > Duration::from_secs(40) && stalls < 3 {
            // The same tansu stall as above, after the last restart.
            stalls += 1;
            sink.kill().unwrap();
            sink.wait().unwrap();
            sink = spawn_sink(dir.path(), &broker.brokers);
            stalled_since = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // What `recsys pipeline` waits for with Kafka: the topic's end offsets, all in events/.
    let ends =
        recsys_ingest::consume::end_offsets(&broker.brokers, "music_log", Duration::from_secs(30))
            .await
            .unwrap();
    // tansu 0.6 reports a partition's end as the start of its last record batch (35,949 of
    // 40,000 here), where Kafka reports the next offset: a bound below the truth, never above.
    let reported = ends.values().sum::<i64>() as u64;
    assert!(
        reported > 0 && reported <= expected,
        "{reported} of {expected}"
    );
    let wait = |ends| {
        let lake = lake.clone();
        async move {
            recsys_ingest::consume::wait_for_sink(
                &lake,
                "music_log",
                &ends,
                Duration::from_secs(1),
                |_, _| {},
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(wait(ends).await, 0);
    let written: BTreeMap<i32, i64> = check_coverage(&lake, "music_log")
        .await
        .unwrap()
        .into_iter()
        .map(|(p, n)| (p, n as i64))
        .collect();
    assert_eq!(wait(written.clone()).await, 0);
    let mut ahead = written;
    *ahead.get_mut(&0).unwrap() += 2;
    assert_eq!(wait(ahead).await, 2, "two events not written yet");

    // One more crash after everything is written: a restart must not write anything again.
    sink.kill().unwrap();
    sink.wait().unwrap();
    let mut sink = spawn_sink(dir.path(), &broker.brokers);
    std::thread::sleep(Duration::from_secs(3));
    terminate(&sink);
    assert!(
        wait_for(&mut sink, 30).success(),
        "sink stops cleanly on SIGTERM"
    );

    let files = event_files(dir.path());
    let per_partition = check_events(&files);
    assert_eq!(per_partition.values().sum::<u64>(), expected);
    assert_eq!(
        per_partition.len(),
        3,
        "all three partitions used: {per_partition:?}"
    );
    let coverage = check_coverage(&lake, "music_log").await.unwrap();
    assert_eq!(
        coverage, per_partition,
        "offsets contiguous from 0 in every partition"
    );
    assert_eq!(
        listens(&files),
        sorted,
        "same content as the sorted listens"
    );
}

/// SIGTERM, through the `kill` command (no libc binding in the tests).
fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn unreachable_kafka_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let brokers = format!("127.0.0.1:{}", free_port());
    let mut child = recsys(dir.path())
        .args(["replay", "--kafka", &brokers])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(&mut child, 60);
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains(&brokers), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn als_ratings_from_streamed_events_are_weighted_by_action() {
    use recsys_ingest::{Action, Event, EventBuilder, EventLog};
    use recsys_jobs::als::RatingsSource;
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let lake = local_store(dir.path());
        let policy = FlushPolicy {
            rows: 1000,
            interval: Duration::from_millis(20),
            in_flight: 1,
        };
        let log = EmbeddedLog::open(lake.clone(), policy).await.unwrap();
        let plays = [
            ("u1", "t1", Action::Complete),
            ("u1", "t1", Action::Listen),
            ("u1", "t2", Action::Skip),
            ("u1", "t3", Action::Listen),
            ("u2", "t1", Action::Complete),
            ("u2", "t2", Action::Complete),
        ];
        let mut builder = EventBuilder::default();
        for (i, (user, track, action)) in plays.iter().enumerate() {
            let event = Event {
                user_id: user.to_string(),
                track_id: track.to_string(),
                artist_id: "a".into(),
                timestamp: 1_200_000_000_000_000 + i as i64 * 86_400_000_000,
                action: *action,
                source: "app".into(),
                duration_s: 0.0,
                total_duration_s: 0.0,
            };
            builder.push(&event, 0, 0);
        }
        log.append(builder.finish()).await.unwrap().await.unwrap();
        log.shutdown().await.unwrap();

        let cluster = Cluster::embedded(&Default::default(), 2).await.unwrap();
        let prepared = recsys_jobs::als::prep::prepare(
            &cluster,
            &lake,
            "work",
            1.0,
            1,
            RatingsSource::Auto,
            None,
        )
        .await
        .unwrap();
        assert_eq!(prepared.source, RatingsSource::Events);
        assert_eq!(prepared.listens, 6);
        let mut ratings = BTreeMap::new();
        for b in read_parquet_dir(&dir.path().join("work/by_user"))
            .iter()
            .flat_map(|(_, b)| b)
        {
            let row = b.column_by_name("row").unwrap().as_primitive::<Int32Type>();
            let col = b.column_by_name("col").unwrap().as_primitive::<Int32Type>();
            let r = b
                .column_by_name("r")
                .unwrap()
                .as_primitive::<arrow::datatypes::Float32Type>();
            for i in 0..b.num_rows() {
                if r.value(i) > 0.0 {
                    let user = prepared.users[row.value(i) as usize].clone();
                    let item = prepared.items[col.value(i) as usize].clone();
                    ratings.insert((user, item), r.value(i));
                }
            }
        }
        let expected: BTreeMap<(String, String), f32> = [
            (("u1", "t1"), 1.5),
            (("u1", "t3"), 0.5),
            (("u2", "t1"), 1.0),
            (("u2", "t2"), 1.0),
        ]
        .into_iter()
        .map(|((u, t), r)| ((u.to_string(), t.to_string()), r))
        .collect();
        assert_eq!(ratings, expected, "complete 1, listen 0.5, skip 0");
    })
    .await
    .expect("prepare within 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_ingest_into_kafka_then_a_catch_up_sink_in_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start("music_log", 3);
    let port = free_port();
    let mut ingest = recsys(dir.path())
        .args([
            "ingest",
            "--kafka",
            &broker.brokers,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        if let Ok(c) = IngestServiceClient::connect(endpoint.clone()).await {
            break c;
        }
        assert!(Instant::now() < deadline, "ingest service did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Acknowledged once the broker has them: 1 + 300 events of 30 users.
    client.log_event(event("app-user")).await.unwrap();
    let events: Vec<ListenEvent> = (0..300)
        .map(|i| event(&format!("user-{}", i % 30)))
        .collect();
    let accepted = client
        .publish(tokio_stream::iter(events))
        .await
        .unwrap()
        .into_inner()
        .accepted;
    assert_eq!(accepted, 300);
    let mut bad = event("x");
    bad.source.clear();
    let status = client.log_event(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    terminate(&ingest);
    assert!(wait_for(&mut ingest, 30).success());

    // A consumer-group member drains the topic and stops.
    let mut sink = recsys(dir.path())
        .args([
            "sink",
            "--kafka",
            &broker.brokers,
            "--group",
            "catch-up",
            "--stop-after",
            "301",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for(&mut sink, 60).success());
    let files = event_files(dir.path());
    let per_partition = check_events(&files);
    assert_eq!(per_partition.values().sum::<u64>(), 301);
    assert!(
        per_partition.len() > 1,
        "keys spread over partitions: {per_partition:?}"
    );
    let lake = local_store(dir.path());
    assert_eq!(
        check_coverage(&lake, "music_log").await.unwrap(),
        per_partition
    );
}

/// `plays` listens (and 2 skips, which count for nothing) of each of `tracks`, produced to
/// Kafka; returns the plays per track.
async fn produce_plays(brokers: &str, tracks: &[(&str, usize)], day: i64) -> BTreeMap<String, i64> {
    use recsys_ingest::EventLog;
    use recsys_ingest::event::{Action, Event, EventBuilder};
    let log = recsys_ingest::log::KafkaLog::connect(recsys_ingest::log::KafkaOptions {
        brokers: brokers.into(),
        topic: "music_log".into(),
        compression: "none".into(),
        idempotence: true,
        queue_messages: 10_000,
        delivery_timeout_ms: recsys_ingest::log::DELIVERY_TIMEOUT_MS,
    })
    .await
    .unwrap();
    let mut builder = EventBuilder::default();
    let mut plays = BTreeMap::new();
    for (t, &(track, n)) in tracks.iter().enumerate() {
        for i in 0..n + 2 {
            builder.push(
                &Event {
                    user_id: format!("kafka-user-{}", i % 5),
                    track_id: track.into(),
                    artist_id: "kafka-artist".into(),
                    timestamp: day + (t * 1000 + i) as i64 * 1_000_000,
                    action: if i < n { Action::Listen } else { Action::Skip },
                    source: "test".into(),
                    duration_s: 100.0,
                    total_duration_s: 200.0,
                },
                0,
                0,
            );
        }
        *plays.entry(track.to_string()).or_default() += n as i64;
    }
    log.append(builder.finish()).await.unwrap().await.unwrap();
    log.close().await.unwrap();
    plays
}

/// The orchestrator on Kafka: its in-process sink (`--sink`) writes the topic to events/, the
/// counts job counts them (new tracks get catalog entries), the supervise job reports no lag
/// and `recsys status` shows it; with no sink running and events waiting longer than
/// `--sink-stale-s`, supervise fails and names the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_sinks_kafka_counts_it_and_reports_the_lag() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path();
    let broker = Broker::start("music_log", 2);
    let day = 14_000 * 86_400_000_000i64;
    let plays = produce_plays(&broker.brokers, &[("kafka-a", 30), ("kafka-b", 12)], day).await;
    let mut orchestrator = recsys(lake)
        .args([
            "orchestrate",
            "--kafka",
            &broker.brokers,
            "--sink",
            "--flush-interval-ms",
            "100",
            "--counts-every-s",
            "0.3",
            "--supervise-every-s",
            "0.3",
            "--jitter",
            "0",
        ])
        .spawn()
        .unwrap();
    let store = local_store(lake);
    let total = plays.values().sum::<i64>() + 4;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (held, counted) = held_and_counted(&store, "music_log").await;
        if held == total && counted == held {
            break;
        }
        assert!(
            Instant::now() < deadline && orchestrator.try_wait().unwrap().is_none(),
            "the orchestrator's sink and counts got {held} and {counted} of {total} events"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few intervals more: the publication follows the aggregation, the lag check follows.
    tokio::time::sleep(Duration::from_secs(2)).await;
    terminate(&orchestrator);
    assert!(
        wait_for(&mut orchestrator, 30).success(),
        "SIGTERM stops it (and its sink) cleanly"
    );
    let catalog = recsys_catalog::EmbeddedCatalog::open(&lake.join("catalog.redb"))
        .await
        .unwrap();
    for (track, n) in &plays {
        let song = recsys_catalog::Catalog::song(&catalog, track)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{track} has a catalog entry"));
        assert_eq!((song.stats.plays, song.stats.plays_7d), (*n, *n), "{track}");
    }
    drop(catalog);
    let status = recsys(lake).args(["status", "--json"]).output().unwrap();
    assert!(status.status.success());
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let supervise = &status["jobs"]["supervise"];
    assert_eq!(supervise["outcome"], "ok", "{status}");
    let detail = supervise["detail"].as_str().unwrap();
    assert!(
        detail.contains("0 events not in events/ yet")
            && detail.contains("in-process sink restarted 0 times"),
        "{detail}"
    );
    assert_eq!(status["events"]["lag"], 0, "{status}");

    // Events wait in Kafka with no sink running: an alert once no file was written for a second.
    produce_plays(&broker.brokers, &[("kafka-c", 3)], day).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let once = recsys(lake)
        .args([
            "orchestrate",
            "--once",
            "supervise",
            "--kafka",
            &broker.brokers,
            "--sink-stale-s",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert!(
        !once.status.success()
            && stderr.contains("the sink is behind")
            && !stderr.contains(": 0 events not in events/ yet")
            && stderr.contains(" events not in events/ yet")
            && stderr.contains("is `recsys sink` (or `recsys orchestrate --sink`) running"),
        "{stderr}"
    );
}
