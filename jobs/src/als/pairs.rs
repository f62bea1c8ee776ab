//! The ratings' per-user split, as one operator: the plays of a share of the users (read by
//! [`super::plays::PlayScan`], shuffled by user block) in, their (user, track) pairs out, with
//! the user's earliest `train_fraction` of plays (rounded down) counted as training and the
//! rest as test.
//!
//! It does what `ROW_NUMBER() OVER (PARTITION BY u ORDER BY ts, track_id, ties…)` and a
//! `GROUP BY u, track_id` do, without their costs: a sort of every play by a row-format key of
//! all the order's columns (strings included), a second shuffle by (user, track) and a sort of
//! the result for the writer. Here the plays are put in user order by counting, and each
//! user's plays are sorted by integers: time, the track's rank among the task's tracks (tracks
//! arrive as 64-bit id hashes, named by the few rows that carry their id string) and, for
//! events, the place in the log. A user's pairs come out sorted by track id, users in order,
//! so a block's rows arrive at the writer in the order its file keeps.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, Float32Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder,
};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef,
    UInt64Type,
};
use datafusion::common::{exec_datafusion_err, exec_err};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use hashbrown::HashMap;
use recsys_core::schema::col;
use serde::{Deserialize, Serialize};

use crate::etl::same_id;
use crate::worklist::{Operator, WorkExec};

/// Rows per output batch.
const OUT_ROWS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairFold {
    /// Events: a user's plays of one track at one time are ordered by their place in the log
    /// (`log_partition`, `log_offset`). Listens weigh alike: their order decides nothing.
    pub events: bool,
    /// The share of each user's plays, earliest first, that trains.
    pub train_fraction: f64,
}

/// How many of a user's `plays` train: the earliest `train_fraction` of them, rounded down.
fn train_cut(train_fraction: f64, plays: usize) -> usize {
    (train_fraction * plays as f64).floor() as usize
}

pub type PairFoldExec = WorkExec<PairFold>;

/// The pairs: user, track, training and test weight, plays, and the user's block.
pub fn pair_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("u", DataType::Int32, false),
        Field::new("track_id", DataType::Utf8, false),
        Field::new("r", DataType::Float32, false),
        Field::new("t", DataType::Float32, false),
        Field::new("n", DataType::Int64, false),
        Field::new("block", DataType::Int64, false),
    ]))
}

impl Operator for PairFold {
    const NAME: &'static str = "AlsPairFoldExec";

    fn output_schema(&self) -> SchemaRef {
        pair_schema()
    }

    fn stream(
        self: Arc<Self>,
        input: SendableRecordBatchStream,
        _context: Arc<TaskContext>,
        metrics: BaselineMetrics,
    ) -> Result<BoxStream<'static, Result<RecordBatch>>> {
        Ok(futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let timer = metrics.elapsed_compute().timer();
            let out = Plays::new(&batches, self.events)?.pairs(self.train_fraction)?;
            timer.done();
            metrics.record_output(out.iter().map(|b| b.num_rows()).sum());
            Ok::<_, datafusion::error::DataFusionError>(futures::stream::iter(
                out.into_iter().map(Ok),
            ))
        })
        .try_flatten()
        .boxed())
    }
}

/// A play, as its user's plays are ordered: by time, track rank and place in the log.
#[derive(Clone, Copy, Default)]
struct Play {
    ts: i64,
    /// The track's rank among the task's tracks (by id).
    track: u32,
    partition: i32,
    offset: i64,
    w: f64,
}

/// A task's plays, by user.
struct Plays {
    /// Every user's plays in order, users in order.
    plays: Vec<Play>,
    /// Where the plays of user `first_user + k` start; the end last.
    starts: Vec<usize>,
    first_user: i32,
    /// The block of user `first_user + k`.
    blocks: Vec<i64>,
    /// Track ids by rank.
    tracks: Vec<String>,
}

/// The column `name` of `batch`.
fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| exec_datafusion_err!("the plays have no column `{name}`"))
}

/// The values of the primitive column `name` of `batch`, without nulls.
fn values<'a, T: ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a [T::Native]> {
    let array = column(batch, name)?;
    if array.null_count() > 0 {
        return exec_err!("column `{name}` of the plays has nulls");
    }
    array
        .as_primitive_opt::<T>()
        .map(|a| a.values().as_ref())
        .ok_or_else(|| {
            exec_datafusion_err!(
                "column `{name}` of the plays has type {}",
                array.data_type()
            )
        })
}

/// The tracks of `batches`: every row's track (interned by its hash), and the interned tracks'
/// ids, from the rows that carry them.
fn tracks(batches: &[RecordBatch]) -> Result<(Vec<Vec<u32>>, Vec<String>)> {
    let mut interned: HashMap<u64, u32> = HashMap::new();
    let mut names: Vec<Option<String>> = Vec::new();
    let mut rows = Vec::with_capacity(batches.len());
    for b in batches {
        let ids = column(b, col::TRACK_ID)?;
        let Some(ids) = ids.as_string_opt::<i32>() else {
            return exec_err!(
                "column `track_id` of the plays has type {}",
                ids.data_type()
            );
        };
        let hashes = values::<UInt64Type>(b, "track_h")?;
        let mut track = Vec::with_capacity(hashes.len());
        for (r, h) in hashes.iter().enumerate() {
            let t = *interned.entry(*h).or_insert_with(|| {
                names.push(None);
                names.len() as u32 - 1
            });
            if ids.is_valid(r) {
                same_id(&mut names[t as usize], ids.value(r), "track")?;
            }
            track.push(t);
        }
        rows.push(track);
    }
    let names = names
        .into_iter()
        .map(|n| {
            n.ok_or_else(|| {
                exec_datafusion_err!(
                    "a track came to the pairs without its id (the plays' scan sends it with \
                     the first play of each track for each block)"
                )
            })
        })
        .collect::<Result<_>>()?;
    Ok((rows, names))
}

impl Plays {
    /// The plays of `batches` ([`super::plays::play_schema`]).
    fn new(batches: &[RecordBatch], events: bool) -> Result<Self> {
        let (track_rows, mut names) = tracks(batches)?;
        // Tracks by rank, and each interned track's rank.
        let mut by_rank: Vec<u32> = (0..names.len() as u32).collect();
        by_rank.sort_unstable_by(|&a, &b| names[a as usize].cmp(&names[b as usize]));
        let mut rank = vec![0; by_rank.len()];
        for (r, &t) in by_rank.iter().enumerate() {
            rank[t as usize] = r as u32;
        }
        let tracks = by_rank
            .iter()
            .map(|&t| std::mem::take(&mut names[t as usize]))
            .collect();

        // The users' plays placed by counting: user `first_user + k` from `starts[k]` on.
        let us = batches
            .iter()
            .map(|b| values::<Int32Type>(b, "u"))
            .collect::<Result<Vec<_>>>()?;
        let (first_user, last_user) = us
            .iter()
            .flat_map(|u| u.iter())
            .fold((i32::MAX, i32::MIN), |(lo, hi), &u| (lo.min(u), hi.max(u)));
        let span = if first_user <= last_user {
            (last_user - first_user) as usize + 1
        } else {
            0
        };
        let mut starts = vec![0; span + 1];
        for &u in us.iter().flat_map(|u| u.iter()) {
            starts[(u - first_user) as usize + 1] += 1;
        }
        for k in 0..span {
            starts[k + 1] += starts[k];
        }
        let mut next = starts.clone();
        let mut plays = vec![Play::default(); starts[span]];
        let mut blocks = vec![0; span];
        for ((b, u), track) in batches.iter().zip(&us).zip(&track_rows) {
            let block = values::<Int64Type>(b, "block")?;
            let (w, ts) = (
                values::<Float64Type>(b, "w")?,
                values::<Int64Type>(b, col::TS)?,
            );
            let log = if events {
                Some((
                    values::<Int32Type>(b, col::LOG_PARTITION)?,
                    values::<Int64Type>(b, col::LOG_OFFSET)?,
                ))
            } else {
                None
            };
            for r in 0..u.len() {
                let k = (u[r] - first_user) as usize;
                blocks[k] = block[r];
                plays[next[k]] = Play {
                    ts: ts[r],
                    track: rank[track[r] as usize],
                    partition: log.map_or(0, |l| l.0[r]),
                    offset: log.map_or(0, |l| l.1[r]),
                    w: w[r],
                };
                next[k] += 1;
            }
        }
        for user in starts.windows(2) {
            plays[user[0]..user[1]]
                .sort_unstable_by_key(|p| (p.ts, p.track, p.partition, p.offset));
        }
        Ok(Plays {
            plays,
            starts,
            first_user,
            blocks,
            tracks,
        })
    }

    /// The pairs of every user, in order, the earliest `train_fraction` of their plays training.
    fn pairs(self, train_fraction: f64) -> Result<Vec<RecordBatch>> {
        // Per track of the current user: training and test weight, plays.
        let mut sums: Vec<(f64, f64, i64)> = vec![(0.0, 0.0, 0); self.tracks.len()];
        let mut touched: Vec<u32> = Vec::new();
        let mut out = Vec::new();
        let mut rows = PairRows::default();
        for (k, range) in self.starts.windows(2).enumerate() {
            let (plays, block) = (&self.plays[range[0]..range[1]], self.blocks[k]);
            let cut = train_cut(train_fraction, plays.len());
            for (n, p) in plays.iter().enumerate() {
                let sum = &mut sums[p.track as usize];
                if sum.2 == 0 {
                    touched.push(p.track);
                }
                if n < cut {
                    sum.0 += p.w;
                } else {
                    sum.1 += p.w;
                }
                sum.2 += 1;
            }
            touched.sort_unstable();
            let u = self.first_user + k as i32;
            for t in touched.drain(..) {
                let (r, test, n) = std::mem::take(&mut sums[t as usize]);
                rows.push(u, &self.tracks[t as usize], r, test, n, block);
            }
            if rows.len() >= OUT_ROWS {
                out.push(rows.finish()?);
            }
        }
        if rows.len() > 0 {
            out.push(rows.finish()?);
        }
        Ok(out)
    }
}

#[derive(Default)]
struct PairRows {
    u: Int32Builder,
    track: StringBuilder,
    r: Float32Builder,
    t: Float32Builder,
    n: Int64Builder,
    block: Int64Builder,
}

impl PairRows {
    fn push(&mut self, u: i32, track: &str, r: f64, t: f64, n: i64, block: i64) {
        self.u.append_value(u);
        self.track.append_value(track);
        self.r.append_value(r as f32);
        self.t.append_value(t as f32);
        self.n.append_value(n);
        self.block.append_value(block);
    }

    fn len(&self) -> usize {
        self.u.len()
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            pair_schema(),
            vec![
                Arc::new(self.u.finish()),
                Arc::new(self.track.finish()),
                Arc::new(self.r.finish()),
                Arc::new(self.t.finish()),
                Arc::new(self.n.finish()),
                Arc::new(self.block.finish()),
            ],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{Float32Type, TimeUnit};
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use recsys_core::Store;

    use super::super::plays::PlayScan;
    use super::*;
    use crate::etl::FileRef;
    use crate::etl::fold::write_test_file;
    use crate::worklist::Work;

    /// A users' table of `users` (numbers; ids `user-{u}`).
    fn users(lake: &Store, name: &str, users: &[i32]) -> FileRef {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new(col::USER_ID, DataType::Utf8, false),
                Field::new("u", DataType::Int32, false),
            ])),
            vec![
                Arc::new(StringArray::from_iter_values(
                    users.iter().map(|u| format!("user-{u}")),
                )),
                Arc::new(Int32Array::from_iter_values(users.iter().copied())),
            ],
        )
        .unwrap();
        write_test_file(lake, name, batch)
    }

    /// Three event files of 5 users' plays over 7 tracks, many of them at one time on one
    /// track, told apart only by their place in the log.
    fn lake(dir: &std::path::Path) -> (Store, Vec<FileRef>) {
        let lake = Store::open(dir.to_str().unwrap(), &Default::default()).unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new(col::USER_ID, DataType::Utf8, false),
            Field::new(col::TRACK_ID, DataType::Utf8, false),
            Field::new(
                col::TS,
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
            Field::new(col::ACTION, DataType::Utf8, false),
            Field::new(col::LOG_PARTITION, DataType::Int32, false),
            Field::new(col::LOG_OFFSET, DataType::Int64, false),
        ]));
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut offset = 0;
        let files = (0..3)
            .map(|f| {
                let rows: Vec<(String, String, i64, &str, i32, i64)> = (0..400)
                    .map(|_| {
                        offset += 1;
                        (
                            format!("user-{}", next(5)),
                            format!("track-{}", next(7)),
                            next(6) as i64 * 1_000_000,
                            ["complete", "listen", "skip"][next(3) as usize],
                            next(2) as i32,
                            // Offsets out of order, so that the files' order is not theirs.
                            (offset * 7919) % 1201,
                        )
                    })
                    .collect();
                let batch = RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
                        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.1))),
                        Arc::new(TimestampMicrosecondArray::from_iter_values(
                            rows.iter().map(|r| r.2),
                        )),
                        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
                        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.4))),
                        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.5))),
                    ],
                )
                .unwrap();
                write_test_file(&lake, &format!("events-{f}.parquet"), batch)
            })
            .collect();
        (lake, files)
    }

    /// The plays of `units` as [`PlayScan`] reads them, by block (2 users per block).
    async fn scan(
        lake: &Store,
        users: &FileRef,
        units: Vec<Vec<FileRef>>,
        window: Option<(i64, i64)>,
        events: bool,
    ) -> Result<BTreeMap<i64, Vec<RecordBatch>>> {
        let spec = Arc::new(PlayScan {
            store_url: lake.base_url().to_string(),
            users: users.clone(),
            events,
            window,
            block_size: 2,
        });
        let mut blocks: BTreeMap<i64, Vec<RecordBatch>> = BTreeMap::new();
        for unit in units {
            let metrics = BaselineMetrics::new(&ExecutionPlanMetricsSet::new(), 0);
            let out: Vec<RecordBatch> = spec
                .clone()
                .run(unit, Arc::new(TaskContext::default()), metrics)?
                .try_collect()
                .await?;
            // The shuffle by block.
            for batch in out {
                let block = batch
                    .column_by_name("block")
                    .unwrap()
                    .as_primitive::<Int64Type>();
                for b in 0..3 {
                    let mask = arrow::compute::kernels::cmp::eq(block, &Int64Array::new_scalar(b))?;
                    let rows = arrow::compute::filter_record_batch(&batch, &mask)?;
                    if rows.num_rows() > 0 {
                        blocks.entry(b).or_default().push(rows);
                    }
                }
            }
        }
        Ok(blocks)
    }

    /// The pairs of every block, as (u, track, r, t, n, block).
    fn pairs(
        blocks: &BTreeMap<i64, Vec<RecordBatch>>,
        events: bool,
        train_fraction: f64,
    ) -> Vec<(i32, String, f32, f32, i64, i64)> {
        let batches: Vec<RecordBatch> = blocks
            .values()
            .flat_map(|b| {
                Plays::new(b, events)
                    .unwrap()
                    .pairs(train_fraction)
                    .unwrap()
            })
            .collect();
        rows(&batches)
    }

    fn rows(batches: &[RecordBatch]) -> Vec<(i32, String, f32, f32, i64, i64)> {
        let mut out = Vec::new();
        for b in batches {
            let track = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
            let track = track.as_string::<i32>();
            let f = |i: usize| b.column(i).as_primitive::<Float32Type>();
            let n = |i: usize| b.column(i).as_primitive::<Int64Type>();
            for r in 0..b.num_rows() {
                out.push((
                    b.column(0).as_primitive::<Int32Type>().value(r),
                    track.value(r).to_string(),
                    f(2).value(r),
                    f(3).value(r),
                    n(4).value(r),
                    n(5).value(r),
                ));
            }
        }
        out
    }

    #[tokio::test]
    async fn pairs_are_what_row_number_and_group_by_give() {
        let dir = tempfile::tempdir().unwrap();
        let (lake, files) = lake(dir.path());
        let users = users(&lake, "users.parquet", &[0, 1, 2, 3, 4]);
        // Plays at 0 s and 5 s fall outside the window.
        let window = Some((1_000_000, 5_000_000));
        let units = vec![files[..2].to_vec(), files[2..].to_vec()];
        let blocks = scan(&lake, &users, units.clone(), window, true)
            .await
            .unwrap();
        // The reference: the SQL the operators replace, over the same files.
        let ctx = SessionContext::new();
        let options = ParquetReadOptions::default();
        for (i, f) in files.iter().enumerate() {
            let url = format!("{}{}", lake.base_url(), f.path);
            ctx.register_parquet(format!("events{i}"), url, options.clone())
                .await
                .unwrap();
        }
        ctx.register_parquet(
            "users",
            format!("{}{}", lake.base_url(), users.path),
            options,
        )
        .await
        .unwrap();
        // Each fraction's split against the SQL's; without their place in the log, plays equal
        // in time and track fall in any order, and some users' split changes.
        let mut untied_differ = false;
        for fraction in [0.0, 0.37, 0.8, 1.0] {
            let got = pairs(&blocks, true, fraction);
            let expected = ctx
            .sql(&format!(
                "WITH plays AS ( \
                   SELECT us.u, CAST(us.u AS BIGINT) / 2 AS block, l.track_id, l.ts, \
                          l.log_partition, l.log_offset, \
                          CASE l.action WHEN 'complete' THEN 1.0 WHEN 'listen' THEN 0.5 ELSE 0.0 END AS w \
                   FROM (SELECT * FROM events0 UNION ALL SELECT * FROM events1 \
                         UNION ALL SELECT * FROM events2) l \
                   JOIN users us ON l.user_id = us.user_id \
                   WHERE l.ts >= to_timestamp_micros(1000000) AND l.ts < to_timestamp_micros(5000000)) \
                 SELECT u, track_id, \
                        CAST(SUM(CASE WHEN rn <= cut THEN w ELSE 0 END) AS FLOAT) AS r, \
                        CAST(SUM(CASE WHEN rn > cut THEN w ELSE 0 END) AS FLOAT) AS t, \
                        COUNT(*) AS n, block \
                 FROM (SELECT *, \
                          ROW_NUMBER() OVER (PARTITION BY u \
                            ORDER BY ts, track_id, log_partition, log_offset) AS rn, \
                          FLOOR({fraction} * COUNT(*) OVER (PARTITION BY u)) AS cut \
                       FROM plays) \
                 GROUP BY u, track_id, block ORDER BY u, track_id",
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
            assert_eq!(got, rows(&expected), "train fraction {fraction}");
            // The window kept some plays and left out others.
            let plays: i64 = got.iter().map(|p| p.4).sum();
            assert!(plays > 600 && plays < 1200, "{plays}");
            // Nothing trains at 0, everything at 1, some of a user's pairs in between.
            match fraction {
                0.0 => assert!(got.iter().all(|p| p.2 == 0.0)),
                1.0 => assert!(got.iter().all(|p| p.3 == 0.0)),
                _ => assert!(got.iter().any(|p| p.2 > 0.0 && p.3 > 0.0)),
            }
            untied_differ |= pairs(&blocks, false, fraction) != got;
        }
        assert!(untied_differ);

        // Sorted listens: every play weighs 1, all of them without a window.
        let listens = scan(&lake, &users, units, None, false).await.unwrap();
        let got = pairs(&listens, false, 0.8);
        assert_eq!(got.iter().map(|p| p.4).sum::<i64>(), 1200);
        assert!(got.iter().all(|p| p.2 + p.3 == p.4 as f32));
    }

    #[tokio::test]
    async fn a_play_of_an_unknown_user_fails_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let (lake, files) = lake(dir.path());
        // The users' table of another preparation: without user-3.
        let users = users(&lake, "users.parquet", &[0, 1, 2, 4]);
        let e = scan(&lake, &users, vec![files], None, true)
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("user `user-3`, who is not in the users' table"),
            "{e}"
        );
    }
}
