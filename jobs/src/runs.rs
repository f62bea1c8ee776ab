//! Sorted runs: Parquet files whose rows are in [`SORT_ORDER`], each carrying in its footer a
//! sparse index of its leading column (the value at every `every`-th row, like the marks of a
//! column store). The clean job writes one run per chunk; the sort job reads only footers to
//! plan its time ranges and, per range, reads from each run just the rows the index says can
//! be in it.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimeUnit};
use datafusion::common::{exec_datafusion_err, exec_err};
use datafusion::error::Result;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use recsys_core::schema::col as c;
use serde::{Deserialize, Serialize};

/// Row order of sorted runs and sorted files: time, then user and track, then the other
/// columns, so the order is total and every run of the same rows sorts identically.
pub const SORT_ORDER: [&str; 6] = [
    c::TS,
    c::USER_ID,
    c::TRACK_ID,
    c::ARTIST_ID,
    c::ARTIST_NAME,
    c::TRACK_NAME,
];
/// Footer key: the sort order of a run (comma separated).
pub const SORTED_BY_KEY: &str = "recsys.sorted_by";
/// Footer key: the run's [`SparseIndex`] as JSON.
pub const SPARSE_INDEX_KEY: &str = "recsys.sparse_index";
/// Rows between two index marks.
pub const INDEX_EVERY: u64 = 4096;

/// [`SORT_ORDER`] as a DataFusion ordering over `schema`.
pub fn sort_ordering(schema: &SchemaRef) -> Result<LexOrdering> {
    let exprs = SORT_ORDER
        .iter()
        .map(|name| {
            Ok(PhysicalSortExpr::new_default(Arc::new(
                Column::new_with_schema(name, schema)?,
            )))
        })
        .collect::<Result<Vec<_>>>()?;
    LexOrdering::new(exprs).ok_or_else(|| exec_datafusion_err!("empty sort order"))
}

/// Values of the leading sort column at rows 0, every, 2·every, … and at the last row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparseIndex {
    pub every: u64,
    pub rows: u64,
    pub marks: Vec<i64>,
    pub last: i64,
}

impl SparseIndex {
    /// Estimated rows with a value below `x` (linear between marks).
    pub fn estimate_below(&self, x: i64) -> f64 {
        if self.rows == 0 || x <= self.marks[0] {
            return 0.0;
        }
        if x > self.last {
            return self.rows as f64;
        }
        // Points (row, value): the marks, then the last row.
        let j = self.marks.partition_point(|&m| m < x); // marks[j-1] < x <= marks[j]
        let (r0, v0) = ((j as u64 - 1) * self.every, self.marks[j - 1]);
        let (r1, v1) = match self.marks.get(j) {
            Some(&v) => (j as u64 * self.every, v),
            None => (self.rows - 1, self.last),
        };
        let span = (v1 - v0).max(1) as f64;
        r0 as f64 + (r1 - r0) as f64 * ((x - v0) as f64 / span).min(1.0)
    }

    /// Rows `[start, end)` that contain every row with a value in `[lo, hi)` (a superset: the
    /// reader trims it exactly).
    pub fn rows_between(&self, lo: Option<i64>, hi: Option<i64>) -> (u64, u64) {
        let start = match lo {
            Some(lo) => {
                let j = self.marks.partition_point(|&m| m < lo) as u64;
                j.saturating_sub(1) * self.every
            }
            None => 0,
        };
        let end = match hi {
            Some(hi) if hi <= self.last => {
                let j = self.marks.partition_point(|&m| m < hi) as u64;
                (j * self.every).min(self.rows)
            }
            _ => self.rows,
        };
        (start.min(end), end)
    }
}

/// Builds a [`SparseIndex`] while a run is written, checking that the run really is sorted.
#[derive(Debug)]
pub struct SparseIndexBuilder {
    column: usize,
    rows: u64,
    marks: Vec<i64>,
    last: Option<i64>,
}

impl SparseIndexBuilder {
    /// Indexes column `column` of the batches (Int64 or a microsecond timestamp).
    pub fn new(column: usize) -> Self {
        SparseIndexBuilder {
            column,
            rows: 0,
            marks: Vec::new(),
            last: None,
        }
    }

    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let array = batch.column(self.column);
        let values = match array.data_type() {
            DataType::Int64 => array.as_primitive::<Int64Type>().values().clone(),
            DataType::Timestamp(TimeUnit::Microsecond, _) => array
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .values()
                .clone(),
            other => return exec_err!("cannot index a sorted run on a {other} column"),
        };
        if array.null_count() > 0 {
            return exec_err!("sorted run has nulls in its leading column");
        }
        for (i, &v) in values.iter().enumerate() {
            if self.last.is_some_and(|last| v < last) {
                return exec_err!(
                    "run is not sorted: {v} after {}",
                    self.last.unwrap_or_default()
                );
            }
            if (self.rows + i as u64).is_multiple_of(INDEX_EVERY) {
                self.marks.push(v);
            }
            self.last = Some(v);
        }
        self.rows += values.len() as u64;
        Ok(())
    }

    pub fn finish(self) -> SparseIndex {
        SparseIndex {
            every: INDEX_EVERY,
            rows: self.rows,
            marks: self.marks,
            last: self.last.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(values: &[i64], every: u64) -> SparseIndex {
        SparseIndex {
            every,
            rows: values.len() as u64,
            marks: values.iter().step_by(every as usize).copied().collect(),
            last: *values.last().unwrap(),
        }
    }

    #[test]
    fn row_ranges_cover_the_value_range() {
        let values: Vec<i64> = (0..1000).map(|i| i / 3).collect(); // duplicates included
        let idx = index(&values, 16);
        for (lo, hi) in [
            (None, Some(50)),
            (Some(50), Some(51)),
            (Some(100), None),
            (Some(-5), Some(0)),
            (Some(400), None),
        ] {
            let (s, e) = idx.rows_between(lo, hi);
            let want: Vec<usize> = (0..values.len())
                .filter(|&r| lo.is_none_or(|l| values[r] >= l) && hi.is_none_or(|h| values[r] < h))
                .collect();
            if let (Some(first), Some(last)) = (want.first(), want.last()) {
                assert!(
                    s as usize <= *first && *last < e as usize,
                    "{lo:?}..{hi:?} gave {s}..{e}"
                );
            }
        }
    }

    #[test]
    fn estimates_are_close() {
        let values: Vec<i64> = (0..10_000).map(|i| i * 2).collect();
        let idx = index(&values, 100);
        assert_eq!(idx.estimate_below(0), 0.0);
        assert_eq!(idx.estimate_below(1_000_000), 10_000.0);
        assert!((idx.estimate_below(5_000) - 2_500.0).abs() <= 1.0);
    }

    #[test]
    fn builder_rejects_unsorted_runs() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = |v: Vec<i64>| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(v))]).unwrap()
        };
        let mut b = SparseIndexBuilder::new(0);
        b.push(&batch(vec![1, 2, 2, 3])).unwrap();
        assert!(b.push(&batch(vec![2])).is_err());
        let mut b = SparseIndexBuilder::new(0);
        b.push(&batch((0..10_000).collect())).unwrap();
        let idx = b.finish();
        assert_eq!((idx.rows, idx.marks.len(), idx.last), (10_000, 3, 9_999));
    }
}
