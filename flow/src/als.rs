//! ALS training through the cluster, one log line per iteration.

use recsys_core::Store;
use recsys_jobs::Cluster;
use recsys_jobs::als::{AlsParams, AlsSummary, TrainOptions};

use crate::FlowError;

/// Trains (and, as `options` say, evaluates and publishes) an ALS model.
pub async fn train(
    cluster: &Cluster,
    lake: &Store,
    params: &AlsParams,
    options: &TrainOptions,
) -> Result<AlsSummary, FlowError> {
    let total = params.iterations;
    Ok(
        recsys_jobs::als::train(cluster, lake, params, options, |s| {
            tracing::info!(
                iteration = format!("{}/{total}", s.iteration),
                loss = format!("{:.6e}", s.loss),
                secs = format!("{:.3}", s.seconds),
                "als"
            );
        })
        .await?,
    )
}
