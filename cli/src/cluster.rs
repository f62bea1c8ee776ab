//! `recsys cluster`: what a Ballista cluster has right now: its executors with their task slots
//! and last heartbeat, and its jobs (from the scheduler's REST API).

use anyhow::{Result, bail};
use clap::Args;

use crate::LakeArgs;

#[derive(Debug, Args)]
pub struct ClusterCommand {
    /// The cluster's scheduler, e.g. `df://scheduler:50050`.
    #[arg(long, env = "RECSYS_SCHEDULER")]
    pub scheduler: Option<String>,
}

pub async fn run(lake: &LakeArgs, args: ClusterCommand) -> Result<()> {
    let Some(url) = &args.scheduler else {
        bail!(
            "recsys cluster shows a running cluster: give --scheduler df://host:50050 (or RECSYS_SCHEDULER)"
        );
    };
    // One slot to plan for: nothing is planned here, and a cluster without executors is shown
    // as such rather than waited for.
    let cluster = recsys_jobs::Cluster::remote(url, &lake.s3, 1, false).await?;
    let executors = cluster.executors().await?;
    let slots: u32 = executors.iter().map(|e| e.specification.vcores).sum();
    println!(
        "cluster {url}: {} executors, {slots} task slots",
        executors.len()
    );
    if !executors.is_empty() {
        println!(
            "  {:<38} {:<24} {:>5} {:>16}",
            "executor", "address", "slots", "last heartbeat"
        );
    }
    let now_ms = (recsys_core::time::now_micros() / 1000) as u64;
    for e in &executors {
        let seen = e.last_seen.map_or("never".to_string(), |ms| {
            format!("{:.1} s ago", now_ms.saturating_sub(ms) as f64 / 1000.0)
        });
        println!(
            "  {:<38} {:<24} {:>5} {seen:>16}",
            e.id,
            format!("{}:{}", e.host, e.port),
            e.specification.vcores
        );
    }
    let jobs = cluster.jobs().await?;
    let running = jobs
        .iter()
        .filter(|j| j.status == "Running" || j.status == "Queued")
        .count();
    println!("jobs: {} known, {running} running or queued", jobs.len());
    for j in &jobs {
        println!(
            "  {:<12} {:<10} {:>3}/{:<3} stages  {}",
            j.job_id,
            j.status,
            j.completed_stages,
            j.num_stages,
            if j.job_name.is_empty() {
                &j.job_status
            } else {
                &j.job_name
            }
        );
    }
    Ok(())
}
