//! One Parquet file written to an object store a row group at a time, as `AsyncArrowWriter`
//! does, except that string dictionary columns are encoded from their Arrow dictionaries
//! ([`crate::dict_chunk`]) instead of re-hashing every row. The file's schema is the input's with
//! every dictionary type replaced by its value type, so readers see the lake's plain schema.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use object_store::buffered::BufWriter;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{ArrowColumnWriter, ArrowRowGroupWriterFactory, compute_leaves};
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::errors::Result;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use crate::dict_chunk::DictColumn;

/// `schema` with every dictionary column replaced by its value type.
pub(crate) fn plain_schema(schema: &Schema) -> Schema {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => f.as_ref().clone().with_data_type((**value).clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Schema::new_with_metadata(fields, schema.metadata().clone())
}

pub(crate) struct ParquetFile {
    file: SerializedFileWriter<Vec<u8>>,
    factory: ArrowRowGroupWriterFactory,
    sink: BufWriter,
    /// The file's schema (no dictionaries).
    schema: SchemaRef,
    /// Per leaf column of the file: its encoder if it takes the dictionary path.
    dictionaries: Vec<Option<DictColumn>>,
    /// The current row group's parquet-rs writers, per leaf (those of dictionary leaves stay
    /// unused).
    group: Option<Vec<ArrowColumnWriter>>,
    group_rows: usize,
    row_groups: usize,
    max_group_rows: usize,
}

impl ParquetFile {
    /// A writer of batches of `schema` (dictionary columns allowed) into `sink`.
    pub(crate) fn try_new(
        sink: BufWriter,
        schema: &Schema,
        props: WriterProperties,
    ) -> Result<Self> {
        let file_schema = Arc::new(plain_schema(schema));
        let max_group_rows = props
            .max_row_group_row_count()
            .unwrap_or(1024 * 1024)
            .max(1);
        let (file, factory) = ArrowWriter::try_new(Vec::new(), file_schema.clone(), Some(props))?
            .into_serialized_writer()?;
        let props = file.properties();
        let leaves = file.schema_descr().columns();
        // The dictionary path needs one leaf per field, to know which leaf a column is.
        let flat = leaves.len() == schema.fields().len();
        let dictionaries = leaves
            .iter()
            .enumerate()
            .map(|(i, leaf)| {
                flat.then(|| DictColumn::for_column(schema.field(i).data_type(), leaf, props))
                    .flatten()
            })
            .collect();
        Ok(ParquetFile {
            file,
            factory,
            sink,
            schema: file_schema,
            dictionaries,
            group: None,
            group_rows: 0,
            row_groups: 0,
            max_group_rows,
        })
    }

    pub(crate) async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            let rows = (self.max_group_rows - self.group_rows).min(batch.num_rows() - offset);
            self.encode(&batch.slice(offset, rows))?;
            offset += rows;
            if self.group_rows == self.max_group_rows {
                self.flush().await?;
            }
        }
        Ok(())
    }

    fn encode(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.group.is_none() {
            self.group = Some(self.factory.create_column_writers(self.row_groups)?);
        }
        let writers = self.group.as_mut().expect("set above");
        // Dictionary leaves exist only in flat schemas, where field i is leaf i.
        let mut next = 0;
        for (field, column) in self.schema.fields().iter().zip(batch.columns()) {
            if let Some(dictionary) = &mut self.dictionaries[next] {
                dictionary.push(column.as_ref())?;
                next += 1;
                continue;
            }
            let plain: ArrayRef = match column.data_type() == field.data_type() {
                true => column.clone(),
                false => cast(column, field.data_type())?,
            };
            for leaf in compute_leaves(field, &plain)? {
                writers[next].write(&leaf)?;
                next += 1;
            }
        }
        self.group_rows += batch.num_rows();
        Ok(())
    }

    /// Writes the rows buffered so far as a row group and hands its bytes to the sink.
    async fn flush(&mut self) -> Result<()> {
        let Some(writers) = self.group.take() else {
            return Ok(());
        };
        let mut row_group = self.file.next_row_group()?;
        for (writer, dictionary) in writers.into_iter().zip(&mut self.dictionaries) {
            match dictionary {
                Some(dictionary) => {
                    let (bytes, close) = dictionary.finish_chunk()?;
                    row_group.append_column(&bytes, close)?;
                }
                None => writer.close()?.append_to_row_group(&mut row_group)?,
            }
        }
        row_group.close()?;
        self.row_groups += 1;
        self.group_rows = 0;
        self.drain().await
    }

    async fn drain(&mut self) -> Result<()> {
        self.file.flush()?;
        let bytes = std::mem::take(self.file.inner_mut());
        if !bytes.is_empty() {
            self.sink.write(Bytes::from(bytes)).await?;
        }
        Ok(())
    }

    pub(crate) fn append_key_value_metadata(&mut self, kv: KeyValue) {
        self.file.append_key_value_metadata(kv);
    }

    /// Writes the last row group and the footer, and completes the upload.
    pub(crate) async fn close(mut self) -> Result<()> {
        self.flush().await?;
        self.file.finish()?;
        self.drain().await?;
        self.sink.complete().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, DictionaryArray, Int64Array, StringArray, UInt32Array};
    use arrow::datatypes::UInt32Type;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt};
    use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
    use parquet::basic::{Compression, Encoding, ZstdLevel};

    fn dictionary(keys: Vec<u32>, values: &ArrayRef) -> ArrayRef {
        Arc::new(
            DictionaryArray::<UInt32Type>::try_new(UInt32Array::from(keys), values.clone())
                .unwrap(),
        )
    }

    /// Rows written from dictionaries read back as the same strings, in several row groups and
    /// pages, whether batches share a dictionary or not, next to columns parquet-rs writes.
    #[test]
    fn dictionary_columns_round_trip() {
        let text = || DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8));
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("name", text(), false),
            Field::new("nullable", text(), true),
        ]);
        let shared: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..300).map(|i| format!("value {i} ").repeat(i % 7)),
        ));
        let other: ArrayRef = Arc::new(StringArray::from(vec!["x", "value 1 ", "", "y"]));
        let mut batches = Vec::new();
        let mut expected = Vec::new();
        let mut n = 0i64;
        for b in 0..12u32 {
            let (values, rows) = match b % 3 {
                2 => (&other, 700u32),
                _ => (&shared, 1500),
            };
            let keys: Vec<u32> = (0..rows)
                .map(|r| (r * 7 + b) % values.len() as u32)
                .collect();
            let strings = values.as_string::<i32>();
            expected.extend(keys.iter().map(|&k| strings.value(k as usize).to_string()));
            let count = keys.len() as i64;
            let column = dictionary(keys, values);
            batches.push(
                RecordBatch::try_new(
                    Arc::new(schema.clone()),
                    vec![
                        Arc::new(Int64Array::from_iter_values(n..n + count)),
                        column.clone(),
                        column,
                    ],
                )
                .unwrap(),
            );
            n += count;
        }
        for compression in [
            Compression::UNCOMPRESSED,
            Compression::ZSTD(ZstdLevel::try_new(1).unwrap()),
        ] {
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let path = Path::from("f.parquet");
            let props = WriterProperties::builder()
                .set_compression(compression)
                .set_max_row_group_row_count(Some(5000))
                .set_data_page_row_count_limit(1000)
                .build();
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let bytes = rt.block_on(async {
                let mut file = ParquetFile::try_new(
                    BufWriter::new(store.clone(), path.clone()),
                    &schema,
                    props,
                )
                .unwrap();
                let dictionary_leaves: Vec<bool> =
                    file.dictionaries.iter().map(Option::is_some).collect();
                assert_eq!(dictionary_leaves, [false, true, false]);
                for batch in &batches {
                    file.write(batch).await.unwrap();
                }
                file.close().await.unwrap();
                store.get(&path).await.unwrap().bytes().await.unwrap()
            });
            let reader = ParquetRecordBatchReaderBuilder::try_new_with_options(
                bytes,
                ArrowReaderOptions::new()
                    .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Required),
            )
            .unwrap();
            let metadata = reader.metadata().clone();
            assert_eq!(reader.schema().as_ref(), &plain_schema(&schema));
            assert_eq!(
                metadata.num_row_groups(),
                3,
                "14 800 rows in groups of 5000"
            );
            let chunk = metadata.row_group(0).column(1);
            assert!(chunk.encodings().any(|e| e == Encoding::RLE_DICTIONARY));
            assert_eq!(chunk.compression(), compression);
            let pages = &metadata.offset_index().unwrap()[0][1].page_locations;
            assert_eq!(pages.len(), 5, "1000-row pages in a 5000-row group");
            let mut names = Vec::new();
            let mut nullable = Vec::new();
            let mut numbers = Vec::new();
            for batch in reader.build().unwrap() {
                let batch = batch.unwrap();
                numbers.extend(
                    batch
                        .column(0)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .values()
                        .iter()
                        .copied(),
                );
                let strings = |i: usize| {
                    let column = batch.column(i).as_string::<i32>();
                    column
                        .iter()
                        .map(|v| v.unwrap().to_string())
                        .collect::<Vec<_>>()
                };
                names.extend(strings(1));
                nullable.extend(strings(2));
            }
            assert_eq!(numbers, (0..n).collect::<Vec<_>>());
            assert_eq!(names, expected);
            assert_eq!(nullable, expected);
        }
    }
}
