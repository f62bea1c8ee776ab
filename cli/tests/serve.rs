//! Serving end to end: the `recsys pipeline` command (which ends by serving its data, running
//! `recsys verify` against it and printing samples), then the server in-process on the same
//! embedded lake: every verification check must pass (none skipped), and a new model version is
//! picked up while requests keep succeeding.

mod common;

use std::collections::HashSet;
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
        let out = std::process::Command::new(RECSYS)
            .args([
                "--data-dir",
                dir.path().to_str().unwrap(),
                "pipeline",
                "--users",
                "40",
                "--tracks",
                "2000",
                "--events",
                "30000",
            ])
            .env("RECSYS_LOG", "warn")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
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

async fn recommender(lake: &Path) -> (Arc<Recommender>, Arc<dyn VectorStore>) {
    let store = local_store(lake);
    let catalog: Arc<dyn Catalog> = Arc::new(
        EmbeddedCatalog::open(&lake.join("catalog.redb"))
            .await
            .unwrap(),
    );
    let vectors: Arc<dyn VectorStore> =
        Arc::new(EmbeddedStore::open(&lake.join("vectors.redb"), 384).unwrap());
    let policy = FlushPolicy {
        rows: 10_000,
        interval: Duration::from_millis(200),
        in_flight: 1,
    };
    let log = Arc::new(EmbeddedLog::open(store.clone(), policy).await.unwrap());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_server_passes_every_check_and_hot_reloads() {
    let lake_dir: PathBuf = pipeline().dir.path().to_path_buf();
    tokio::time::timeout(Duration::from_secs(300), async {
        let (rec, vectors) = recommender(&lake_dir).await;
        // Take the lyrics vectors of every fifth servable song away, so that songs without one
        // exist (the ALS-only path of next songs).
        let model = rec.model().expect("the pipeline trained a model");
        let dropped: Vec<String> = model.item_ids.iter().step_by(5).cloned().collect();
        vectors.delete(&dropped).await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(recsys_serve::service::serve(
            listener,
            rec.clone(),
            Default::default(),
            Duration::from_millis(200),
            async {
                stopped.await.ok();
            },
        ));
        let client = Client::connect(&endpoint).await.unwrap();
        let lake = local_store(&lake_dir);
        let report = verify(&client, Some(&lake)).await;
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
        stop.send(()).ok();
        server.await.unwrap().unwrap();
    })
    .await
    .expect("test timed out");
}
