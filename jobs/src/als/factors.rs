//! Factor matrices in memory (dense, row-major, f32) and in the lake (Parquet rows of
//! `idx: Int32, factors: FixedSizeList<Float32, k>`), and their seeded initialisation.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Int32Type, Schema, SchemaRef};
use datafusion::common::exec_err;
use datafusion::error::{DataFusionError, Result};
use object_store::ObjectStore;
use object_store::path::Path;

use super::cache;
use crate::lake::{list, read_parquet};
use crate::write::{Payload, write_parquet_file};

/// Which side of the rating matrix a factor matrix belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Side {
    Users,
    Items,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Users => "users",
            Side::Items => "items",
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Users => Side::Items,
            Side::Items => Side::Users,
        }
    }
}

pub fn factor_field(k: usize) -> Field {
    Field::new(
        "factors",
        DataType::FixedSizeList(
            Arc::new(Field::new("item", DataType::Float32, false)),
            k as i32,
        ),
        false,
    )
}

/// Schema of a factor block: dense index and factors.
pub fn block_schema(k: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("idx", DataType::Int32, false),
        factor_field(k),
    ]))
}

/// Schema of a model file: id and factors (`users.parquet`, `items.parquet`).
pub fn model_schema(id: &str, k: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(id, DataType::Utf8, false),
        factor_field(k),
    ]))
}

pub fn factors_array(values: Vec<f32>, k: usize) -> Result<FixedSizeListArray> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Ok(FixedSizeListArray::try_new(
        item,
        k as i32,
        Arc::new(Float32Array::from(values)),
        None,
    )?)
}

/// Rows `[start, start + rows)` of a factor matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Factors {
    pub k: usize,
    pub start: usize,
    pub values: Vec<f32>,
}

impl Factors {
    pub fn zeros(k: usize, start: usize, rows: usize) -> Self {
        Factors {
            k,
            start,
            values: vec![0.0; k * rows],
        }
    }

    /// Seeded N(0, 0.01²) factors: row `idx` depends only on (seed, side, idx), so any block of
    /// any matrix is the same wherever and however it is computed.
    pub fn init(k: usize, start: usize, rows: usize, seed: u64, side: Side) -> Self {
        let mut values = Vec::with_capacity(k * rows);
        for idx in start..start + rows {
            let mut rng = SplitMix(
                (seed ^ ((side as u64) << 62)) ^ (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            for _ in 0..k {
                values.push(rng.normal() * 0.01);
            }
        }
        Factors { k, start, values }
    }

    pub fn rows(&self) -> usize {
        self.values.len() / self.k
    }

    pub fn bytes(&self) -> usize {
        self.values.len() * 4
    }

    pub fn row(&self, idx: usize) -> &[f32] {
        let r = idx - self.start;
        &self.values[r * self.k..(r + 1) * self.k]
    }

    pub fn row_mut(&mut self, idx: usize) -> &mut [f32] {
        let r = idx - self.start;
        &mut self.values[r * self.k..(r + 1) * self.k]
    }

    pub fn to_batch(&self) -> Result<RecordBatch> {
        let idx =
            Int32Array::from_iter_values((self.start..self.start + self.rows()).map(|i| i as i32));
        Ok(RecordBatch::try_new(
            block_schema(self.k),
            vec![
                Arc::new(idx),
                Arc::new(factors_array(self.values.clone(), self.k)?),
            ],
        )?)
    }

    /// Copies rows from factor batches (`idx`, `factors`) into this matrix.
    pub fn fill_from(&mut self, batches: &[RecordBatch]) -> Result<usize> {
        let mut filled = 0;
        for batch in batches {
            let idx = batch.column(0).as_primitive::<Int32Type>();
            let list = batch.column(1).as_fixed_size_list();
            if list.value_length() as usize != self.k {
                return exec_err!(
                    "factor rank {} where {} was expected",
                    list.value_length(),
                    self.k
                );
            }
            let values = list.values().as_primitive::<Float32Type>().values();
            let offset = list.offset() * self.k;
            for (r, i) in idx.values().iter().enumerate() {
                let i = *i as usize;
                if i < self.start || i >= self.start + self.rows() {
                    return exec_err!(
                        "factor row {i} outside {}..{}",
                        self.start,
                        self.start + self.rows()
                    );
                }
                let src = &values[offset + r * self.k..offset + (r + 1) * self.k];
                self.row_mut(i).copy_from_slice(src);
                filled += 1;
            }
        }
        Ok(filled)
    }
}

/// Minimal seeded generator for initial factors (SplitMix64 + Box–Muller).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn normal(&mut self) -> f32 {
        let u1 = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

/// The batches of one factor block file, through the executor's cache (blocks are written
/// once, and [`write_block`] primes the cache with what it wrote).
async fn block_batches(store: &Arc<dyn ObjectStore>, path: &Path) -> Result<Arc<Vec<RecordBatch>>> {
    let batches_bytes = |b: &Vec<RecordBatch>| b.iter().map(|b| b.get_array_memory_size()).sum();
    cache::get_or_load(path.as_ref(), batches_bytes, async {
        let (batches, _) = read_parquet(store.as_ref(), path)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(batches)
    })
    .await
}

/// Reads every factor block in `dir` into one matrix of `rows` rows.
pub async fn read_matrix(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    k: usize,
    rows: usize,
) -> Result<Factors> {
    let mut factors = Factors::zeros(k, 0, rows);
    let mut filled = 0;
    for object in list(store.as_ref(), dir)
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))?
    {
        filled += factors.fill_from(&block_batches(store, &object.location).await?)?;
    }
    if filled != rows {
        return exec_err!("{dir} holds {filled} factor rows, expected {rows}");
    }
    Ok(factors)
}

/// Reads one factor block file into rows `[start, start + rows)`.
pub async fn read_block(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    k: usize,
    start: usize,
    rows: usize,
) -> Result<Factors> {
    let mut factors = Factors::zeros(k, start, rows);
    factors.fill_from(&block_batches(store, path).await?)?;
    Ok(factors)
}

pub async fn write_block(
    store: &Arc<dyn ObjectStore>,
    path: &Path,
    factors: &Factors,
) -> Result<()> {
    let batch = factors.to_batch()?;
    write_parquet_file(
        store.clone(),
        path,
        block_schema(factors.k),
        vec![batch.clone()],
        Payload::Vectors,
        vec![],
    )
    .await?;
    let written = vec![batch];
    cache::get_or_load(
        path.as_ref(),
        |b: &Vec<RecordBatch>| b[0].get_array_memory_size(),
        async { Ok(written) },
    )
    .await?;
    Ok(())
}

/// A model file: one row per id, in index order.
pub fn model_batch(id: &str, ids: &[String], factors: &Factors) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        model_schema(id, factors.k),
        vec![
            Arc::new(StringArray::from_iter_values(ids.iter())),
            Arc::new(factors_array(factors.values.clone(), factors.k)?),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_a_pure_function_of_seed_side_and_row() {
        let whole = Factors::init(8, 0, 100, 42, Side::Items);
        let part = Factors::init(8, 40, 10, 42, Side::Items);
        assert_eq!(whole.row(45), part.row(45));
        assert_ne!(Factors::init(8, 0, 1, 42, Side::Users).row(0), whole.row(0));
        assert_ne!(Factors::init(8, 0, 1, 43, Side::Items).row(0), whole.row(0));
        let mean: f32 = whole.values.iter().sum::<f32>() / whole.values.len() as f32;
        assert!(mean.abs() < 0.002);
    }

    #[test]
    fn batches_round_trip() {
        let f = Factors::init(4, 10, 5, 1, Side::Users);
        let mut g = Factors::zeros(4, 10, 5);
        assert_eq!(g.fill_from(&[f.to_batch().unwrap()]).unwrap(), 5);
        assert_eq!(f, g);
        let batch = model_batch(
            "user_id",
            &(0..5).map(|i| format!("u{i}")).collect::<Vec<_>>(),
            &f,
        )
        .unwrap();
        assert_eq!(batch.num_rows(), 5);
        assert_eq!(batch.column(1).len(), 5);
    }
}
