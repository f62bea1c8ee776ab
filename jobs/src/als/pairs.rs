//! The ratings' per-user split, as one operator: the plays of a share of the users (shuffled by
//! user block) in, their (user, track) pairs out, with the user's earliest `cut` plays counted
//! as training and the rest as test.
//!
//! It does what `ROW_NUMBER() OVER (PARTITION BY u ORDER BY ts, track_id, ties…)` and a
//! `GROUP BY u, track_id` do, without their costs: a sort of every play by a row-format key of
//! all the order's columns (strings included), a second shuffle by (user, track) and a sort of
//! the result for the writer. Here a play's sort key is its user, its time and its track's rank
//! among the task's tracks (an integer); the remaining tie-breakers are compared only for plays
//! equal in all three. A user's pairs come out sorted by track id, users in order, so a block's
//! rows arrive at the writer in the order its file keeps.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, DynComparator, Float32Builder, Int32Builder,
    Int64Builder, RecordBatch, StringBuilder, make_comparator,
};
use arrow::compute::SortOptions;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float64Type, Int32Type, Int64Type, Schema, SchemaRef,
    TimestampMicrosecondType,
};
use datafusion::common::{exec_datafusion_err, exec_err};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::metrics::BaselineMetrics;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};

use crate::intern::Interner;
use crate::worklist::{Operator, WorkExec};

/// Rows per output batch.
const OUT_ROWS: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairFold {
    /// Columns that order a user's plays of one track at one time (ascending, nulls last).
    pub ties: Vec<String>,
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
            let out = Plays::new(&batches, &self.ties)?.pairs()?;
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

/// One input batch's columns.
struct Columns<'a> {
    u: &'a [i32],
    cut: &'a [i64],
    block: &'a [i64],
    w: &'a [f64],
    ts: &'a [i64],
    /// Interned track of every row.
    track: Vec<u32>,
    ties: Vec<ArrayRef>,
}

/// A play: sorted by user, time and track rank, then by the ties of its row.
#[derive(Clone, Copy)]
struct Play {
    u: i32,
    ts: i64,
    rank: u32,
    batch: u32,
    row: u32,
}

/// A task's plays.
struct Plays<'a> {
    batches: Vec<Columns<'a>>,
    tracks: Interner,
}

/// The column `name` of `batch`, without nulls.
fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| exec_datafusion_err!("the plays have no column `{name}`"))?;
    if array.null_count() > 0 {
        return exec_err!("column `{name}` of the plays has nulls");
    }
    Ok(array)
}

/// The values of the primitive column `name` of `batch`, without nulls.
fn values<'a, T: ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
) -> Result<&'a [T::Native]> {
    let array = column(batch, name)?;
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

impl<'a> Plays<'a> {
    fn new(batches: &'a [RecordBatch], ties: &[String]) -> Result<Self> {
        let mut tracks = Interner::new();
        let batches = batches
            .iter()
            .map(|b| {
                let track = arrow::compute::cast(column(b, "track_id")?, &DataType::Utf8)?;
                let track = track
                    .as_string::<i32>()
                    .iter()
                    .map(|t| tracks.intern(t.unwrap_or_default().as_bytes()))
                    .collect();
                Ok(Columns {
                    u: values::<Int32Type>(b, "u")?,
                    cut: values::<Int64Type>(b, "cut")?,
                    block: values::<Int64Type>(b, "block")?,
                    w: values::<Float64Type>(b, "w")?,
                    ts: values::<TimestampMicrosecondType>(b, "ts")?,
                    track,
                    ties: ties
                        .iter()
                        .map(|t| {
                            b.column_by_name(t).cloned().ok_or_else(|| {
                                exec_datafusion_err!("the plays have no column `{t}`")
                            })
                        })
                        .collect::<Result<_>>()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Plays { batches, tracks })
    }

    /// Every track's rank by id.
    fn ranks(&self) -> Vec<u32> {
        let mut by_id: Vec<u32> = (0..self.tracks.len() as u32).collect();
        by_id.sort_unstable_by(|&a, &b| self.tracks.get(a).cmp(self.tracks.get(b)));
        let mut rank = vec![0; by_id.len()];
        for (r, &t) in by_id.iter().enumerate() {
            rank[t as usize] = r as u32;
        }
        rank
    }

    /// The plays in order: by user, time, track, then the ties.
    fn sorted(&self, rank: &[u32]) -> Result<Vec<Play>> {
        let mut plays = Vec::with_capacity(self.batches.iter().map(|b| b.u.len()).sum());
        for (b, c) in self.batches.iter().enumerate() {
            plays.extend((0..c.u.len()).map(|r| Play {
                u: c.u[r],
                ts: c.ts[r],
                rank: rank[c.track[r] as usize],
                batch: b as u32,
                row: r as u32,
            }));
        }
        // Comparators of the ties for each pair of batches, made when first needed: plays equal
        // in user, time and track are rare.
        let mut comparators: HashMap<(u32, u32), Vec<DynComparator>> = HashMap::new();
        let mut failed = None;
        let options = SortOptions {
            descending: false,
            nulls_first: false,
        };
        plays.sort_unstable_by(|a, b| {
            (a.u, a.ts, a.rank).cmp(&(b.u, b.ts, b.rank)).then_with(|| {
                let pair = comparators.entry((a.batch, b.batch)).or_insert_with(|| {
                    let (x, y) = (
                        &self.batches[a.batch as usize],
                        &self.batches[b.batch as usize],
                    );
                    x.ties
                        .iter()
                        .zip(&y.ties)
                        .filter_map(|(x, y)| match make_comparator(x, y, options) {
                            Ok(c) => Some(c),
                            Err(e) => {
                                failed = Some(e);
                                None
                            }
                        })
                        .collect()
                });
                pair.iter()
                    .map(|c| c(a.row as usize, b.row as usize))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            })
        });
        match failed {
            Some(e) => exec_err!("cannot order the plays' ties: {e}"),
            None => Ok(plays),
        }
    }

    /// The pairs of every user, in order.
    fn pairs(self) -> Result<Vec<RecordBatch>> {
        let rank = self.ranks();
        let plays = self.sorted(&rank)?;
        // Per track of the current user: training and test weight, plays.
        let mut sums: Vec<(f64, f64, i64)> = vec![(0.0, 0.0, 0); self.tracks.len()];
        let mut touched: Vec<u32> = Vec::new();
        let mut out = Vec::new();
        let mut rows = PairRows::default();
        for user in plays.chunk_by(|a, b| a.u == b.u) {
            let first = &self.batches[user[0].batch as usize];
            let (cut, block) = (
                first.cut[user[0].row as usize],
                first.block[user[0].row as usize],
            );
            for (n, p) in user.iter().enumerate() {
                let c = &self.batches[p.batch as usize];
                let track = c.track[p.row as usize];
                let sum = &mut sums[track as usize];
                if sum.2 == 0 {
                    touched.push(track);
                }
                let w = c.w[p.row as usize];
                if (n as i64) < cut {
                    sum.0 += w;
                } else {
                    sum.1 += w;
                }
                sum.2 += 1;
            }
            touched.sort_unstable_by_key(|&t| rank[t as usize]);
            for t in touched.drain(..) {
                let (r, test, n) = std::mem::take(&mut sums[t as usize]);
                rows.push(user[0].u, self.tracks.get(t), r, test, n, block);
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
    fn push(&mut self, u: i32, track: &[u8], r: f64, t: f64, n: i64, block: i64) {
        self.u.append_value(u);
        // Interned from a UTF-8 column.
        self.track
            .append_value(std::str::from_utf8(track).unwrap_or_default());
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
    use arrow::array::{
        Float64Array, Int32Array, Int64Array, StringArray, StringViewArray,
        TimestampMicrosecondArray,
    };
    use datafusion::prelude::SessionContext;

    use super::*;

    /// Plays of 5 users over 7 tracks in 3 batches (the last with its tracks as string views),
    /// many of them at one time on one track, told apart only by their offsets.
    fn plays() -> Vec<RecordBatch> {
        let schema = |track: DataType| {
            Arc::new(Schema::new(vec![
                Field::new("u", DataType::Int32, false),
                Field::new("cut", DataType::Int64, false),
                Field::new("block", DataType::Int64, false),
                Field::new("w", DataType::Float64, false),
                Field::new(
                    "ts",
                    DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
                    false,
                ),
                Field::new("track_id", track, false),
                Field::new("log_partition", DataType::Int32, false),
                Field::new("log_offset", DataType::Int64, false),
            ]))
        };
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut offset = 0;
        (0..3)
            .map(|b| {
                let rows: Vec<(i32, i64, f64, String, i32, i64)> = (0..400)
                    .map(|_| {
                        offset += 1;
                        let u = next(5) as i32;
                        (
                            u,
                            next(6) as i64 * 1_000_000,
                            [0.0, 0.5, 1.0][next(3) as usize],
                            format!("track-{}", next(7)),
                            next(2) as i32,
                            // Offsets out of order, so that the batches' order is not theirs.
                            (offset * 7919) % 1201,
                        )
                    })
                    .collect();
                let tracks = rows.iter().map(|r| r.3.as_str());
                let track: ArrayRef = if b == 2 {
                    Arc::new(StringViewArray::from_iter_values(tracks))
                } else {
                    Arc::new(StringArray::from_iter_values(tracks))
                };
                RecordBatch::try_new(
                    schema(track.data_type().clone()),
                    vec![
                        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                        // Users' cuts: 0 (all test) to well past their plays (all training).
                        Arc::new(Int64Array::from_iter_values(
                            rows.iter().map(|r| [0, 40, 100, 170, 1000][r.0 as usize]),
                        )),
                        Arc::new(Int64Array::from_iter_values(
                            rows.iter().map(|r| i64::from(r.0 / 2)),
                        )),
                        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
                        Arc::new(TimestampMicrosecondArray::from_iter_values(
                            rows.iter().map(|r| r.1),
                        )),
                        track,
                        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.4))),
                        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.5))),
                    ],
                )
                .unwrap()
            })
            .collect()
    }

    /// The pairs as (u, track, r, t, n, block).
    fn rows(batches: &[RecordBatch]) -> Vec<(i32, String, f32, f32, i64, i64)> {
        let mut out = Vec::new();
        for b in batches {
            let track = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
            let track = track.as_string::<i32>();
            let f = |i: usize| b.column(i).as_primitive::<arrow::datatypes::Float32Type>();
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
        let batches = plays();
        // The reference: the SQL the operator replaces, over the same plays (as strings).
        let schema = batches[0].schema();
        let same: Vec<RecordBatch> = batches
            .iter()
            .map(|b| {
                let columns = b
                    .columns()
                    .iter()
                    .map(|c| match c.data_type() {
                        DataType::Utf8View => arrow::compute::cast(c, &DataType::Utf8).unwrap(),
                        _ => c.clone(),
                    })
                    .collect();
                RecordBatch::try_new(schema.clone(), columns).unwrap()
            })
            .collect();
        let ctx = SessionContext::new();
        ctx.register_batch(
            "plays",
            arrow::compute::concat_batches(&schema, &same).unwrap(),
        )
        .unwrap();
        let expected = ctx
            .sql(
                "SELECT u, track_id, \
                        CAST(SUM(CASE WHEN rn <= cut THEN w ELSE 0 END) AS FLOAT) AS r, \
                        CAST(SUM(CASE WHEN rn > cut THEN w ELSE 0 END) AS FLOAT) AS t, \
                        COUNT(*) AS n, block \
                 FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY u \
                          ORDER BY ts, track_id, log_partition, log_offset) AS rn FROM plays) \
                 GROUP BY u, track_id, block ORDER BY u, track_id",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let ties = ["log_partition".to_string(), "log_offset".to_string()];
        let got = rows(&Plays::new(&batches, &ties).unwrap().pairs().unwrap());
        assert_eq!(got, rows(&expected));
        assert_eq!(got.iter().map(|p| p.4).sum::<i64>(), 1200);
        // User 0 trains on nothing, user 4 on everything, the others on some of their pairs.
        let user = |u: i32| got.iter().filter(move |p| p.0 == u);
        assert!(user(0).all(|p| p.2 == 0.0) && user(4).all(|p| p.3 == 0.0));
        assert!(user(2).any(|p| p.2 > 0.0) && user(2).any(|p| p.3 > 0.0));
        // Without the ties the order of plays equal in time and track is the input's, and
        // some users' split changes.
        let untied = rows(&Plays::new(&batches, &[]).unwrap().pairs().unwrap());
        assert_ne!(untied, got);
    }
}
