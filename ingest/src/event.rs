//! The listening-event contract: one shape for gRPC (`recsys.v1.ListenEvent`), Kafka messages
//! (JSON, key = `user_id`) and the lake (`events/`, [`recsys_core::schema::event_schema`]).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, AsArray, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use recsys_core::schema::{col, event_schema};
use recsys_core::time::{MICROS_PER_DAY, SANE_MIN_MICROS};
use recsys_proto::v1;
use serde::{Deserialize, Serialize};

/// What the listener did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Part of the track was played.
    Listen,
    /// The track was played to the end.
    Complete,
    /// The listener moved on early.
    Skip,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Listen => "listen",
            Action::Complete => "complete",
            Action::Skip => "skip",
        }
    }
}

impl FromStr for Action {
    type Err = InvalidEvent;
    fn from_str(s: &str) -> Result<Action, InvalidEvent> {
        match s {
            "listen" => Ok(Action::Listen),
            "complete" => Ok(Action::Complete),
            "skip" => Ok(Action::Skip),
            other => Err(InvalidEvent::new(
                "action",
                format!("`{other}` is not one of listen, complete, skip"),
            )),
        }
    }
}

/// One listening event. `timestamp` is UTC microseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub user_id: String,
    pub track_id: String,
    pub artist_id: String,
    pub timestamp: i64,
    pub action: Action,
    pub source: String,
    #[serde(default)]
    pub duration_s: f64,
    #[serde(default)]
    pub total_duration_s: f64,
}

/// Why an event was refused, naming the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidEvent {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidEvent {
    fn new(field: &'static str, reason: impl Into<String>) -> InvalidEvent {
        InvalidEvent {
            field,
            reason: reason.into(),
        }
    }
}

/// The latest accepted timestamp: one day ahead of this machine's clock (skewed clients).
fn latest_sane_micros() -> i64 {
    recsys_core::time::now_micros() + MICROS_PER_DAY
}

impl Event {
    /// Checks the contract (see [`EventRef::validate`]).
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        EventRef {
            user_id: Cow::Borrowed(&self.user_id),
            track_id: Cow::Borrowed(&self.track_id),
            artist_id: Cow::Borrowed(&self.artist_id),
            timestamp: self.timestamp,
            action: self.action,
            source: Cow::Borrowed(&self.source),
            duration_s: self.duration_s,
            total_duration_s: self.total_duration_s,
        }
        .validate()
    }
}

/// An event read from a Kafka message without copying its strings (unless they hold escapes).
#[derive(Debug, Deserialize)]
pub struct EventRef<'a> {
    #[serde(borrow)]
    pub user_id: Cow<'a, str>,
    #[serde(borrow)]
    pub track_id: Cow<'a, str>,
    #[serde(borrow)]
    pub artist_id: Cow<'a, str>,
    pub timestamp: i64,
    pub action: Action,
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    #[serde(default)]
    pub duration_s: f64,
    #[serde(default)]
    pub total_duration_s: f64,
}

impl<'a> EventRef<'a> {
    /// Parses and validates a Kafka message value.
    pub fn parse(bytes: &'a [u8]) -> Result<EventRef<'a>, InvalidEvent> {
        let event: EventRef<'a> = serde_json::from_slice(bytes)
            .map_err(|e| InvalidEvent::new("message", format!("not an event as JSON: {e}")))?;
        event.validate()?;
        Ok(event)
    }

    /// Checks the contract: non-empty ids and source, a timestamp between 1990 and tomorrow,
    /// finite non-negative durations with `duration_s ≤ total_duration_s` when the total is
    /// known. The error names the first field that breaks it.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        for (field, value) in [
            ("user_id", &self.user_id),
            ("track_id", &self.track_id),
            ("artist_id", &self.artist_id),
            ("source", &self.source),
        ] {
            if value.trim().is_empty() {
                return Err(InvalidEvent::new(field, "must not be empty"));
            }
        }
        let latest = latest_sane_micros();
        if !(SANE_MIN_MICROS..latest).contains(&self.timestamp) {
            return Err(InvalidEvent::new(
                "timestamp",
                format!(
                    "{} µs is outside 1990-01-01 .. tomorrow (UTC microseconds since the epoch)",
                    self.timestamp
                ),
            ));
        }
        for (field, value) in [
            ("duration_s", self.duration_s),
            ("total_duration_s", self.total_duration_s),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(InvalidEvent::new(
                    field,
                    format!("{value} is not a finite number ≥ 0"),
                ));
            }
        }
        if self.total_duration_s > 0.0 && self.duration_s > self.total_duration_s {
            return Err(InvalidEvent::new(
                "duration_s",
                format!(
                    "{} exceeds total_duration_s {}",
                    self.duration_s, self.total_duration_s
                ),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} @{}",
            self.user_id,
            self.action.as_str(),
            self.track_id,
            self.timestamp
        )
    }
}

impl TryFrom<v1::ListenEvent> for Event {
    type Error = InvalidEvent;
    /// Converts and validates a gRPC event.
    fn try_from(e: v1::ListenEvent) -> Result<Event, InvalidEvent> {
        let action = match v1::Action::try_from(e.action) {
            Ok(v1::Action::Listen) => Action::Listen,
            Ok(v1::Action::Complete) => Action::Complete,
            Ok(v1::Action::Skip) => Action::Skip,
            Ok(v1::Action::Unspecified) => {
                return Err(InvalidEvent::new(
                    "action",
                    "must be set (listen, complete or skip)",
                ));
            }
            Err(_) => {
                return Err(InvalidEvent::new(
                    "action",
                    format!("unknown value {}", e.action),
                ));
            }
        };
        let event = Event {
            user_id: e.user_id,
            track_id: e.track_id,
            artist_id: e.artist_id,
            timestamp: e.timestamp_us,
            action,
            source: e.source,
            duration_s: e.duration_s,
            total_duration_s: e.total_duration_s,
        };
        event.validate()?;
        Ok(event)
    }
}

impl From<&Event> for v1::ListenEvent {
    fn from(e: &Event) -> v1::ListenEvent {
        v1::ListenEvent {
            user_id: e.user_id.clone(),
            track_id: e.track_id.clone(),
            artist_id: e.artist_id.clone(),
            timestamp_us: e.timestamp,
            action: match e.action {
                Action::Listen => v1::Action::Listen,
                Action::Complete => v1::Action::Complete,
                Action::Skip => v1::Action::Skip,
            } as i32,
            source: e.source.clone(),
            duration_s: e.duration_s,
            total_duration_s: e.total_duration_s,
        }
    }
}

/// Builds [`event_schema`] batches row by row (the Kafka and gRPC paths).
pub struct EventBuilder {
    user: StringBuilder,
    track: StringBuilder,
    artist: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    action: StringBuilder,
    source: StringBuilder,
    duration: Float64Builder,
    total: Float64Builder,
    partition: Int32Builder,
    offset: Int64Builder,
}

impl Default for EventBuilder {
    fn default() -> Self {
        EventBuilder {
            user: StringBuilder::new(),
            track: StringBuilder::new(),
            artist: StringBuilder::new(),
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            action: StringBuilder::new(),
            source: StringBuilder::new(),
            duration: Float64Builder::new(),
            total: Float64Builder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
        }
    }
}

impl EventBuilder {
    pub fn push(&mut self, e: &Event, partition: i32, offset: i64) {
        self.push_row(
            [&e.user_id, &e.track_id, &e.artist_id, &e.source],
            e.timestamp,
            e.action,
            [e.duration_s, e.total_duration_s],
            [partition as i64, offset],
        );
    }

    pub fn push_ref(&mut self, e: &EventRef<'_>, partition: i32, offset: i64) {
        self.push_row(
            [&e.user_id, &e.track_id, &e.artist_id, &e.source],
            e.timestamp,
            e.action,
            [e.duration_s, e.total_duration_s],
            [partition as i64, offset],
        );
    }

    /// One row: [user, track, artist, source], timestamp, action, [duration, total],
    /// [partition, offset].
    fn push_row(
        &mut self,
        [user, track, artist, source]: [&str; 4],
        timestamp: i64,
        action: Action,
        [duration, total]: [f64; 2],
        [partition, offset]: [i64; 2],
    ) {
        self.user.append_value(user);
        self.track.append_value(track);
        self.artist.append_value(artist);
        self.ts.append_value(timestamp);
        self.action.append_value(action.as_str());
        self.source.append_value(source);
        self.duration.append_value(duration);
        self.total.append_value(total);
        self.partition.append_value(partition as i32);
        self.offset.append_value(offset);
    }

    pub fn len(&self) -> usize {
        self.offset.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Offset of the last row pushed and not yet finished.
    pub fn last_offset(&self) -> Option<i64> {
        self.offset.values_slice().last().copied()
    }

    /// The rows pushed so far, leaving the builder empty.
    pub fn finish(&mut self) -> RecordBatch {
        RecordBatch::try_new(
            event_schema(),
            vec![
                Arc::new(self.user.finish()),
                Arc::new(self.track.finish()),
                Arc::new(self.artist.finish()),
                Arc::new(self.ts.finish()),
                Arc::new(self.action.finish()),
                Arc::new(self.source.finish()),
                Arc::new(self.duration.finish()),
                Arc::new(self.total.finish()),
                Arc::new(self.partition.finish()),
                Arc::new(self.offset.finish()),
            ],
        )
        .expect("builders match the event schema")
    }
}

/// Typed access to the columns of an [`event_schema`] batch.
pub struct EventColumns<'a> {
    batch: &'a RecordBatch,
}

impl<'a> EventColumns<'a> {
    pub fn new(batch: &'a RecordBatch) -> EventColumns<'a> {
        EventColumns { batch }
    }

    fn str(&self, name: &str, row: usize) -> String {
        self.batch
            .column_by_name(name)
            .expect("event schema")
            .as_string::<i32>()
            .value(row)
            .to_string()
    }

    fn f64(&self, name: &str, row: usize) -> f64 {
        self.batch
            .column_by_name(name)
            .expect("event schema")
            .as_primitive::<Float64Type>()
            .value(row)
    }

    pub fn timestamps(&self) -> &'a [i64] {
        self.batch
            .column_by_name(col::TS)
            .expect("event schema")
            .as_primitive::<TimestampMicrosecondType>()
            .values()
    }

    pub fn offsets(&self) -> &'a [i64] {
        self.batch
            .column_by_name(col::LOG_OFFSET)
            .expect("event schema")
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values()
    }

    /// Row `row` as an event (actions in the lake are always valid: they were validated on entry).
    pub fn event(&self, row: usize) -> Event {
        Event {
            user_id: self.str(col::USER_ID, row),
            track_id: self.str(col::TRACK_ID, row),
            artist_id: self.str(col::ARTIST_ID, row),
            timestamp: self.timestamps()[row],
            action: self.str(col::ACTION, row).parse().unwrap_or(Action::Listen),
            source: self.str(col::SOURCE, row),
            duration_s: self.f64(col::DURATION_S, row),
            total_duration_s: self.f64(col::TOTAL_DURATION_S, row),
        }
    }

    pub fn len(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> Event {
        Event {
            user_id: "user_000001".into(),
            track_id: "t1".into(),
            artist_id: "a1".into(),
            timestamp: 1_200_000_000_000_000,
            action: Action::Complete,
            source: "app".into(),
            duration_s: 100.0,
            total_duration_s: 200.0,
        }
    }

    #[test]
    fn every_invalid_field_is_named() {
        assert_eq!(good().validate(), Ok(()));
        type Breaker = fn(&mut Event);
        let cases: Vec<(&str, Breaker)> = vec![
            ("user_id", |e| e.user_id.clear()),
            ("track_id", |e| e.track_id = " ".into()),
            ("artist_id", |e| e.artist_id.clear()),
            ("source", |e| e.source.clear()),
            ("timestamp", |e| e.timestamp = 0),
            ("timestamp", |e| e.timestamp = i64::MAX),
            ("duration_s", |e| e.duration_s = -1.0),
            ("duration_s", |e| e.duration_s = f64::NAN),
            ("total_duration_s", |e| e.total_duration_s = -0.5),
            ("duration_s", |e| e.duration_s = 300.0),
        ];
        for (field, break_it) in cases {
            let mut e = good();
            break_it(&mut e);
            assert_eq!(e.validate().unwrap_err().field, field, "{e:?}");
        }
        let mut unknown_total = good();
        unknown_total.total_duration_s = 0.0;
        assert_eq!(unknown_total.validate(), Ok(()));
    }

    #[test]
    fn json_round_trip_and_errors() {
        let e = good();
        let json = serde_json::to_vec(&e).unwrap();
        let mut b = EventBuilder::default();
        b.push_ref(&EventRef::parse(&json).unwrap(), 0, 0);
        assert_eq!(EventColumns::new(&b.finish()).event(0), e);
        let text = String::from_utf8(json).unwrap();
        assert!(text.contains(r#""action":"complete""#), "{text}");
        let bad = text.replace("complete", "pause");
        assert_eq!(
            EventRef::parse(bad.as_bytes()).unwrap_err().field,
            "message"
        );
        assert_eq!(EventRef::parse(b"{").unwrap_err().field, "message");
        let blank = text.replace(r#""source":"app""#, r#""source":" ""#);
        assert_eq!(
            EventRef::parse(blank.as_bytes()).unwrap_err().field,
            "source"
        );
    }

    #[test]
    fn proto_conversion_validates_action() {
        let mut p = v1::ListenEvent::from(&good());
        assert_eq!(Event::try_from(p.clone()).unwrap(), good());
        p.action = 0;
        assert_eq!(Event::try_from(p.clone()).unwrap_err().field, "action");
        p.action = 42;
        assert_eq!(Event::try_from(p).unwrap_err().field, "action");
    }

    #[test]
    fn builder_round_trip() {
        let mut b = EventBuilder::default();
        b.push(&good(), 2, 17);
        let batch = b.finish();
        let cols = EventColumns::new(&batch);
        assert_eq!(cols.event(0), good());
        assert_eq!(cols.offsets(), &[17]);
        assert!(b.is_empty());
    }
}
