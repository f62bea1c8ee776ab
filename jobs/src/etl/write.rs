//! The ETL's last stage: the partial rows of some output files (shuffled by file), merged into
//! songs and users and written, one file per table and bucket, rows sorted by id.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::TimestampMicrosecondArray;
use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, StringBuilder, UInt64Builder,
};
use arrow::datatypes::SchemaRef;
use datafusion::common::exec_err;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::StreamExt;
use futures::stream::BoxStream;
use hashbrown::HashMap;
use object_store::path::Path;
use recsys_core::schema::{song_schema, user_schema};
use serde::{Deserialize, Serialize};

use super::partial::{Partial, TrackStats, UserStats, rows};
use super::same_id;
use crate::worklist::{Operator, WorkExec, task_store};
use crate::write::{Payload, write_parquet_file, written_schema};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogWrite {
    pub store_url: String,
    /// Object paths of the two tables' folders.
    pub songs_dir: String,
    pub users_dir: String,
}

pub type CatalogWriteExec = WorkExec<CatalogWrite>;

/// The name of bucket `b`'s file in either table.
pub fn file_name(bucket: i64) -> String {
    format!("part-{bucket:05}.parquet")
}

#[derive(Default)]
struct Song {
    id: Option<String>,
    stats: Option<TrackStats>,
    spellings: HashMap<[String; 3], i64>,
}

#[derive(Default)]
struct Bucket {
    songs: HashMap<u64, Song>,
    users: Vec<(String, UserStats)>,
}

fn add(buckets: &mut BTreeMap<i64, Bucket>, batch: &RecordBatch) -> Result<()> {
    for (bucket, key, row) in rows(batch)? {
        let bucket = buckets.entry(bucket).or_default();
        match row {
            Partial::User { id, stats } => bucket.users.push((id.to_string(), stats)),
            Partial::Track { id, stats } => {
                let song = bucket.songs.entry(key).or_default();
                if let Some(id) = id {
                    same_id(&mut song.id, id, "track")?;
                }
                song.stats = Some(match song.stats {
                    None => stats,
                    Some(s) => TrackStats {
                        plays: s.plays + stats.plays,
                        plays_7d: s.plays_7d + stats.plays_7d,
                        listeners: s.listeners + stats.listeners,
                        first: s.first.min(stats.first),
                        last: s.last.max(stats.last),
                        duration: match (s.duration, stats.duration) {
                            (Some(a), Some(b)) => Some(a.max(b)),
                            (a, b) => a.or(b),
                        },
                    },
                });
            }
            Partial::Spelling { id, names, n } => {
                let song = bucket.songs.entry(key).or_default();
                same_id(&mut song.id, id, "track")?;
                *song.spellings.entry(names.map(str::to_string)).or_default() += n;
            }
        }
    }
    Ok(())
}

fn timestamps(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// A song as written.
struct SongRow {
    id: String,
    /// Title, artist name, artist id.
    names: [String; 3],
    stats: Option<TrackStats>,
}

/// The songs of a bucket, sorted by track id. The most frequent spelling names a track, ties
/// going to the smallest (title, artist, artist id).
fn songs_batch(songs: HashMap<u64, Song>) -> Result<RecordBatch> {
    let mut rows = Vec::with_capacity(songs.len());
    for (key, song) in songs {
        let Some(id) = song.id else {
            return exec_err!("no partial row of track hash {key:#x} carried its id");
        };
        let names = song
            .spellings
            .into_iter()
            .max_by(|(a, m), (b, n)| m.cmp(n).then_with(|| b.cmp(a)))
            .map(|(names, _)| names)
            .unwrap_or_default();
        rows.push(SongRow {
            id,
            names,
            stats: song.stats,
        });
    }
    rows.sort_unstable_by(|a, b| a.id.cmp(&b.id));
    let text = |f: fn(&SongRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let count = |f: fn(&TrackStats) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| r.stats.as_ref().map_or(0, f)),
        ))
    };
    let time = |f: fn(&TrackStats) -> i64| {
        timestamps(rows.iter().map(|r| r.stats.as_ref().map(f)).collect())
    };
    Ok(RecordBatch::try_new(
        song_schema(),
        vec![
            text(|r| &r.id),
            text(|r| &r.names[0]),
            text(|r| &r.names[1]),
            text(|r| &r.names[2]),
            count(|s| s.plays),
            count(|s| s.plays_7d),
            count(|s| s.listeners),
            time(|s| s.first),
            time(|s| s.last),
            Arc::new(Float64Array::from(
                rows.iter()
                    .map(|r| r.stats.and_then(|s| s.duration))
                    .collect::<Vec<_>>(),
            )),
        ],
    )?)
}

/// The users of a bucket, sorted by user id.
fn users_batch(mut users: Vec<(String, UserStats)>) -> Result<RecordBatch> {
    users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = users.windows(2).find(|w| w[0].0 == w[1].0) {
        return exec_err!("user `{}` was merged in two tasks", w[0].0);
    }
    let count = |f: fn(&UserStats) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(users.iter().map(|u| f(&u.1))))
    };
    let time = |f: fn(&UserStats) -> i64| timestamps(users.iter().map(|u| Some(f(&u.1))).collect());
    Ok(RecordBatch::try_new(
        user_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(users.iter().map(|u| &u.0))),
            count(|s| s.plays),
            count(|s| s.tracks),
            count(|s| s.artists),
            time(|s| s.first),
            time(|s| s.last),
            count(|s| s.days),
        ],
    )?)
}

impl Operator for CatalogWrite {
    const NAME: &'static str = "EtlCatalogWriteExec";

    fn output_schema(&self) -> SchemaRef {
        written_schema()
    }

    fn stream(
        self: Arc<Self>,
        mut input: SendableRecordBatchStream,
        context: Arc<TaskContext>,
        metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let store = task_store(&context, &self.store_url)?;
        let written = async move {
            let mut buckets = BTreeMap::new();
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let _timer = metrics.elapsed_compute().timer();
                add(&mut buckets, &batch)?;
            }
            let (mut files, mut counts) = (StringBuilder::new(), UInt64Builder::new());
            for (b, bucket) in buckets {
                let tables = [
                    (
                        &self.songs_dir,
                        song_schema(),
                        bucket.songs.len(),
                        songs_batch(bucket.songs)?,
                    ),
                    (
                        &self.users_dir,
                        user_schema(),
                        bucket.users.len(),
                        users_batch(bucket.users)?,
                    ),
                ];
                for (dir, schema, rows, batch) in tables {
                    if rows == 0 {
                        continue;
                    }
                    let path = Path::from(dir.as_str()).join(file_name(b));
                    write_parquet_file(
                        store.clone(),
                        &path,
                        schema,
                        vec![batch],
                        Payload::Records,
                        vec![],
                    )
                    .await?;
                    files.append_value(path.as_ref());
                    counts.append_value(rows as u64);
                }
            }
            let batch = RecordBatch::try_new(
                written_schema(),
                vec![Arc::new(files.finish()), Arc::new(counts.finish())],
            )?;
            metrics.record_output(batch.num_rows());
            Ok::<_, datafusion::error::DataFusionError>(batch)
        };
        Ok(futures::stream::once(written).boxed())
    }
}
