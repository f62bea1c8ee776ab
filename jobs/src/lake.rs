//! Small object-store chores shared by the jobs: listing, clearing and reading Parquet objects.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryFutureExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

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

/// Reads Parquet objects of a known size through the lake's object store (ranges and footer).
#[derive(Debug, Clone)]
pub struct LakeFileReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl LakeFileReader {
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, size: u64) -> Self {
        LakeFileReader { store, path, size }
    }
}

fn parquet_error(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for LakeFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        self.store
            .get_range(&self.path, range)
            .map_err(parquet_error)
            .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(parquet_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let size = self.size;
        async move {
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
