//! `recsys sql "SELECT …"`: SQL over the lake's tables on the cluster, through the scheduler's
//! Arrow Flight SQL service (the same door ADBC, JDBC and pyarrow clients use). The scheduler
//! plans the query over its own lake tables (`recsys_jobs::tables`), the executors run it, and
//! the result comes back as Arrow batches, printed as a table, CSV or JSON.

use std::time::Duration;

use anyhow::{Context, Result};
use arrow::array::RecordBatch;
use arrow_flight::sql::client::FlightSqlServiceClient;
use clap::{Args, ValueEnum};
use futures::TryStreamExt;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct SqlArgs {
    /// The query, e.g. `SELECT count(*) FROM listens`; `SHOW TABLES` lists the lake's tables.
    pub query: String,
    /// The Ballista scheduler serving Flight SQL (`recsys scheduler`, on by default).
    #[arg(long, env = "RECSYS_SCHEDULER", default_value = "df://127.0.0.1:50050")]
    pub scheduler: String,
    /// How the result is printed.
    #[arg(long, env = "RECSYS_SQL_FORMAT", value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Longest wait for the query, in seconds.
    #[arg(long, env = "RECSYS_SQL_TIMEOUT_S", default_value_t = 600)]
    pub timeout_s: u64,
}

/// Runs `query` through the Flight SQL service at `scheduler` (`df://host:port`).
pub async fn query(scheduler: &str, query: &str, timeout: Duration) -> Result<Vec<RecordBatch>> {
    let endpoint = recsys_jobs::cluster::scheduler_endpoint(scheduler)?;
    let channel = tonic::transport::Endpoint::from_shared(endpoint)?
        .connect_timeout(Duration::from_secs(10))
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach the scheduler's Flight SQL service at {scheduler}")
        })?;
    let mut client = FlightSqlServiceClient::new(channel);
    client
        .handshake("recsys", "")
        .await
        .with_context(|| format!("Flight SQL handshake with {scheduler}"))?;
    let info = client
        .execute(query.to_string(), None)
        .await
        .with_context(|| format!("the query failed on {scheduler}"))?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint
            .ticket
            .with_context(|| format!("{scheduler} answered with an endpoint without a ticket"))?;
        let stream = client
            .do_get(ticket)
            .await
            .with_context(|| format!("fetching a result from {scheduler}"))?;
        batches.extend(
            stream
                .try_collect::<Vec<_>>()
                .await
                .with_context(|| format!("reading a result from {scheduler}"))?,
        );
    }
    Ok(batches)
}

pub async fn run(args: &SqlArgs) -> Result<()> {
    let batches = query(
        &args.scheduler,
        &args.query,
        Duration::from_secs(args.timeout_s),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Table => {
            use std::io::Write;
            writeln!(
                out,
                "{}",
                arrow::util::pretty::pretty_format_batches(&batches)?
            )?;
        }
        Format::Csv => {
            let mut writer = arrow_csv::WriterBuilder::new().with_header(true).build(out);
            for b in &batches {
                writer.write(b)?;
            }
        }
        Format::Json => {
            let mut writer = arrow_json::LineDelimitedWriter::new(out);
            writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
            writer.finish()?;
        }
    }
    Ok(())
}
