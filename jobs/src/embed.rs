//! `EmbedExec`: lyrics embeddings as a Ballista job. The client writes the texts to embed as
//! shards (`shard-NNNNN.parquet`: track id, title, artist, text); each unit of work embeds one
//! shard with all-MiniLM-L6-v2 and writes `part-NNNNN.parquet` (the shard's number) of
//! [`embedding_schema`] beside the other parts, then reports its rows and tokens. A task that
//! runs again (an executor lost mid-job) writes the same part again; an object appears whole or
//! not at all.
//!
//! The model is loaded once per executor process and kept for every later task: from the
//! executor's own `RECSYS_MODEL_DIR` when set, else from the folder the client named (one
//! machine, or the same image), else from the installed PyPI package.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use recsys_core::schema::{col, embedding_schema};
use recsys_minilm::{DIM, Embedder, model_dir};
use serde::{Deserialize, Serialize};

use crate::worklist::{Work, WorkExec, task_store};

/// The columns of a shard: what to embed and what the part keeps beside the vector.
pub const TEXT: &str = "text";

/// The schema of a shard file.
pub fn shard_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::TRACK_ID, DataType::Utf8, false),
        Field::new(col::TRACK_NAME, DataType::Utf8, false),
        Field::new(col::ARTIST_NAME, DataType::Utf8, false),
        Field::new(TEXT, DataType::Utf8, false),
    ]))
}

/// `shard-NNNNN.parquet`.
pub fn shard_file(shard: u64) -> String {
    format!("shard-{shard:05}.parquet")
}

/// `part-NNNNN.parquet`.
pub fn part_file(shard: u64) -> String {
    format!("part-{shard:05}.parquet")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedSpec {
    pub store_url: String,
    /// Object-store path of the shard folder.
    pub shards_dir: String,
    /// Object-store path of the folder the parts go to.
    pub parts_dir: String,
    /// Texts per forward pass at most.
    pub batch: usize,
    /// The client's model folder, used when the executor's environment names none.
    pub model_dir: Option<String>,
}

/// What each unit reports.
pub fn embed_output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("shard", DataType::Int64, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("tokens", DataType::Int64, false),
    ]))
}

/// Embeds the shards of its work list.
pub type EmbedExec = WorkExec<EmbedSpec>;

impl Work for EmbedSpec {
    type Unit = u64;
    const NAME: &'static str = "EmbedExec";

    fn schema(&self) -> SchemaRef {
        embed_output_schema()
    }

    fn run(
        self: Arc<Self>,
        shard: u64,
        context: Arc<TaskContext>,
        _metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let store = task_store(&context, &self.store_url)?;
        Ok(futures::stream::once(async move { embed_shard(&store, &self, shard).await }).boxed())
    }
}

/// The models this process has loaded, by where the spec says to look (the executor's
/// `RECSYS_MODEL_DIR` or the client's folder), so the folder is located once per process:
/// finding the PyPI package runs Python.
static MODELS: Mutex<Option<HashMap<Option<PathBuf>, Arc<Embedder>>>> = Mutex::new(None);

/// The model for `spec`, loaded on first use in this process.
fn model(spec: &EmbedSpec) -> Result<Arc<Embedder>> {
    let explicit = std::env::var_os("RECSYS_MODEL_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            spec.model_dir
                .as_ref()
                .map(PathBuf::from)
                .filter(|d| d.is_dir())
        });
    let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
    let models = models.get_or_insert_with(HashMap::new);
    if let Some(loaded) = models.get(&explicit) {
        return Ok(loaded.clone());
    }
    let dir = model_dir::locate(explicit.as_deref(), false).map_err(|e| {
        DataFusionError::Execution(format!("the executor has no MiniLM model: {e}"))
    })?;
    let started = std::time::Instant::now();
    let loaded = Arc::new(
        Embedder::load(&dir)
            .map_err(|e| DataFusionError::Execution(format!("loading MiniLM: {e}")))?,
    );
    tracing::info!(dir = %dir.display(), secs = format!("{:.2}", started.elapsed().as_secs_f64()), "MiniLM loaded for this executor");
    models.insert(explicit, loaded.clone());
    Ok(loaded)
}

async fn embed_shard(
    store: &Arc<dyn ObjectStore>,
    spec: &EmbedSpec,
    shard: u64,
) -> Result<RecordBatch> {
    let input = Path::from(format!("{}/{}", spec.shards_dir, shard_file(shard)));
    let (batches, _) = crate::lake::read_parquet(store.as_ref(), &input)
        .await
        .map_err(|e| DataFusionError::Execution(format!("reading shard {input}: {e}")))?;
    let rows = match batches.first() {
        Some(first) => arrow::compute::concat_batches(&first.schema(), &batches)?,
        None => RecordBatch::new_empty(shard_schema()),
    };
    let texts: Vec<String> = rows
        .column_by_name(TEXT)
        .ok_or_else(|| DataFusionError::Execution(format!("shard {input} has no `{TEXT}`")))?
        .as_string::<i32>()
        .iter()
        .map(|t| t.unwrap_or_default().to_string())
        .collect();
    let spec_for_model = spec.clone();
    let batch = spec.batch;
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let embedder = model(&spec_for_model)?;
        let ids = texts
            .iter()
            .map(|t| embedder.tokenizer.encode(t))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        let vectors = embedder
            .embed_ids(ids, batch)
            .map_err(|e| DataFusionError::Execution(e.to_string()))?;
        Ok::<_, DataFusionError>((vectors, tokens))
    })
    .await
    .map_err(|e| DataFusionError::Execution(format!("embedding task failed: {e}")))??;

    let part = part_batch(&rows, &vectors)?;
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, part.schema(), None)?;
    writer.write(&part)?;
    writer.close()?;
    let output = Path::from(format!("{}/{}", spec.parts_dir, part_file(shard)));
    store
        .put(&output, PutPayload::from(bytes))
        .await
        .map_err(|e| DataFusionError::Execution(format!("writing {output}: {e}")))?;
    let one = |v: i64| Arc::new(Int64Array::from(vec![v])) as ArrayRef;
    Ok(RecordBatch::try_new(
        embed_output_schema(),
        vec![
            one(shard as i64),
            one(rows.num_rows() as i64),
            one(tokens as i64),
        ],
    )?)
}

/// A part: the shard's id, title and artist columns beside their vectors.
fn part_batch(shard: &RecordBatch, vectors: &[[f32; DIM]]) -> Result<RecordBatch> {
    let column = |name: &str| -> Result<ArrayRef> {
        shard
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| DataFusionError::Execution(format!("shard has no `{name}`")))
    };
    let values = Float32Array::from_iter_values(vectors.iter().flatten().copied());
    let list = FixedSizeListArray::new(
        Arc::new(Field::new("item", DataType::Float32, false)),
        DIM as i32,
        Arc::new(values),
        None,
    );
    debug_assert_eq!(list.len(), shard.num_rows());
    Ok(RecordBatch::try_new(
        embedding_schema(DIM),
        vec![
            column(col::TRACK_ID)?,
            column(col::TRACK_NAME)?,
            column(col::ARTIST_NAME)?,
            Arc::new(list),
        ],
    )?)
}

/// What one shard's task did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardDone {
    pub shard: u64,
    pub rows: u64,
    pub tokens: u64,
}

/// Embeds `shards` of `shards_dir` (relative to `lake`) into parts of `parts_dir` on
/// `cluster`, one task per shard.
pub async fn run_embed(
    cluster: &crate::Cluster,
    lake: &recsys_core::Store,
    shards_dir: &str,
    parts_dir: &str,
    shards: &[u64],
    batch: usize,
    model_dir: Option<&FsPath>,
) -> std::result::Result<Vec<ShardDone>, crate::JobError> {
    cluster.check_lake(lake)?;
    let spec = EmbedSpec {
        store_url: lake.base_url().to_string(),
        shards_dir: lake.path(shards_dir).to_string(),
        parts_dir: lake.path(parts_dir).to_string(),
        batch,
        model_dir: model_dir.map(|d| d.display().to_string()),
    };
    let plan = Arc::new(EmbedExec::new(crate::worklist::work_list(shards)?, spec));
    let mut done = Vec::with_capacity(shards.len());
    for b in cluster.run(plan).await? {
        let v = |c: usize| b.column(c).as_primitive::<arrow::datatypes::Int64Type>();
        for r in 0..b.num_rows() {
            done.push(ShardDone {
                shard: v(0).value(r) as u64,
                rows: v(1).value(r) as u64,
                tokens: v(2).value(r) as u64,
            });
        }
    }
    done.sort_by_key(|d| d.shard);
    Ok(done)
}
