//! `recsys submit embed`: every catalog song with lyrics gets a MiniLM embedding, in the vector
//! store and in Parquet (`embeddings/lyrics/part-NNNNN.parquet`). This side picks the songs and
//! writes them as shards (`embeddings/lyrics-shards/shard-NNNNN.parquet`); a [`ShardRunner`]
//! (the batch job `EmbedExec` on the cluster) turns shards into parts, a wave of shards per job;
//! then each part's vectors go to the vector store and its shard is deleted.
//!
//! Resumable: songs already in a part are skipped. A shard outlives its part only until the
//! part's vectors are stored, so a run that finds a shard whose part exists stores that part's
//! vectors first (upserts are idempotent); a crash costs at most one wave.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use recsys_catalog::{Catalog, CatalogError, LyricsStatus, songs_with_lyrics_status};
use recsys_core::reader::LakeFileReader;
use recsys_core::schema::{EMBEDDINGS_DIR, col};
use recsys_core::{Store, StoreError};
use recsys_vectors::{Payload, Point, VectorError, VectorStore};

use crate::EmbedError;

/// Where the shards wait for their task (beside, not inside, the parts' folder).
pub const SHARDS_DIR: &str = "embeddings/lyrics-shards";

/// Lyrics shorter than this (after trimming) are not embedded, as in the seed.
pub const MIN_LYRICS_CHARS: usize = 50;
/// Lyrics are cut to their first this many characters, as in the seed.
pub const MAX_LYRICS_CHARS: usize = 5000;

/// The text the seed embeds for these lyrics: `None` when too short, else the first
/// [`MAX_LYRICS_CHARS`] characters.
pub fn prepare_lyrics(lyrics: &str) -> Option<&str> {
    if lyrics.trim().chars().count() < MIN_LYRICS_CHARS {
        return None;
    }
    Some(match lyrics.char_indices().nth(MAX_LYRICS_CHARS) {
        Some((cut, _)) => &lyrics[..cut],
        None => lyrics,
    })
}

#[derive(Debug, Clone)]
pub struct EmbedJobOptions {
    /// Texts per forward pass at most (passes are also capped by tokens).
    pub batch: usize,
    /// Songs per shard (one task, one Parquet part, vector-store writes of 256).
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
    /// Of those, stored again from their parts because the vector store lacked them.
    pub restored: u64,
    pub parts_written: u64,
    pub tokens: u64,
}

impl EmbedReport {
    /// "N already embedded", with how many of them were stored again when any were.
    pub fn earlier(&self) -> String {
        match self.restored {
            0 => format!("{} already embedded", self.already_done),
            n => format!(
                "{} already embedded ({n} stored again in the vector store)",
                self.already_done
            ),
        }
    }
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
    /// The job that embeds shards failed.
    #[error("embedding shards: {0}")]
    Runner(String),
}

fn parquet_err(location: String) -> impl Fn(String) -> EmbedJobError {
    move |reason| EmbedJobError::Parquet {
        location: location.clone(),
        reason,
    }
}

/// Turns shards into parts: `SHARDS_DIR/shard-N.parquet` (track id, title, artist, text) into
/// `EMBEDDINGS_DIR/part-N.parquet`, for every `N` of a wave.
#[async_trait]
pub trait ShardRunner: Send + Sync {
    /// Shards per wave: enough to keep every task slot busy.
    fn wave(&self) -> usize;
    /// Embeds `shards`; the tokens embedded.
    async fn embed(&self, shards: &[u64]) -> Result<u64, EmbedJobError>;
}

/// `<dir>/<prefix>NNNNN.parquet` → NNNNN.
fn numbered(file: &str, prefix: &str) -> Option<u64> {
    file.strip_prefix(prefix)?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// Track ids already in `embeddings/lyrics/`, and the numbers of its parts.
pub async fn embedded_ids(lake: &Store) -> Result<(HashSet<String>, Vec<u64>), EmbedJobError> {
    let store = lake.object_store();
    let objects: Vec<_> = store
        .list(Some(&lake.path(EMBEDDINGS_DIR)))
        .try_collect()
        .await
        .map_err(|e| lake.error(EMBEDDINGS_DIR, e))?;
    let mut ids = HashSet::new();
    let mut parts = Vec::new();
    for o in objects {
        let Some(n) = o.location.filename().and_then(|f| numbered(f, "part-")) else {
            continue;
        };
        parts.push(n);
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
    Ok((ids, parts))
}

/// The songs of a part, with their vectors, as vector-store points.
async fn part_points(lake: &Store, shard: u64) -> Result<Vec<Point>, EmbedJobError> {
    let rel = format!("{EMBEDDINGS_DIR}/part-{shard:05}.parquet");
    let err = parquet_err(lake.url(&rel));
    let bytes = lake
        .object_store()
        .get(&lake.path(&rel))
        .await
        .map_err(|e| lake.error(&rel, e))?
        .bytes()
        .await
        .map_err(|e| lake.error(&rel, e))?;
    let batches = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| err(e.to_string()))?
        .build()
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<RecordBatch>, _>>()
        .map_err(|e| err(e.to_string()))?;
    let mut points = Vec::new();
    for b in batches {
        let text = |name: &str| -> Result<&StringArray, EmbedJobError> {
            b.column_by_name(name)
                .map(|c| c.as_string::<i32>())
                .ok_or_else(|| err(format!("no `{name}` column")))
        };
        let (ids, titles, artists) = (
            text(col::TRACK_ID)?,
            text(col::TRACK_NAME)?,
            text(col::ARTIST_NAME)?,
        );
        let vectors = b
            .column_by_name("embedding")
            .ok_or_else(|| err("no `embedding` column".into()))?
            .as_fixed_size_list();
        for r in 0..b.num_rows() {
            let v = vectors.value(r);
            points.push(Point {
                payload: Payload {
                    track_id: ids.value(r).to_string(),
                    title: titles.value(r).to_string(),
                    artist: artists.value(r).to_string(),
                },
                vector: v
                    .as_primitive::<arrow::datatypes::Float32Type>()
                    .values()
                    .to_vec(),
            });
        }
    }
    Ok(points)
}

/// Stores a part's vectors, then deletes its shard: from here on the part alone says "done".
async fn store_part(
    lake: &Store,
    vectors: &dyn VectorStore,
    shard: u64,
) -> Result<u64, EmbedJobError> {
    let points = part_points(lake, shard).await?;
    for group in points.chunks(256) {
        vectors.upsert(group).await?;
    }
    let rel = format!("{SHARDS_DIR}/shard-{shard:05}.parquet");
    lake.object_store()
        .delete(&lake.path(&rel))
        .await
        .map_err(|e| lake.error(&rel, e))?;
    Ok(points.len() as u64)
}

/// Stores again, from the parts, the vectors of `songs` (embedded earlier and still in the
/// catalog with lyrics) when the vector store holds fewer points than there are such songs: a new
/// or emptied store (Qdrant switched on for a lake embedded before, a collection dropped). Songs
/// clean & sync removed are not among `songs`, so they stay removed. Returns how many.
async fn restore_missing(
    lake: &Store,
    vectors: &dyn VectorStore,
    parts: &[u64],
    songs: &HashSet<String>,
) -> Result<u64, EmbedJobError> {
    if vectors.count().await? >= songs.len() as u64 {
        return Ok(0);
    }
    let mut restored = 0;
    for &n in parts {
        let mut points = part_points(lake, n).await?;
        points.retain(|p| songs.contains(&p.payload.track_id));
        for group in points.chunks(256) {
            vectors.upsert(group).await?;
        }
        restored += points.len() as u64;
    }
    tracing::info!(
        restored,
        store = %vectors.describe(),
        "embed: stored again the vectors of earlier parts that the store lacked"
    );
    Ok(restored)
}

/// Shards an earlier run left: those whose part exists get their vectors stored; the others
/// are deleted (their songs are picked again).
async fn finish_earlier_run(lake: &Store, vectors: &dyn VectorStore) -> Result<(), EmbedJobError> {
    let store = lake.object_store();
    let shards: Vec<_> = store
        .list(Some(&lake.path(SHARDS_DIR)))
        .try_collect()
        .await
        .map_err(|e| lake.error(SHARDS_DIR, e))?;
    for shard in shards {
        let Some(n) = shard
            .location
            .filename()
            .and_then(|f| numbered(f, "shard-"))
        else {
            continue;
        };
        let part = lake.path(&format!("{EMBEDDINGS_DIR}/part-{n:05}.parquet"));
        match store.head(&part).await {
            Ok(_) => {
                let stored = store_part(lake, vectors, n).await?;
                tracing::info!(
                    shard = n,
                    songs = stored,
                    "embed: stored the vectors of an earlier run's part"
                );
            }
            Err(object_store::Error::NotFound { .. }) => {
                store
                    .delete(&shard.location)
                    .await
                    .map_err(|e| lake.error(SHARDS_DIR, e))?;
            }
            Err(e) => return Err(lake.error(&lake.relative(part.as_ref()), e).into()),
        }
    }
    Ok(())
}

/// Writes shard `shard` of `songs` (payload and text) to `SHARDS_DIR`.
pub async fn write_shard(
    lake: &Store,
    shard: u64,
    songs: &[(Payload, String)],
) -> Result<(), EmbedJobError> {
    let rel = format!("{SHARDS_DIR}/shard-{shard:05}.parquet");
    let err = parquet_err(lake.url(&rel));
    let column = |f: &dyn Fn(&(Payload, String)) -> &str| -> Arc<dyn Array> {
        Arc::new(StringArray::from_iter_values(songs.iter().map(f)))
    };
    let schema = Arc::new(arrow::datatypes::Schema::new(
        [col::TRACK_ID, col::TRACK_NAME, col::ARTIST_NAME, "text"]
            .map(|n| arrow::datatypes::Field::new(n, arrow::datatypes::DataType::Utf8, false))
            .to_vec(),
    ));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            column(&|(p, _)| &p.track_id),
            column(&|(p, _)| &p.title),
            column(&|(p, _)| &p.artist),
            column(&|(_, t)| t),
        ],
    )
    .map_err(|e| err(e.to_string()))?;
    let mut bytes = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut bytes, batch.schema(), None).map_err(|e| err(e.to_string()))?;
    writer.write(&batch).map_err(|e| err(e.to_string()))?;
    writer.close().map_err(|e| err(e.to_string()))?;
    lake.object_store()
        .put(&lake.path(&rel), PutPayload::from(bytes))
        .await
        .map_err(|e| lake.error(&rel, e))?;
    Ok(())
}

/// Runs the step; `progress` sees the report after every wave.
pub async fn run_embed(
    catalog: &dyn Catalog,
    vectors: &dyn VectorStore,
    runner: &dyn ShardRunner,
    lake: &Store,
    options: &EmbedJobOptions,
    progress: &(dyn Fn(&EmbedReport, Duration) + Sync),
) -> Result<EmbedReport, EmbedJobError> {
    let started = Instant::now();
    finish_earlier_run(lake, vectors).await?;
    let (done, parts) = embedded_ids(lake).await?;
    let mut next = parts.iter().max().map_or(0, |n| n + 1);
    let mut kept = HashSet::new();
    let mut report = EmbedReport::default();
    let mut pending: Vec<(Payload, String)> = Vec::new();
    let limit = options.limit.unwrap_or(u64::MAX);
    let mut songs = std::pin::pin!(songs_with_lyrics_status(
        catalog,
        Some(LyricsStatus::Found),
        1000
    ));
    while let Some(song) = songs.try_next().await? {
        report.songs += 1;
        if done.contains(&song.stats.id) {
            report.already_done += 1;
            kept.insert(song.stats.id.clone());
            continue;
        }
        let plain = song.lyrics.as_ref().and_then(|l| l.plain.as_deref());
        let Some(text) = plain.and_then(prepare_lyrics) else {
            report.too_short += 1;
            continue;
        };
        if pending.len() as u64 >= limit {
            break;
        }
        pending.push((
            Payload {
                track_id: song.stats.id.clone(),
                title: song.stats.track_name.clone(),
                artist: song.stats.artist_name.clone(),
            },
            text.to_string(),
        ));
    }
    report.restored = restore_missing(lake, vectors, &parts, &kept).await?;
    let shards: Vec<&[(Payload, String)]> = pending.chunks(options.chunk.max(1)).collect();
    for wave in shards.chunks(runner.wave().max(1)) {
        let numbers: Vec<u64> = (next..next + wave.len() as u64).collect();
        futures::future::try_join_all(
            numbers
                .iter()
                .zip(wave)
                .map(|(&n, songs)| write_shard(lake, n, songs)),
        )
        .await?;
        report.tokens += runner.embed(&numbers).await?;
        for &n in &numbers {
            report.embedded += store_part(lake, vectors, n).await?;
            report.parts_written += 1;
        }
        next += wave.len() as u64;
        progress(&report, started.elapsed());
    }
    progress(&report, started.elapsed());
    Ok(report)
}
