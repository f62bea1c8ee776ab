//! The peers a benchmark measures recsys against: Spark (`pyspark` on the machine's Java),
//! DuckDB, the `implicit` library and sentence-transformers on PyTorch. Each runs in the same
//! run as recsys, on the same files, through a script in `benches/`; no ratio divides by a
//! figure typed into the code. A peer that cannot run is an error naming how to install it
//! (`scripts/bench-peers`) or skip it (`--no-<peer>`), never a silent omission.

use anyhow::{Context, Result, bail};
use clap::Args;

/// The peer scripts (`benches/`), by file name; they import each other's common parts.
const SCRIPTS: &[(&str, &str)] = &[
    ("als_common.py", include_str!("../../benches/als_common.py")),
    (
        "duckdb_clean_sort.py",
        include_str!("../../benches/duckdb_clean_sort.py"),
    ),
    ("duckdb_etl.py", include_str!("../../benches/duckdb_etl.py")),
    (
        "implicit_als.py",
        include_str!("../../benches/implicit_als.py"),
    ),
    (
        "minilm_torch.py",
        include_str!("../../benches/minilm_torch.py"),
    ),
    ("spark_als.py", include_str!("../../benches/spark_als.py")),
    (
        "spark_clean_sort.py",
        include_str!("../../benches/spark_clean_sort.py"),
    ),
    (
        "spark_common.py",
        include_str!("../../benches/spark_common.py"),
    ),
    ("spark_etl.py", include_str!("../../benches/spark_etl.py")),
];

/// A peer benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Spark,
    DuckDb,
    Implicit,
    Torch,
}

impl Peer {
    pub fn name(self) -> &'static str {
        match self {
            Peer::Spark => "Spark",
            Peer::DuckDb => "DuckDB",
            Peer::Implicit => "implicit",
            Peer::Torch => "sentence-transformers",
        }
    }

    fn skip_flag(self) -> &'static str {
        match self {
            Peer::Spark => "--no-spark",
            Peer::DuckDb => "--no-duckdb",
            Peer::Implicit => "--no-implicit",
            Peer::Torch => "--no-torch",
        }
    }
}

/// The Python interpreter that runs the peers.
#[derive(Debug, Clone, Args)]
pub struct PeerPython {
    /// Python with the peers installed (default: the venv `scripts/bench-peers` makes in the
    /// tools folder, `$RECSYS_TOOLS_DIR/bench-venv`, when it exists, else `python3`).
    #[arg(long = "peer-python", env = "RECSYS_BENCH_PYTHON")]
    pub python: Option<String>,
}

impl PeerPython {
    fn interpreter(&self) -> String {
        if let Some(python) = &self.python {
            return python.clone();
        }
        let tools = std::env::var("RECSYS_TOOLS_DIR").unwrap_or_else(|_| {
            format!(
                "{}/.cache/recsys-tools",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let venv = format!("{tools}/bench-venv/bin/python");
        if std::path::Path::new(&venv).exists() {
            venv
        } else {
            "python3".into()
        }
    }

    /// Runs `benches/<script>` for `peer` with `args`; the JSON object it prints. The scripts
    /// are part of the binary and written to a temporary folder for the run, so a benchmark
    /// runs the scripts of the source it was built from, wherever that clone is now.
    pub fn run(&self, peer: Peer, script: &str, args: &[String]) -> Result<serde_json::Value> {
        let python = self.interpreter();
        let dir = tempfile::tempdir().context("a temporary folder for the peer scripts")?;
        for (name, text) in SCRIPTS {
            std::fs::write(dir.path().join(name), text)
                .with_context(|| format!("writing {name} to {}", dir.path().display()))?;
        }
        tracing::info!(peer = peer.name(), %python, script, "running the peer");
        let out = std::process::Command::new(&python)
            .arg(dir.path().join(script))
            .args(args)
            .output()
            .with_context(|| format!("running {python} for the {} peer", peer.name()))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let why = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            bail!(
                "the {} peer failed ({python} {script}): {why}\n  install the peers with \
                 `scripts/bench-peers`, or leave this one out with {}",
                peer.name(),
                peer.skip_flag()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "the {} peer printed no JSON: {}",
                peer.name(),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

/// Seconds under `key` of a peer's JSON.
pub fn secs(v: &serde_json::Value, key: &str) -> Result<f64> {
    v[key]
        .as_f64()
        .with_context(|| format!("peer output has no `{key}`: {v}"))
}

/// What the peer says it is (name, version, threads).
pub fn described(v: &serde_json::Value) -> &str {
    v["peer"].as_str().unwrap_or("?")
}

/// The run's context, printed first by every benchmark: when, on what, how loaded.
pub fn print_context(what: &str) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "recsys {} bench {what}: {date}, {cores} cores ({cpu}), load average {load}",
        env!("CARGO_PKG_VERSION")
    );
}

/// `theirs / ours`, printed as the factor recsys is faster by (below 1: slower).
pub fn ratio(theirs: f64, ours: f64) -> String {
    format!("{:.2}×", theirs / ours)
}

/// The SQL-engine peers of the clean, sort and ETL benchmarks.
#[derive(Debug, Clone, Args)]
pub struct SqlPeers {
    /// Leave Spark out.
    #[arg(long, env = "RECSYS_BENCH_NO_SPARK")]
    pub no_spark: bool,
    /// Leave DuckDB out.
    #[arg(long, env = "RECSYS_BENCH_NO_DUCKDB")]
    pub no_duckdb: bool,
    #[command(flatten)]
    pub python: PeerPython,
}

impl SqlPeers {
    /// Runs `spark_script` and `duckdb_script` (unless left out) with `args`; their outputs.
    pub fn run(
        &self,
        spark_script: &str,
        duckdb_script: &str,
        args: &[String],
    ) -> Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        if !self.no_spark {
            out.push(self.python.run(Peer::Spark, spark_script, args)?);
        }
        if !self.no_duckdb {
            out.push(self.python.run(Peer::DuckDb, duckdb_script, args)?);
        }
        Ok(out)
    }
}

/// Prints one row per `(step, recsys seconds, key or keys summed in each peer's output)`, with
/// each peer's seconds and how many times faster recsys was.
pub fn print_comparison(steps: &[(&str, f64, &[&str])], peers: &[serde_json::Value]) -> Result<()> {
    print!("  {:<11} {:>9}", "step", "recsys s");
    for p in peers {
        print!("   {:>38}", described(p));
    }
    println!();
    for (step, ours, keys) in steps {
        print!("  {step:<11} {ours:>9.2}");
        for p in peers {
            let theirs = keys.iter().map(|k| secs(p, k)).sum::<Result<f64>>()?;
            print!("   {:>28.2} s ({:>6})", theirs, ratio(theirs, *ours));
        }
        println!();
    }
    println!("  (×: the peer's time over recsys's, above 1 = recsys faster)");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every script in `benches/` is in the binary, so no peer runs a stale copy or none.
    #[test]
    fn every_peer_script_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../benches");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".py"))
            .collect();
        on_disk.sort();
        let embedded: Vec<String> = super::SCRIPTS.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(on_disk, embedded);
    }
}
