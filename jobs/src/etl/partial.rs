//! Partial rows: what the ETL's middle stages send its last one, which merges them per output
//! file ([`super::write::CatalogWrite`]). A row is one of three [`Kind`]s, keyed by the
//! [`super::id_hash`] of its id; `bucket` is the output file its id belongs to.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, AsArray, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    UInt8Builder, UInt64Builder,
};
use arrow::datatypes::{
    DataType, Field, Float64Type, Int64Type, Schema, SchemaRef, UInt8Type, UInt64Type,
};
use datafusion::common::exec_err;
use datafusion::error::Result;

/// What a partial row holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A user's complete statistics (all plays of a user are merged in one task).
    User = 0,
    /// A track's statistics over the users of one task (users never span tasks, so listeners
    /// add up).
    Track = 1,
    /// How often a track was listened to under one spelling.
    Spelling = 2,
}

/// A track's statistics over some users.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackStats {
    pub plays: i64,
    pub plays_7d: i64,
    pub listeners: i64,
    pub first: i64,
    pub last: i64,
    pub duration: Option<f64>,
}

/// A user's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserStats {
    pub plays: i64,
    pub tracks: i64,
    pub artists: i64,
    pub days: i64,
    pub first: i64,
    pub last: i64,
}

/// `a` and `b` are counts whose meaning depends on the kind: plays and listeners (track),
/// plays and distinct tracks (user), listens (spelling); `c` and `d` are a track's plays of the
/// last 7 days, or a user's distinct artists and active days.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("bucket", DataType::Int64, false),
        Field::new("kind", DataType::UInt8, false),
        Field::new("key", DataType::UInt64, false),
        Field::new("id", DataType::Utf8, true),
        Field::new("track_name", DataType::Utf8, true),
        Field::new("artist_name", DataType::Utf8, true),
        Field::new("artist_id", DataType::Utf8, true),
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, false),
        Field::new("c", DataType::Int64, false),
        Field::new("d", DataType::Int64, false),
        Field::new("first", DataType::Int64, true),
        Field::new("last", DataType::Int64, true),
        Field::new("duration", DataType::Float64, true),
    ]))
}

/// Builds [`schema`] batches.
pub struct PartialRows {
    files: u64,
    bucket: Int64Builder,
    kind: UInt8Builder,
    key: UInt64Builder,
    id: StringBuilder,
    names: [StringBuilder; 3],
    counts: [Int64Builder; 4],
    first: Int64Builder,
    last: Int64Builder,
    duration: Float64Builder,
}

impl PartialRows {
    pub fn new(files: usize) -> Self {
        PartialRows {
            files: files.max(1) as u64,
            bucket: Int64Builder::new(),
            kind: UInt8Builder::new(),
            key: UInt64Builder::new(),
            id: StringBuilder::new(),
            names: Default::default(),
            counts: Default::default(),
            first: Int64Builder::new(),
            last: Int64Builder::new(),
            duration: Float64Builder::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.kind.len()
    }

    fn push(&mut self, kind: Kind, key: u64, id: Option<&str>, counts: [i64; 4]) {
        self.bucket.append_value((key % self.files) as i64);
        self.kind.append_value(kind as u8);
        self.key.append_value(key);
        self.id.append_option(id);
        for (builder, n) in self.counts.iter_mut().zip(counts) {
            builder.append_value(n);
        }
    }

    pub fn push_spelling(&mut self, key: u64, id: &str, names: [&str; 3], n: i64) {
        self.push(Kind::Spelling, key, Some(id), [n, 0, 0, 0]);
        for (builder, name) in self.names.iter_mut().zip(names) {
            builder.append_value(name);
        }
        self.first.append_null();
        self.last.append_null();
        self.duration.append_null();
    }

    pub fn push_track(&mut self, key: u64, id: Option<&str>, s: &TrackStats) {
        self.push(Kind::Track, key, id, [s.plays, s.listeners, s.plays_7d, 0]);
        self.push_times(s.first, s.last, s.duration);
    }

    pub fn push_user(&mut self, key: u64, id: &str, s: &UserStats) {
        self.push(
            Kind::User,
            key,
            Some(id),
            [s.plays, s.tracks, s.artists, s.days],
        );
        self.push_times(s.first, s.last, None);
    }

    fn push_times(&mut self, first: i64, last: i64, duration: Option<f64>) {
        for builder in &mut self.names {
            builder.append_null();
        }
        self.first.append_value(first);
        self.last.append_value(last);
        self.duration.append_option(duration);
    }

    pub fn finish(&mut self) -> Result<RecordBatch> {
        let [n0, n1, n2] = &mut self.names;
        let [c0, c1, c2, c3] = &mut self.counts;
        Ok(RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(self.bucket.finish()),
                Arc::new(self.kind.finish()),
                Arc::new(self.key.finish()),
                Arc::new(self.id.finish()),
                Arc::new(n0.finish()),
                Arc::new(n1.finish()),
                Arc::new(n2.finish()),
                Arc::new(c0.finish()),
                Arc::new(c1.finish()),
                Arc::new(c2.finish()),
                Arc::new(c3.finish()),
                Arc::new(self.first.finish()),
                Arc::new(self.last.finish()),
                Arc::new(self.duration.finish()),
            ],
        )?)
    }
}

/// One partial row, read back.
#[derive(Debug, Clone, Copy)]
pub enum Partial<'a> {
    User {
        id: &'a str,
        stats: UserStats,
    },
    Track {
        id: Option<&'a str>,
        stats: TrackStats,
    },
    Spelling {
        id: &'a str,
        names: [&'a str; 3],
        n: i64,
    },
}

/// The rows of a [`schema`] batch: (bucket, key, row).
pub fn rows(batch: &RecordBatch) -> Result<Vec<(i64, u64, Partial<'_>)>> {
    let int = |i: usize| batch.column(i).as_primitive::<Int64Type>();
    let text = |i: usize| batch.column(i).as_string::<i32>();
    let (bucket, kind, key) = (
        int(0),
        batch.column(1).as_primitive::<UInt8Type>(),
        batch.column(2).as_primitive::<UInt64Type>(),
    );
    let (id, names) = (text(3), [text(4), text(5), text(6)]);
    let counts = [int(7), int(8), int(9), int(10)];
    let (first, last) = (int(11), int(12));
    let duration = batch.column(13).as_primitive::<Float64Type>();
    let mut out = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let c = |i: usize| counts[i].value(r);
        let id = id.is_valid(r).then(|| id.value(r));
        let row = match (kind.value(r), id) {
            (0, Some(id)) => Partial::User {
                id,
                stats: UserStats {
                    plays: c(0),
                    tracks: c(1),
                    artists: c(2),
                    days: c(3),
                    first: first.value(r),
                    last: last.value(r),
                },
            },
            (1, id) => Partial::Track {
                id,
                stats: TrackStats {
                    plays: c(0),
                    listeners: c(1),
                    plays_7d: c(2),
                    first: first.value(r),
                    last: last.value(r),
                    duration: duration.is_valid(r).then(|| duration.value(r)),
                },
            },
            (2, Some(id)) => Partial::Spelling {
                id,
                names: names.map(|n| n.value(r)),
                n: c(0),
            },
            (kind, _) => return exec_err!("bad partial row of kind {kind}"),
        };
        out.push((bucket.value(r), key.value(r), row));
    }
    Ok(out)
}
