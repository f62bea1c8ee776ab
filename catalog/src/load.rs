//! Loading the ETL's Parquet tables (`catalog/songs`, `catalog/users`, listed by the ETL
//! manifest) into a [`Catalog`], in batches, resumable.
//!
//! After every batch the loader saves how many rows of which ETL run (and, for users, which
//! model's vectors) it has loaded as a checkpoint in the catalog itself; a load that stops for
//! any reason resumes after the last saved batch of the same run. Upserts are idempotent, so a
//! batch that was written but not checkpointed is simply written again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMicrosecondType};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use recsys_core::Store;
use recsys_core::manifest::{EtlManifest, TableFiles};
use recsys_core::reader::LakeFileReader;
use recsys_core::schema::{catalog_col as c, col};
use serde::{Deserialize, Serialize};

use crate::{Catalog, CatalogError, LatentVector, SongStats, User, UserStats, micros_to_millis};

/// The current ALS model's user vectors.
#[derive(Debug, Clone, Default)]
pub struct UserVectors {
    pub model_version: String,
    pub by_user: HashMap<String, Vec<f32>>,
}

/// Where a load is, reported after every batch.
#[derive(Debug, Clone, Copy)]
pub struct LoadProgress {
    pub table: &'static str,
    /// Rows of the table loaded so far (including those a resumed load skipped).
    pub rows: u64,
    pub total: u64,
}

/// What one table's load did.
#[derive(Debug, Clone, Copy)]
pub struct TableLoad {
    pub loaded: u64,
    /// Rows skipped because a previous load of the same run had written them.
    pub skipped: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    pub songs: TableLoad,
    pub users: TableLoad,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Checkpoint {
    run_id: String,
    model_version: Option<String>,
    rows: u64,
}

/// The checkpoint key of a table's load.
pub fn checkpoint_key(table: &str) -> String {
    format!("load/{table}")
}

/// Loads the run `manifest` describes into `catalog`, `batch` documents per upsert, user
/// vectors from `vectors`. `on_batch` sees every batch after it is saved; an error from it stops
/// the load there (the progress bar uses it to draw; tests to stop a load half-way).
pub async fn load(
    catalog: &dyn Catalog,
    lake: &Store,
    manifest: &EtlManifest,
    vectors: Option<&UserVectors>,
    batch: usize,
    on_batch: &mut (dyn FnMut(&LoadProgress) -> Result<(), CatalogError> + Send),
) -> Result<LoadReport, CatalogError> {
    let batch = batch.max(1);
    let songs = load_table(
        catalog,
        lake,
        "songs",
        &manifest.songs,
        Checkpoint {
            run_id: manifest.run_id.clone(),
            model_version: None,
            rows: 0,
        },
        batch,
        on_batch,
        async |b: RecordBatch| catalog.upsert_songs(&songs_from(&b)?).await,
    )
    .await?;
    let users = load_table(
        catalog,
        lake,
        "users",
        &manifest.users,
        Checkpoint {
            run_id: manifest.run_id.clone(),
            model_version: vectors.map(|v| v.model_version.clone()),
            rows: 0,
        },
        batch,
        on_batch,
        async |b: RecordBatch| catalog.upsert_users(&users_from(&b, vectors)?).await,
    )
    .await?;
    Ok(LoadReport { songs, users })
}

#[allow(clippy::too_many_arguments)]
async fn load_table(
    catalog: &dyn Catalog,
    lake: &Store,
    table: &'static str,
    files: &TableFiles,
    start: Checkpoint,
    batch: usize,
    on_batch: &mut (dyn FnMut(&LoadProgress) -> Result<(), CatalogError> + Send),
    mut upsert: impl AsyncFnMut(RecordBatch) -> Result<(), CatalogError>,
) -> Result<TableLoad, CatalogError> {
    let started = Instant::now();
    let key = checkpoint_key(table);
    let saved: Option<Checkpoint> = catalog
        .checkpoint(&key)
        .await?
        .and_then(|json| serde_json::from_str(&json).ok());
    let skipped = match saved {
        Some(saved)
            if saved.run_id == start.run_id && saved.model_version == start.model_version =>
        {
            saved.rows.min(files.rows)
        }
        _ => 0,
    };
    if skipped > 0 {
        tracing::info!(table, skipped, total = files.rows, "catalog load: resuming");
    }
    let mut done = skipped;
    let mut to_skip = skipped;
    let store = lake.object_store();
    for file in &files.files {
        let path = lake.path(file);
        let read_err = |reason: String| CatalogError::Read {
            path: lake.url(file),
            reason,
        };
        let meta = store
            .head(&path)
            .await
            .map_err(|e| read_err(e.to_string()))?;
        let reader = LakeFileReader::new(store.clone(), path.clone(), meta.size);
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| read_err(e.to_string()))?;
        let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
        if to_skip >= rows {
            to_skip -= rows;
            continue;
        }
        let mut stream = builder
            .with_batch_size(batch)
            .with_offset(to_skip as usize)
            .build()
            .map_err(|e| read_err(e.to_string()))?;
        to_skip = 0;
        while let Some(b) = stream
            .try_next()
            .await
            .map_err(|e| read_err(e.to_string()))?
        {
            let n = b.num_rows() as u64;
            upsert(b).await?;
            done += n;
            let checkpoint = Checkpoint {
                rows: done,
                ..start.clone()
            };
            catalog
                .set_checkpoint(
                    &key,
                    Some(&serde_json::to_string(&checkpoint).expect("checkpoint serialises")),
                )
                .await?;
            on_batch(&LoadProgress {
                table,
                rows: done,
                total: files.rows,
            })?;
        }
    }
    if done != files.rows {
        return Err(CatalogError::Invalid(format!(
            "{table}: loaded {done} rows, the ETL manifest says {}: was the ETL re-run during the load?",
            files.rows
        )));
    }
    Ok(TableLoad {
        loaded: done - skipped,
        skipped,
        elapsed: started.elapsed(),
    })
}

fn column(b: &RecordBatch, name: &str, to: &DataType) -> Result<ArrayRef, CatalogError> {
    let array = b
        .column_by_name(name)
        .ok_or_else(|| CatalogError::Invalid(format!("catalog table has no column `{name}`")))?;
    arrow::compute::cast(array, to)
        .map_err(|e| CatalogError::Invalid(format!("column `{name}`: {e}")))
}

/// Typed access to a batch's columns by name (whatever string or integer encoding was written).
struct Columns<'a>(&'a RecordBatch);

impl Columns<'_> {
    fn text(&self, name: &str) -> Result<Vec<String>, CatalogError> {
        let a = column(self.0, name, &DataType::Utf8)?;
        Ok(a.as_string::<i32>()
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect())
    }

    fn int(&self, name: &str) -> Result<Vec<i64>, CatalogError> {
        let a = column(self.0, name, &DataType::Int64)?;
        Ok(a.as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.unwrap_or_default())
            .collect())
    }

    fn millis(&self, name: &str) -> Result<Vec<Option<i64>>, CatalogError> {
        let a = column(
            self.0,
            name,
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )?;
        Ok(a.as_primitive::<TimestampMicrosecondType>()
            .iter()
            .map(|v| v.map(micros_to_millis))
            .collect())
    }

    fn float(&self, name: &str) -> Result<Vec<Option<f64>>, CatalogError> {
        let a = column(self.0, name, &DataType::Float64)?;
        Ok(a.as_primitive::<Float64Type>().iter().collect())
    }
}

fn songs_from(b: &RecordBatch) -> Result<Vec<SongStats>, CatalogError> {
    let c = Columns(b);
    let ids = c.text(col::TRACK_ID)?;
    let (titles, artists, artist_ids) = (
        c.text(col::TRACK_NAME)?,
        c.text(col::ARTIST_NAME)?,
        c.text(col::ARTIST_ID)?,
    );
    let (plays, plays_7d, listeners) =
        (c.int(c::PLAYS)?, c.int(c::PLAYS_7D)?, c.int(c::LISTENERS)?);
    let (first, last, duration) = (
        c.millis(c::FIRST_PLAYED)?,
        c.millis(c::LAST_PLAYED)?,
        c.float(c::DURATION_S)?,
    );
    Ok((0..b.num_rows())
        .map(|i| SongStats {
            id: ids[i].clone(),
            track_name: titles[i].clone(),
            artist_name: artists[i].clone(),
            artist_id: artist_ids[i].clone(),
            plays: plays[i],
            plays_7d: plays_7d[i],
            listeners: listeners[i],
            first_played_ms: first[i],
            last_played_ms: last[i],
            duration_s: duration[i],
        })
        .collect())
}

fn users_from(b: &RecordBatch, vectors: Option<&UserVectors>) -> Result<Vec<User>, CatalogError> {
    let c = Columns(b);
    let ids = c.text(col::USER_ID)?;
    let (plays, tracks, artists, days) = (
        c.int(c::PLAYS)?,
        c.int(c::DISTINCT_TRACKS)?,
        c.int(c::DISTINCT_ARTISTS)?,
        c.int(c::ACTIVE_DAYS)?,
    );
    let (first, last) = (c.millis(c::FIRST_SEEN)?, c.millis(c::LAST_SEEN)?);
    Ok((0..b.num_rows())
        .map(|i| User {
            name: None,
            latent: vectors.and_then(|v| {
                v.by_user.get(&ids[i]).map(|vector| LatentVector {
                    model_version: v.model_version.clone(),
                    vector: vector.clone(),
                })
            }),
            stats: UserStats {
                id: ids[i].clone(),
                plays: plays[i],
                distinct_tracks: tracks[i],
                distinct_artists: artists[i],
                first_seen_ms: first[i].unwrap_or_default(),
                last_seen_ms: last[i].unwrap_or_default(),
                active_days: days[i],
            },
        })
        .collect())
}

impl UserVectors {
    /// The vectors of a model's `users.parquet` batches (`user_id`, `factors`).
    pub fn from_batches(
        model_version: &str,
        batches: &[RecordBatch],
    ) -> Result<UserVectors, CatalogError> {
        let mut by_user = HashMap::new();
        for b in batches {
            let ids = Columns(b).text(col::USER_ID)?;
            let factors = b
                .column_by_name("factors")
                .and_then(|a| a.as_fixed_size_list_opt())
                .ok_or_else(|| {
                    CatalogError::Invalid("model users file has no `factors` list column".into())
                })?;
            for (i, id) in ids.into_iter().enumerate() {
                let row = factors.value(i);
                let values = row
                    .as_primitive_opt::<arrow::datatypes::Float32Type>()
                    .ok_or_else(|| CatalogError::Invalid("model factors are not Float32".into()))?;
                by_user.insert(id, values.values().to_vec());
            }
        }
        Ok(UserVectors {
            model_version: model_version.to_string(),
            by_user,
        })
    }
}
