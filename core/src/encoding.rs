//! Parquet column encodings shared by every writer of the lake.

use arrow::datatypes::{DataType, Schema};
use parquet::basic::Encoding;
use parquet::file::properties::WriterPropertiesBuilder;
use parquet::schema::types::ColumnPath;

/// Integer and timestamp columns get `DELTA_BINARY_PACKED` instead of a dictionary. Timestamps
/// and log offsets are (nearly) unique, so a dictionary of them only costs a hash per value,
/// outgrows its page limit and falls back to plain 8-byte values; sorted or sequential
/// values delta-encode to a few bits each.
pub fn delta_encode_integers(
    mut builder: WriterPropertiesBuilder,
    schema: &Schema,
) -> WriterPropertiesBuilder {
    for field in schema.fields() {
        if matches!(
            field.data_type(),
            DataType::Int64 | DataType::Timestamp(_, _)
        ) {
            let path = ColumnPath::from(field.name().as_str());
            builder = builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
    }
    builder
}
