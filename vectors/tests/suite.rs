//! One behavioural suite for every vector store: the embedded store; the Qdrant store against
//! the Qdrant stand-in (`recsys_testkit::qdrant`: Qdrant's gRPC protocol over an exact
//! in-memory index), always; and against a real Qdrant when `RECSYS_TEST_QDRANT_URL` names one
//! (a fresh collection per run).

use recsys_vectors::{
    EmbeddedStore, Payload, Point, QdrantOptions, QdrantStore, VectorStore, normalized,
};

const DIM: usize = 8;

fn point(id: &str, v: [f32; DIM]) -> Point {
    Point {
        payload: Payload {
            track_id: id.into(),
            title: format!("title {id}"),
            artist: format!("artist {id}"),
        },
        vector: v.to_vec(),
    }
}

fn axis(i: usize, scale: f32) -> [f32; DIM] {
    let mut v = [0.0; DIM];
    v[i] = scale;
    v
}

fn ids(hits: &[recsys_vectors::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.payload.track_id.as_str()).collect()
}

async fn suite(store: &dyn VectorStore) {
    assert_eq!(store.count().await.unwrap(), 0, "{}", store.describe());
    // a is the query direction; b leans towards it, c is orthogonal, d opposite.
    let mut b = axis(0, 1.0);
    b[1] = 1.0;
    let points = vec![
        point("a", axis(0, 3.0)),
        point("b", b),
        point("c", axis(1, 0.5)),
        point("d", axis(0, -2.0)),
    ];
    store.upsert(&points).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 4);

    // Cosine: scale does not matter, order is a > b > c > d.
    let hits = store.search(&axis(0, 10.0), 10, &[]).await.unwrap();
    assert_eq!(ids(&hits), ["a", "b", "c", "d"]);
    assert!((hits[0].score - 1.0).abs() < 1e-5);
    assert!((hits[1].score - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5);
    assert!((hits[3].score + 1.0).abs() < 1e-5);
    assert_eq!(hits[0].payload.title, "title a");
    assert_eq!(hits[0].payload.artist, "artist a");

    // Limit and exclusions (unknown ids in the exclusion list are fine).
    let hits = store
        .search(&axis(0, 1.0), 2, &["a".into(), "zzz".into()])
        .await
        .unwrap();
    assert_eq!(ids(&hits), ["b", "c"]);

    // Stored vectors come back normalised.
    let v = store.vector("b").await.unwrap().unwrap();
    let expected = normalized(&b);
    for (x, y) in v.iter().zip(&expected) {
        assert!((x - y).abs() < 1e-5, "{v:?} vs {expected:?}");
    }
    assert!(store.vector("nope").await.unwrap().is_none());

    // Upsert replaces: c now points along the query.
    store.upsert(&[point("c", axis(0, 1.0))]).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 4);
    let hits = store.search(&axis(0, 1.0), 2, &[]).await.unwrap();
    assert_eq!(hits.len(), 2);
    assert!(ids(&hits).contains(&"a") && ids(&hits).contains(&"c"));

    // Delete is idempotent and ignores unknown ids.
    store.delete(&["a".into(), "unknown".into()]).await.unwrap();
    store.delete(&["a".into()]).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 3);
    let hits = store.search(&axis(0, 1.0), 10, &[]).await.unwrap();
    assert_eq!(ids(&hits), ["c", "b", "d"]);

    // A vector of the wrong dimension is refused with a clear error.
    let err = store.search(&[1.0, 0.0], 1, &[]).await.unwrap_err();
    assert!(err.to_string().contains("dimension 2"), "{err}");
}

#[tokio::test]
async fn embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vectors.redb");
    {
        let store = EmbeddedStore::open(&path, DIM).unwrap();
        suite(&store).await;
    }
    // Everything acknowledged survives a reopen.
    let store = EmbeddedStore::open(&path, DIM).unwrap();
    assert_eq!(store.count().await.unwrap(), 3);
    let hits = store.search(&axis(0, 1.0), 1, &[]).await.unwrap();
    assert_eq!(hits[0].payload.track_id, "c");
}

#[tokio::test]
async fn embedded_search_matches_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("v.redb"), DIM).unwrap();
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let points: Vec<Point> = (0..500)
        .map(|i| point(&format!("t{i}"), std::array::from_fn(|_| next())))
        .collect();
    store.upsert(&points).await.unwrap();
    let query: [f32; DIM] = std::array::from_fn(|_| next());
    let q = normalized(&query);
    let mut expected: Vec<(f32, String)> = points
        .iter()
        .map(|p| {
            let v = normalized(&p.vector);
            (
                v.iter().zip(&q).map(|(a, b)| a * b).sum(),
                p.payload.track_id.clone(),
            )
        })
        .collect();
    expected.sort_by(|a, b| b.0.total_cmp(&a.0));
    let hits = store.search(&query, 20, &[]).await.unwrap();
    let got: Vec<&str> = ids(&hits);
    let want: Vec<&str> = expected[..20].iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn qdrant_store_against_the_stand_in() {
    let server = recsys_testkit::qdrant::Running::start().await.unwrap();
    let store = QdrantStore::connect(&QdrantOptions::new(&server.url), DIM)
        .await
        .unwrap();
    suite(&store).await;
    // Connecting again finds the collection (and its points) instead of creating it.
    let again = QdrantStore::connect(&QdrantOptions::new(&server.url), DIM)
        .await
        .unwrap();
    assert_eq!(again.count().await.unwrap(), 3);
    // A vector of the wrong dimension is refused by the server too, naming both sizes.
    let wrong = QdrantStore::connect(&QdrantOptions::new(&server.url), 2)
        .await
        .unwrap();
    let err = wrong
        .upsert(&[Point {
            payload: point("x", axis(0, 1.0)).payload,
            vector: vec![1.0, 0.0],
        }])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&server.url) && err.contains("expected dim: 8, got 2"),
        "{err}"
    );
}

#[tokio::test]
async fn qdrant_store_follows_its_server_away_and_back() {
    let server = recsys_testkit::qdrant::Running::start().await.unwrap();
    let options = QdrantOptions {
        timeout: std::time::Duration::from_secs(2),
        ..QdrantOptions::new(&server.url)
    };
    let store = QdrantStore::connect(&options, DIM).await.unwrap();
    store.upsert(&[point("a", axis(0, 1.0))]).await.unwrap();
    let addr = server.addr;
    let data = server.stop();
    let err = store.search(&axis(0, 1.0), 1, &[]).await.unwrap_err();
    assert!(err.to_string().contains(&options.url), "{err}");
    // The same client works again once the server is back, without reconnecting by hand.
    let _back = data.serve(addr).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let hits = loop {
        match store.search(&axis(0, 1.0), 1, &[]).await {
            Ok(hits) => break hits,
            Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    };
    assert_eq!(ids(&hits), ["a"]);
}

#[tokio::test]
async fn qdrant_store_against_a_real_server() {
    let Ok(url) = std::env::var("RECSYS_TEST_QDRANT_URL") else {
        eprintln!("RECSYS_TEST_QDRANT_URL not set: not run against a real Qdrant");
        return;
    };
    let options = QdrantOptions {
        collection: format!("recsys_test_{}", std::process::id()),
        ..QdrantOptions::new(url)
    };
    let store = QdrantStore::connect(&options, DIM).await.unwrap();
    suite(&store).await;
}

#[tokio::test]
async fn unreachable_qdrant_names_the_url() {
    let options = QdrantOptions {
        timeout: std::time::Duration::from_secs(2),
        ..QdrantOptions::new("http://127.0.0.1:9")
    };
    let err = match QdrantStore::connect(&options, DIM).await {
        Ok(_) => panic!("connected to a closed port"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("http://127.0.0.1:9"), "{err}");
}
