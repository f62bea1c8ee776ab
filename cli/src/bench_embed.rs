//! `recsys bench embed`: MiniLM-L6 texts/s at 256 tokens per text for several batch sizes on a
//! fixed number of threads, beside sentence-transformers (PyTorch) on the same texts when it can
//! be imported (`--torch-path` adds a folder to Python's path, e.g. where torch was installed
//! with `pip install --target`).

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::lyrics::ModelArgs;

#[derive(Debug, Args)]
pub struct EmbedBench {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Texts per measurement.
    #[arg(long, env = "RECSYS_BENCH_TEXTS", default_value_t = 256)]
    pub texts: usize,
    /// Batch sizes to measure.
    #[arg(
        long,
        env = "RECSYS_BENCH_BATCHES",
        value_delimiter = ',',
        default_value = "1,32,128"
    )]
    pub batches: Vec<usize>,
    /// Threads for both sides.
    #[arg(long, env = "RECSYS_BENCH_THREADS", default_value_t = 2)]
    pub threads: usize,
    /// Folder holding an importable torch + sentence-transformers (added to PYTHONPATH).
    #[arg(long, env = "RECSYS_BENCH_TORCH_PATH")]
    pub torch_path: Option<String>,
    /// Skip the PyTorch comparison.
    #[arg(long, env = "RECSYS_BENCH_NO_TORCH")]
    pub no_torch: bool,
}

const WORDS: [&str; 16] = [
    "music", "night", "heart", "love", "dance", "light", "time", "dream", "rain", "road", "home",
    "sky", "summer", "morning", "river", "window",
];

/// Same as `text` in benches/minilm_torch.py.
fn bench_text(i: usize) -> String {
    let words: Vec<&str> = (0..300)
        .map(|j| WORDS[(i * 7 + j * 3) % WORDS.len()])
        .collect();
    format!("song {i}: {}", words.join(" "))
}

pub async fn run(args: EmbedBench) -> Result<()> {
    let embedder = args.model.load()?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.max(1))
        .build()?;
    let texts: Vec<String> = (0..args.texts.max(1)).map(bench_text).collect();
    let ids = texts
        .iter()
        .map(|t| embedder.tokenizer.encode(t))
        .collect::<Result<Vec<_>, _>>()?;
    let tokens = ids[0].len();
    let mut ours = Vec::new();
    for &batch in &args.batches {
        let rate = pool.install(|| -> Result<f64> {
            embedder.embed_ids(ids[..batch.min(ids.len()).max(4)].to_vec(), batch)?;
            let started = Instant::now();
            embedder.embed_ids(ids.clone(), batch)?;
            Ok(ids.len() as f64 / started.elapsed().as_secs_f64())
        })?;
        tracing::info!(batch, texts_per_sec = format!("{rate:.1}"), "burn MiniLM");
        ours.push(rate);
    }
    let torch = if args.no_torch {
        None
    } else {
        match torch_bench(&args) {
            Ok(v) => Some(v),
            Err(e) => {
                println!("PyTorch comparison skipped: {e:#}");
                None
            }
        }
    };
    println!(
        "MiniLM-L6 embeddings, {tokens} tokens per text, {} texts, {} threads{}",
        texts.len(),
        args.threads,
        torch
            .as_ref()
            .map(|t| format!(", torch {}", t["torch"].as_str().unwrap_or("?")))
            .unwrap_or_default()
    );
    println!(
        "{:>6} {:>14} {:>16} {:>8}",
        "batch", "burn texts/s", "torch texts/s", "ratio"
    );
    for (batch, rate) in args.batches.iter().zip(&ours) {
        let theirs = torch.as_ref().and_then(|t| t[batch.to_string()].as_f64());
        println!(
            "{batch:>6} {rate:>14.1} {:>16} {:>8}",
            theirs.map_or("-".into(), |t| format!("{t:.1}")),
            theirs.map_or("-".into(), |t| format!("{:.2}×", rate / t)),
        );
    }
    Ok(())
}

fn torch_bench(args: &EmbedBench) -> Result<serde_json::Value> {
    let dir = recsys_embed::model_dir::locate(args.model.model_dir.as_deref(), false)?;
    let batches: Vec<String> = args.batches.iter().map(usize::to_string).collect();
    let script = format!("{}/../benches/minilm_torch.py", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script)
        .arg(&dir)
        .arg(args.texts.to_string())
        .arg(batches.join(","))
        .arg(args.threads.to_string());
    if let Some(path) = &args.torch_path {
        cmd.env("PYTHONPATH", path);
    }
    let out = cmd.output().context("running python3")?;
    anyhow::ensure!(
        out.status.success(),
        "sentence-transformers did not run: {}",
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("no message")
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}
