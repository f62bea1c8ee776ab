//! The ETL's second stage: the plays of a share of the users (shuffled by user), merged. A user's
//! statistics are complete here; a track's are complete over these users, and since no user
//! spans two tasks, the last stage only adds them up (listeners included).

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type, SchemaRef, UInt64Type};
use datafusion::common::exec_err;
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::StreamExt;
use futures::stream::BoxStream;
use hashbrown::HashMap;
use recsys_core::time::MICROS_PER_DAY;
use serde::{Deserialize, Serialize};

use super::partial::{PartialRows, TrackStats, UserStats};
use super::{emit_when_done, same_id};
use crate::worklist::{Operator, WorkExec};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMerge {
    /// Plays at or after this time (µs) count in `plays_7d`.
    pub since: i64,
    /// Output files per table.
    pub files: usize,
}

pub type UserMergeExec = WorkExec<UserMerge>;

struct User {
    key: u64,
    id: Option<String>,
    stats: UserStats,
}

struct Track {
    key: u64,
    id: Option<String>,
    stats: TrackStats,
}

/// Dense indexes of ids in first-seen order.
#[derive(Default)]
struct Dense(HashMap<u64, u32>);

impl Dense {
    /// The index of `key`, and whether it is new.
    fn index(&mut self, key: u64) -> (u32, bool) {
        let next = self.0.len() as u32;
        let index = *self.0.entry(key).or_insert(next);
        (index, index == next)
    }
}

/// Pairs of dense indexes (or of an index and a day), packed in one word; sorted at the end to
/// count the distinct ones (cheaper than a hash set probed for every play).
#[derive(Default)]
struct Pairs(Vec<u64>);

impl Pairs {
    fn push(&mut self, a: u32, b: u32) {
        let pair = u64::from(a) << 32 | u64::from(b);
        // A listener's plays often repeat the last pair (an album, a day).
        if self.0.last() != Some(&pair) {
            self.0.push(pair);
        }
    }

    /// The distinct pairs, as (first, second).
    fn distinct(mut self) -> impl Iterator<Item = (usize, usize)> {
        self.0.sort_unstable();
        self.0.dedup();
        self.0
            .into_iter()
            .map(|p| ((p >> 32) as usize, p as u32 as usize))
    }
}

#[derive(Default)]
struct Merge {
    user_index: Dense,
    users: Vec<User>,
    track_index: Dense,
    tracks: Vec<Track>,
    artist_index: Dense,
    artists: Vec<Option<String>>,
    user_tracks: Pairs,
    user_artists: Pairs,
    user_days: Pairs,
}

impl Merge {
    fn add(&mut self, batch: &RecordBatch, since: i64) -> Result<()> {
        let hash = |i: usize| batch.column(i).as_primitive::<UInt64Type>().values();
        let (users, tracks, artists) = (hash(0), hash(1), hash(2));
        let ts = batch.column(3).as_primitive::<Int64Type>().values();
        let total = batch.column(4).as_primitive::<Float64Type>();
        let text = |i: usize| batch.column(i).as_string::<i32>();
        let (user_id, track_id, artist_id) = (text(5), text(6), text(7));
        for r in 0..batch.num_rows() {
            let ts = ts[r];
            let (u, new) = self.user_index.index(users[r]);
            if new {
                self.users.push(User {
                    key: users[r],
                    id: None,
                    stats: UserStats {
                        plays: 0,
                        tracks: 0,
                        artists: 0,
                        days: 0,
                        first: ts,
                        last: ts,
                    },
                });
            }
            let (t, new) = self.track_index.index(tracks[r]);
            if new {
                self.tracks.push(Track {
                    key: tracks[r],
                    id: None,
                    stats: TrackStats {
                        plays: 0,
                        plays_7d: 0,
                        listeners: 0,
                        first: ts,
                        last: ts,
                        duration: None,
                    },
                });
            }
            let (a, new) = self.artist_index.index(artists[r]);
            if new {
                self.artists.push(None);
            }
            let (user, track) = (&mut self.users[u as usize], &mut self.tracks[t as usize]);
            let (us, tr) = (&mut user.stats, &mut track.stats);
            us.plays += 1;
            us.first = us.first.min(ts);
            us.last = us.last.max(ts);
            tr.plays += 1;
            tr.plays_7d += i64::from(ts >= since);
            tr.first = tr.first.min(ts);
            tr.last = tr.last.max(ts);
            if total.is_valid(r) {
                tr.duration = Some(
                    tr.duration
                        .map_or(total.value(r), |d| d.max(total.value(r))),
                );
            }
            self.user_tracks.push(u, t);
            self.user_artists.push(u, a);
            // Days since 1970 fit 32 bits for another 11 million years.
            self.user_days.push(u, ts.div_euclid(MICROS_PER_DAY) as u32);
            if user_id.is_valid(r) {
                same_id(&mut user.id, user_id.value(r), "user")?;
            }
            if track_id.is_valid(r) {
                same_id(&mut track.id, track_id.value(r), "track")?;
            }
            if artist_id.is_valid(r) {
                same_id(&mut self.artists[a as usize], artist_id.value(r), "artist")?;
            }
        }
        Ok(())
    }

    fn finish(mut self, files: usize) -> Result<Vec<RecordBatch>> {
        for (u, t) in self.user_tracks.distinct() {
            self.users[u].stats.tracks += 1;
            self.tracks[t].stats.listeners += 1;
        }
        for (u, _) in self.user_artists.distinct() {
            self.users[u].stats.artists += 1;
        }
        for (u, _) in self.user_days.distinct() {
            self.users[u].stats.days += 1;
        }
        let mut rows = PartialRows::new(files);
        let mut out = Vec::new();
        for user in &self.users {
            let Some(id) = user.id.as_deref() else {
                return exec_err!("no play of user hash {:#x} carried its id", user.key);
            };
            rows.push_user(user.key, id, &user.stats);
        }
        for track in &self.tracks {
            rows.push_track(track.key, track.id.as_deref(), &track.stats);
            if rows.len() >= 64 * 1024 {
                out.push(rows.finish()?);
            }
        }
        if rows.len() > 0 {
            out.push(rows.finish()?);
        }
        Ok(out)
    }
}

impl Operator for UserMerge {
    const NAME: &'static str = "EtlUserMergeExec";

    fn output_schema(&self) -> SchemaRef {
        super::partial::schema()
    }

    fn stream(
        self: Arc<Self>,
        mut input: SendableRecordBatchStream,
        _context: Arc<TaskContext>,
        metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        let output = metrics.clone();
        let batches = async move {
            let mut merge = Merge::default();
            while let Some(batch) = input.next().await {
                let batch = batch?;
                let _timer = metrics.elapsed_compute().timer();
                merge.add(&batch, self.since)?;
            }
            let _timer = metrics.elapsed_compute().timer();
            let out = merge.finish(self.files)?;
            Ok(out)
        };
        Ok(emit_when_done(output, batches))
    }
}
