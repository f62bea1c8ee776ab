//! Small object-store chores shared by the jobs: listing, clearing and reading Parquet objects.

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::JobError;

/// Every object below `dir`, sorted by path.
pub async fn list(store: &dyn ObjectStore, dir: &Path) -> Result<Vec<ObjectMeta>, JobError> {
    let mut objects: Vec<ObjectMeta> = store.list(Some(dir)).try_collect().await?;
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(objects)
}

/// Deletes every object below `dir` (a job's output is replaced, never mixed with an old run).
pub async fn clear(store: &dyn ObjectStore, dir: &Path) -> Result<usize, JobError> {
    let objects = list(store, dir).await?;
    for o in &objects {
        store.delete(&o.location).await?;
    }
    Ok(objects.len())
}

/// Reads a whole (small) Parquet object: its batches and its key-value metadata.
pub async fn read_parquet(
    store: &dyn ObjectStore,
    path: &Path,
) -> Result<(Vec<RecordBatch>, Vec<(String, String)>), JobError> {
    let bytes: Bytes = store.get(path).await?.bytes().await?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)?;
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let batches = builder.build()?.collect::<Result<Vec<_>, _>>()?;
    Ok((batches, metadata))
}

pub use recsys_core::reader::LakeFileReader;
