//! `recsys bench embed`: MiniLM-L6 texts/s at 256 tokens per text for several batch sizes on a
//! fixed number of threads, beside sentence-transformers (PyTorch) on the same texts in the
//! same run.

use std::time::Instant;

use anyhow::Result;
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
    /// Leave out sentence-transformers (PyTorch).
    #[arg(long, env = "RECSYS_BENCH_NO_TORCH")]
    pub no_torch: bool,
    #[command(flatten)]
    pub python: crate::peers::PeerPython,
}

const WORDS: [&str; 16] = [
    "music", "night", "heart", "love", "dance", "light", "time", "dream", "rain", "road", "home",
    "sky", "summer", "morning", "river", "window",
];

/// Same as `text` in benches/minilm_torch.py.
pub fn bench_text(i: usize) -> String {
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
        let dir = recsys_embed::model_dir::locate(args.model.model_dir.as_deref(), false)?;
        let batches: Vec<String> = args.batches.iter().map(usize::to_string).collect();
        Some(args.python.run(
            crate::peers::Peer::Torch,
            "minilm_torch.py",
            &[
                dir.display().to_string(),
                args.texts.to_string(),
                batches.join(","),
                args.threads.to_string(),
            ],
        )?)
    };
    println!(
        "MiniLM-L6 embeddings, {tokens} tokens per text, {} texts, {} threads{}",
        texts.len(),
        args.threads,
        torch
            .as_ref()
            .map(|t| format!(", beside {}", crate::peers::described(t)))
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
