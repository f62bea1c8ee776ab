//! Arrow schemas of the lake's tables and the folder each one lives in.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Folder of the raw TSV input (generated or downloaded).
pub const RAW_DIR: &str = "raw";
/// Folder of cleaned listens, in input order.
pub const CLEAN_DIR: &str = "clean/listens";
/// Folder of rejected input lines, with line number and reason.
pub const REJECTS_DIR: &str = "rejects";
/// Folder of listens sorted by (timestamp, user, track), in time-ranged files.
pub const SORTED_DIR: &str = "sorted/listens";

/// Column names shared by every listen table.
pub mod col {
    pub const USER_ID: &str = "user_id";
    pub const TS: &str = "ts";
    pub const ARTIST_ID: &str = "artist_id";
    pub const ARTIST_NAME: &str = "artist_name";
    pub const TRACK_ID: &str = "track_id";
    pub const TRACK_NAME: &str = "track_name";
}

/// UTC timestamps in microseconds, as every table stores them.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A cleaned listen: ids are never empty (missing MBIDs are replaced by derived ids, see
/// [`crate::ids`]); names are as in the input (possibly empty).
pub fn listen_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(col::USER_ID, DataType::Utf8, false),
            Field::new(col::TS, timestamp_type(), false),
            Field::new(col::ARTIST_ID, DataType::Utf8, false),
            Field::new(col::ARTIST_NAME, DataType::Utf8, false),
            Field::new(col::TRACK_ID, DataType::Utf8, false),
            Field::new(col::TRACK_NAME, DataType::Utf8, false),
        ]))
    });
    SCHEMA.clone()
}

/// A rejected input line: where it was, why, and its bytes (kept verbatim, also as lossy text).
pub fn reject_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new("file", DataType::Utf8, false),
            Field::new("line", DataType::UInt64, false),
            Field::new("reason", DataType::Utf8, false),
            Field::new("raw", DataType::Binary, false),
            Field::new("text", DataType::Utf8, false),
        ]))
    });
    SCHEMA.clone()
}
