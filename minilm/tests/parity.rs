//! Parity with sentence-transformers: the fixture holds texts, the token ids and the 384-d
//! embeddings `all-MiniLM-L6-v2` produced for them (PyTorch, float32, CPU).

use recsys_minilm::{DIM, Embedder, model_dir};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    texts: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    token_ids: Vec<u32>,
    embedding: Vec<f64>,
}

fn reference() -> Reference {
    // Cargo sets the variable when it runs the test too: read it then, so a test binary built
    // from another checkout sharing the target folder still finds this checkout's fixture.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{dir}/tests/fixtures/minilm_reference.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn embedder() -> Embedder {
    let dir = model_dir::locate(
        std::env::var_os("RECSYS_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .as_deref(),
        true,
    )
    .expect("model files");
    Embedder::load(&dir).unwrap()
}

fn check(case: &Case, got: &[f32; DIM]) -> f64 {
    let (mut dot, mut max_diff) = (0f64, 0f64);
    for (g, r) in got.iter().zip(&case.embedding) {
        dot += f64::from(*g) * r;
        max_diff = max_diff.max((f64::from(*g) - r).abs());
    }
    let norm_ref = case.embedding.iter().map(|r| r * r).sum::<f64>().sqrt();
    let norm_got = got
        .iter()
        .map(|g| f64::from(*g).powi(2))
        .sum::<f64>()
        .sqrt();
    let cosine = dot / (norm_ref * norm_got);
    assert!(
        cosine >= 0.99999 && max_diff <= 1e-5,
        "{}: cosine {cosine}, max abs diff {max_diff}",
        case.name
    );
    max_diff
}

#[test]
fn token_ids_and_embeddings_match_sentence_transformers() {
    let reference = reference();
    let embedder = embedder();
    for case in &reference.texts {
        assert_eq!(
            embedder.tokenizer.encode(&case.text).unwrap(),
            case.token_ids,
            "{}: token ids",
            case.name
        );
    }
    // One text at a time (no padding) and all together (padded, length-sorted batches).
    let texts: Vec<&str> = reference.texts.iter().map(|c| c.text.as_str()).collect();
    for batch in [1, 4, 32] {
        let got = embedder.embed(&texts, batch).unwrap();
        let worst = reference
            .texts
            .iter()
            .zip(&got)
            .map(|(case, v)| check(case, v))
            .fold(0.0, f64::max);
        eprintln!("batch {batch}: max abs difference {worst:.2e}");
    }
}
