//! `recsys submit embed`: every catalog song with lyrics gets a MiniLM embedding, in the vector
//! store and in Parquet (`embeddings/lyrics/part-NNNNN.parquet`). Resumable: songs already in
//! the Parquet files are skipped, and each chunk goes to the vector store before its Parquet
//! part is written, so a crash costs at most one chunk, which the next run embeds again
//! (vector upserts are idempotent).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use recsys_catalog::{Catalog, CatalogError, LyricsStatus, songs_with_lyrics_status};
use recsys_core::reader::LakeFileReader;
use recsys_core::schema::{EMBEDDINGS_DIR, col, embedding_schema};
use recsys_core::{Store, StoreError};
use recsys_vectors::{Payload, Point, VectorError, VectorStore};

use crate::{DIM, EmbedError, Embedder, prepare_lyrics};

#[derive(Debug, Clone)]
pub struct EmbedJobOptions {
    /// Texts per forward pass at most (passes are also capped by tokens).
    pub batch: usize,
    /// Songs per vector-store write and Parquet part.
    pub chunk: usize,
    /// Stop after embedding this many songs.
    pub limit: Option<u64>,
}

impl Default for EmbedJobOptions {
    fn default() -> Self {
        EmbedJobOptions {
            batch: 32,
            chunk: 512,
            limit: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbedReport {
    /// Songs with lyrics seen in the catalog.
    pub songs: u64,
    pub embedded: u64,
    /// Lyrics under 50 characters (not embedded, as in the seed).
    pub too_short: u64,
    /// Embedded by an earlier run.
    pub already_done: u64,
    pub parts_written: u64,
    pub tokens: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EmbedJobError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Vectors(#[from] VectorError),
    #[error(transparent)]
    Model(#[from] EmbedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A Parquet part that cannot be read or written.
    #[error("{location}: {reason}")]
    Parquet { location: String, reason: String },
}

fn parquet_err(location: String) -> impl Fn(String) -> EmbedJobError {
    move |reason| EmbedJobError::Parquet {
        location: location.clone(),
        reason,
    }
}

/// Track ids already in `embeddings/lyrics/`, and the next part number.
pub async fn embedded_ids(lake: &Store) -> Result<(HashSet<String>, u64), EmbedJobError> {
    let store = lake.object_store();
    let objects: Vec<_> = store
        .list(Some(&lake.path(EMBEDDINGS_DIR)))
        .try_collect()
        .await
        .map_err(|e| lake.error(EMBEDDINGS_DIR, e))?;
    let mut ids = HashSet::new();
    let mut next = 0;
    for o in objects {
        let Some(n) = o.location.filename().and_then(|f| {
            f.strip_prefix("part-")?
                .strip_suffix(".parquet")?
                .parse::<u64>()
                .ok()
        }) else {
            continue;
        };
        next = next.max(n + 1);
        let err = parquet_err(lake.url(&lake.relative(o.location.as_ref())));
        let reader = LakeFileReader::new(store.clone(), o.location.clone(), o.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| err(e.to_string()))?;
        let mask =
            parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), [col::TRACK_ID]);
        let batches: Vec<RecordBatch> = builder
            .with_projection(mask)
            .build()
            .map_err(|e| err(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| err(e.to_string()))?;
        for b in batches {
            ids.extend(
                b.column(0)
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string),
            );
        }
    }
    Ok((ids, next))
}

fn part_batch(songs: &[(Payload, String)], vectors: &[[f32; DIM]]) -> RecordBatch {
    let text = |f: &dyn Fn(&Payload) -> &str| -> Arc<dyn Array> {
        Arc::new(StringArray::from_iter_values(
            songs.iter().map(|(p, _)| f(p)),
        ))
    };
    let values = Float32Array::from_iter_values(vectors.iter().flatten().copied());
    let list = FixedSizeListArray::new(
        Arc::new(arrow::datatypes::Field::new(
            "item",
            arrow::datatypes::DataType::Float32,
            false,
        )),
        DIM as i32,
        Arc::new(values),
        None,
    );
    RecordBatch::try_new(
        embedding_schema(DIM),
        vec![
            text(&|p| &p.track_id),
            text(&|p| &p.title),
            text(&|p| &p.artist),
            Arc::new(list),
        ],
    )
    .expect("embedding batch matches its schema")
}

/// The chunk being filled and everything a full one is written with.
struct Chunks<'a> {
    songs: Vec<(Payload, String)>,
    embedder: Arc<Embedder>,
    options: &'a EmbedJobOptions,
    vectors: &'a dyn VectorStore,
    lake: &'a Store,
    part: u64,
    report: EmbedReport,
}

impl Chunks<'_> {
    /// Embeds the chunk, upserts it and writes its Parquet part.
    async fn flush(&mut self) -> Result<(), EmbedJobError> {
        if self.songs.is_empty() {
            return Ok(());
        }
        let texts: Vec<String> = self.songs.iter().map(|(_, t)| t.clone()).collect();
        let (embedder, batch) = (self.embedder.clone(), self.options.batch);
        let (embedded, tokens) = tokio::task::spawn_blocking(move || {
            let ids = texts
                .iter()
                .map(|t| embedder.tokenizer.encode(t))
                .collect::<Result<Vec<_>, _>>()?;
            let tokens: usize = ids.iter().map(Vec::len).sum();
            Ok::<_, EmbedError>((embedder.embed_ids(ids, batch)?, tokens))
        })
        .await
        .map_err(|e| EmbedError::Input(format!("embedding task failed: {e}")))??;
        let points: Vec<Point> = self
            .songs
            .iter()
            .zip(&embedded)
            .map(|((payload, _), v)| Point {
                payload: payload.clone(),
                vector: v.to_vec(),
            })
            .collect();
        for group in points.chunks(256) {
            self.vectors.upsert(group).await?;
        }
        let rel = format!("{EMBEDDINGS_DIR}/part-{:05}.parquet", self.part);
        let err = parquet_err(self.lake.url(&rel));
        let mut bytes = Vec::new();
        let batch = part_batch(&self.songs, &embedded);
        let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), None)
            .map_err(|e| err(e.to_string()))?;
        writer.write(&batch).map_err(|e| err(e.to_string()))?;
        writer.close().map_err(|e| err(e.to_string()))?;
        self.lake
            .object_store()
            .put(&self.lake.path(&rel), PutPayload::from(bytes))
            .await
            .map_err(|e| self.lake.error(&rel, e))?;
        self.part += 1;
        self.report.parts_written += 1;
        self.report.embedded += self.songs.len() as u64;
        self.report.tokens += tokens as u64;
        self.songs.clear();
        Ok(())
    }
}

/// Runs the job; `progress` sees the report after every chunk.
pub async fn run_embed(
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    embedder: Arc<Embedder>,
    lake: &Store,
    options: &EmbedJobOptions,
    progress: &(dyn Fn(&EmbedReport, Duration) + Sync),
) -> Result<EmbedReport, EmbedJobError> {
    let started = Instant::now();
    let (done, part) = embedded_ids(lake).await?;
    let mut chunks = Chunks {
        songs: Vec::with_capacity(options.chunk),
        embedder,
        options,
        vectors,
        lake,
        part,
        report: EmbedReport::default(),
    };
    let limit = options.limit.unwrap_or(u64::MAX);
    let mut songs = std::pin::pin!(songs_with_lyrics_status(
        catalog,
        Some(LyricsStatus::Found),
        1000
    ));
    while let Some(song) = songs.try_next().await? {
        let report = &mut chunks.report;
        report.songs += 1;
        if done.contains(&song.stats.id) {
            report.already_done += 1;
            continue;
        }
        let plain = song.lyrics.as_ref().and_then(|l| l.plain.as_deref());
        let Some(text) = plain.and_then(prepare_lyrics) else {
            report.too_short += 1;
            continue;
        };
        if report.embedded + chunks.songs.len() as u64 >= limit {
            break;
        }
        chunks.songs.push((
            Payload {
                track_id: song.stats.id.clone(),
                title: song.stats.track_name.clone(),
                artist: song.stats.artist_name.clone(),
            },
            text.to_string(),
        ));
        if chunks.songs.len() >= options.chunk.max(1) {
            chunks.flush().await?;
            progress(&chunks.report, started.elapsed());
        }
    }
    chunks.flush().await?;
    progress(&chunks.report, started.elapsed());
    Ok(chunks.report)
}
