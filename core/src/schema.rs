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

/// Folder of streamed listening events, partitioned as `date=YYYY-MM-DD/`.
pub const EVENTS_DIR: &str = "events";

/// Column names shared by every listen table.
pub mod col {
    pub const USER_ID: &str = "user_id";
    pub const TS: &str = "ts";
    pub const ARTIST_ID: &str = "artist_id";
    pub const ARTIST_NAME: &str = "artist_name";
    pub const TRACK_ID: &str = "track_id";
    pub const TRACK_NAME: &str = "track_name";
    pub const ACTION: &str = "action";
    pub const SOURCE: &str = "source";
    pub const DURATION_S: &str = "duration_s";
    pub const TOTAL_DURATION_S: &str = "total_duration_s";
    /// The event log partition (Kafka partition; 0 for the embedded log).
    pub const LOG_PARTITION: &str = "log_partition";
    /// The event's offset in its log partition: with `log_partition`, a unique key.
    pub const LOG_OFFSET: &str = "log_offset";
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

/// A listening event as streamed (`events/`): the event contract plus where it sat in the log.
/// `action` is `listen | complete | skip`; durations are seconds (0 = unknown).
pub fn event_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(col::USER_ID, DataType::Utf8, false),
            Field::new(col::TRACK_ID, DataType::Utf8, false),
            Field::new(col::ARTIST_ID, DataType::Utf8, false),
            Field::new(col::TS, timestamp_type(), false),
            Field::new(col::ACTION, DataType::Utf8, false),
            Field::new(col::SOURCE, DataType::Utf8, false),
            Field::new(col::DURATION_S, DataType::Float64, false),
            Field::new(col::TOTAL_DURATION_S, DataType::Float64, false),
            Field::new(col::LOG_PARTITION, DataType::Int32, false),
            Field::new(col::LOG_OFFSET, DataType::Int64, false),
        ]))
    });
    SCHEMA.clone()
}

/// Folder of the song master data written by the ETL (one row per track id): the catalog's
/// source of truth in the lake.
pub const CATALOG_SONGS_DIR: &str = "catalog/songs";
/// Folder of the user master data written by the ETL (one row per user id).
pub const CATALOG_USERS_DIR: &str = "catalog/users";

/// Column names of the catalog tables.
pub mod catalog_col {
    pub const PLAYS: &str = "plays";
    pub const PLAYS_7D: &str = "plays_7d";
    pub const LISTENERS: &str = "listeners";
    pub const FIRST_PLAYED: &str = "first_played";
    pub const LAST_PLAYED: &str = "last_played";
    pub const DURATION_S: &str = "duration_s";
    pub const DISTINCT_TRACKS: &str = "distinct_tracks";
    pub const DISTINCT_ARTISTS: &str = "distinct_artists";
    pub const FIRST_SEEN: &str = "first_seen";
    pub const LAST_SEEN: &str = "last_seen";
    pub const ACTIVE_DAYS: &str = "active_days";
}

/// A song of the catalog as the ETL writes it: names, play statistics and the duration when
/// known (from app events; null otherwise).
pub fn song_schema() -> SchemaRef {
    use catalog_col as c;
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(col::TRACK_ID, DataType::Utf8, false),
            Field::new(col::TRACK_NAME, DataType::Utf8, false),
            Field::new(col::ARTIST_NAME, DataType::Utf8, false),
            Field::new(col::ARTIST_ID, DataType::Utf8, false),
            Field::new(c::PLAYS, DataType::Int64, false),
            Field::new(c::PLAYS_7D, DataType::Int64, false),
            Field::new(c::LISTENERS, DataType::Int64, false),
            Field::new(c::FIRST_PLAYED, timestamp_type(), true),
            Field::new(c::LAST_PLAYED, timestamp_type(), true),
            Field::new(c::DURATION_S, DataType::Float64, true),
        ]))
    });
    SCHEMA.clone()
}

/// A user of the catalog as the ETL writes it: listening statistics.
pub fn user_schema() -> SchemaRef {
    use catalog_col as c;
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(col::USER_ID, DataType::Utf8, false),
            Field::new(c::PLAYS, DataType::Int64, false),
            Field::new(c::DISTINCT_TRACKS, DataType::Int64, false),
            Field::new(c::DISTINCT_ARTISTS, DataType::Int64, false),
            Field::new(c::FIRST_SEEN, timestamp_type(), false),
            Field::new(c::LAST_SEEN, timestamp_type(), false),
            Field::new(c::ACTIVE_DAYS, DataType::Int64, false),
        ]))
    });
    SCHEMA.clone()
}

/// Folder of the lyrics embeddings written by `recsys submit embed` (one row per song).
pub const EMBEDDINGS_DIR: &str = "embeddings/lyrics";

/// A song's lyrics embedding: track id, title, artist and the `dim`-d L2-normalised vector.
pub fn embedding_schema(dim: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(col::TRACK_ID, DataType::Utf8, false),
        Field::new(col::TRACK_NAME, DataType::Utf8, false),
        Field::new(col::ARTIST_NAME, DataType::Utf8, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(
                Arc::new(Field::new("item", DataType::Float32, false)),
                dim as i32,
            ),
            false,
        ),
    ]))
}
