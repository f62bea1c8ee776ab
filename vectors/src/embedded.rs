//! The embedded vector store: every vector normalised and kept in one contiguous in-memory
//! matrix, persisted in a redb file (one transaction per upsert or delete, so a crash loses
//! nothing acknowledged). Search scans an 8-bit copy of the matrix (a quarter of the memory
//! traffic, which bounds an exact scan) for a shortlist of `2·limit + 32`, then ranks the
//! shortlist by exact f32 cosine; the scan runs on the blocking pool.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use recsys_core::linalg::{dot, dots_i8};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{COLLECTION, Hit, Payload, Point, VectorError, VectorStore, check_dim, normalized};

/// track id → vector (f32 little-endian) followed by the payload as JSON.
const POINTS: TableDefinition<&str, &[u8]> = TableDefinition::new(COLLECTION);

thread_local! {
    /// The 8-bit scores of one search.
    static APPROX: std::cell::RefCell<Vec<i32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Extra rows the 8-bit scan keeps beyond twice the limit, for the exact ranking.
const SHORTLIST_SLACK: usize = 32;

#[derive(Default)]
struct Matrix {
    rows: Vec<f32>,
    /// Each row as 8-bit codes: row ≈ scale · code.
    codes: Vec<i8>,
    scales: Vec<f32>,
    payloads: Vec<Payload>,
    index: HashMap<String, usize>,
}

/// `v` as 8-bit codes and the scale that maps them back (max |v_i| ↦ 127).
fn quantize(v: &[f32]) -> (Vec<i8>, f32) {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return (vec![0; v.len()], 0.0);
    }
    let scale = max / 127.0;
    (v.iter().map(|x| (x / scale).round() as i8).collect(), scale)
}

impl Matrix {
    fn row(&self, i: usize, dim: usize) -> &[f32] {
        &self.rows[i * dim..(i + 1) * dim]
    }

    fn put(&mut self, payload: Payload, vector: &[f32], dim: usize) {
        let (code, scale) = quantize(vector);
        match self.index.get(&payload.track_id) {
            Some(&i) => {
                self.rows[i * dim..(i + 1) * dim].copy_from_slice(vector);
                self.codes[i * dim..(i + 1) * dim].copy_from_slice(&code);
                self.scales[i] = scale;
                self.payloads[i] = payload;
            }
            None => {
                self.index
                    .insert(payload.track_id.clone(), self.payloads.len());
                self.rows.extend_from_slice(vector);
                self.codes.extend_from_slice(&code);
                self.scales.push(scale);
                self.payloads.push(payload);
            }
        }
    }

    fn remove(&mut self, track_id: &str, dim: usize) {
        let Some(i) = self.index.remove(track_id) else {
            return;
        };
        let last = self.payloads.len() - 1;
        if i != last {
            self.rows.copy_within(last * dim..(last + 1) * dim, i * dim);
            self.codes
                .copy_within(last * dim..(last + 1) * dim, i * dim);
            self.scales.swap(i, last);
            self.payloads.swap(i, last);
            self.index.insert(self.payloads[i].track_id.clone(), i);
        }
        self.rows.truncate(last * dim);
        self.codes.truncate(last * dim);
        self.scales.pop();
        self.payloads.pop();
    }

    /// The best `keep` rows by `score`, skipping `excluded`, best first.
    fn best(
        &self,
        keep: usize,
        rows: impl Iterator<Item = usize>,
        excluded: &HashSet<usize>,
        score: impl Fn(usize) -> f32,
    ) -> Vec<Candidate> {
        let mut heap = BinaryHeap::with_capacity(keep + 1);
        if keep == 0 {
            return vec![];
        }
        for i in rows {
            let s = score(i);
            if heap.len() < keep {
                if !excluded.contains(&i) {
                    heap.push(Candidate(s, i));
                }
            } else if heap.peek().is_some_and(|worst: &Candidate| s > worst.0)
                && !excluded.contains(&i)
            {
                heap.pop();
                heap.push(Candidate(s, i));
            }
        }
        let mut best = heap.into_vec();
        best.sort();
        best
    }

    /// The `limit` rows nearest `query` (normalised): an 8-bit scan for a shortlist, ranked
    /// by exact cosine.
    fn search(
        &self,
        query: &[f32],
        limit: usize,
        excluded: &HashSet<usize>,
        dim: usize,
    ) -> Vec<Candidate> {
        let (code, scale) = quantize(query);
        let shortlist = APPROX.with_borrow_mut(|approx| {
            // One buffer per thread: a fresh one per search cost page faults.
            approx.clear();
            approx.resize(self.payloads.len(), 0);
            dots_i8(&self.codes, &code, approx);
            self.best(
                limit * 2 + SHORTLIST_SLACK,
                0..self.payloads.len(),
                excluded,
                |i| scale * self.scales[i] * approx[i] as f32,
            )
        });
        // The shortlist holds no excluded row.
        let mut exact = self.best(limit, shortlist.iter().map(|c| c.1), &HashSet::new(), |i| {
            dot(query, self.row(i, dim))
        });
        exact.truncate(limit);
        exact
    }
}

pub struct EmbeddedStore {
    path: PathBuf,
    dim: usize,
    db: Arc<Database>,
    matrix: Arc<RwLock<Matrix>>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path` and loads its vectors.
    pub fn open(path: &Path, dim: usize) -> Result<Self, VectorError> {
        let err = |e: redb::Error| VectorError::Embedded {
            path: path.display().to_string(),
            source: e,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| err(redb::Error::Io(e)))?;
        }
        let db = Database::create(path).map_err(|e| err(e.into()))?;
        let tx = db.begin_write().map_err(|e| err(e.into()))?;
        tx.open_table(POINTS).map_err(|e| err(e.into()))?;
        tx.commit().map_err(|e| err(e.into()))?;

        let mut matrix = Matrix::default();
        let tx = db.begin_read().map_err(|e| err(e.into()))?;
        let table = tx.open_table(POINTS).map_err(|e| err(e.into()))?;
        for entry in table.iter().map_err(|e| err(e.into()))? {
            let (key, value) = entry.map_err(|e| err(e.into()))?;
            let (vector, payload) =
                decode(value.value(), dim).ok_or_else(|| VectorError::Invalid {
                    store: path.display().to_string(),
                    reason: format!(
                        "point `{}` is not a {dim}-d vector with a payload",
                        key.value()
                    ),
                })?;
            matrix.put(payload, &vector, dim);
        }
        Ok(EmbeddedStore {
            path: path.to_path_buf(),
            dim,
            db: Arc::new(db),
            matrix: Arc::new(RwLock::new(matrix)),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> VectorError {
        VectorError::Embedded {
            path: self.path.display().to_string(),
            source: e.into(),
        }
    }

    /// Runs a write transaction on the blocking pool.
    async fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<(), redb::Error> + Send + 'static,
    ) -> Result<(), VectorError> {
        let db = self.db.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            {
                let mut table = tx.open_table(POINTS)?;
                f(&mut table)?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
        .map_err(|e| VectorError::Invalid {
            store: self.describe(),
            reason: format!("write task failed: {e}"),
        })?;
        result.map_err(|e| self.err(e))
    }
}

fn encode(vector: &[f32], payload: &Payload) -> Vec<u8> {
    let mut out: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    out.extend(serde_json::to_vec(payload).expect("payload serialises"));
    out
}

fn decode(bytes: &[u8], dim: usize) -> Option<(Vec<f32>, Payload)> {
    let (head, tail) = bytes.split_at_checked(dim * 4)?;
    let vector = head
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Some((vector, serde_json::from_slice(tail).ok()?))
}

/// A candidate in the bounded heap: the smallest score on top, so it is the one replaced.
struct Candidate(f32, usize);

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap; ties keep the earlier row.
        other.0.total_cmp(&self.0).then(self.1.cmp(&other.1))
    }
}

#[async_trait]
impl VectorStore for EmbeddedStore {
    fn describe(&self) -> String {
        format!("embedded vector store {}", self.path.display())
    }

    fn dim(&self) -> usize {
        self.dim
    }

    async fn upsert(&self, points: &[Point]) -> Result<(), VectorError> {
        let mut rows = Vec::with_capacity(points.len());
        for p in points {
            check_dim(self, p.vector.len())?;
            rows.push((p.payload.clone(), normalized(&p.vector)));
        }
        let encoded: Vec<(String, Vec<u8>)> = rows
            .iter()
            .map(|(payload, v)| (payload.track_id.clone(), encode(v, payload)))
            .collect();
        self.write(move |table| {
            for (id, bytes) in &encoded {
                table.insert(id.as_str(), bytes.as_slice())?;
            }
            Ok(())
        })
        .await?;
        let mut matrix = self.matrix.write().expect("vector matrix lock");
        for (payload, v) in rows {
            matrix.put(payload, &v, self.dim);
        }
        Ok(())
    }

    async fn delete(&self, track_ids: &[String]) -> Result<(), VectorError> {
        let ids = track_ids.to_vec();
        self.write(move |table| {
            for id in &ids {
                table.remove(id.as_str())?;
            }
            Ok(())
        })
        .await?;
        let mut matrix = self.matrix.write().expect("vector matrix lock");
        for id in track_ids {
            matrix.remove(id, self.dim);
        }
        Ok(())
    }

    async fn vector(&self, track_id: &str) -> Result<Option<Vec<f32>>, VectorError> {
        let matrix = self.matrix.read().expect("vector matrix lock");
        Ok(matrix
            .index
            .get(track_id)
            .map(|&i| matrix.row(i, self.dim).to_vec()))
    }

    async fn search(
        &self,
        vector: &[f32],
        limit: usize,
        exclude: &[String],
    ) -> Result<Vec<Hit>, VectorError> {
        check_dim(self, vector.len())?;
        let query = normalized(vector);
        let (matrix, dim) = (self.matrix.clone(), self.dim);
        let exclude = exclude.to_vec();
        let found = tokio::task::spawn_blocking(move || {
            let matrix = matrix.read().expect("vector matrix lock");
            let excluded: HashSet<usize> = exclude
                .iter()
                .filter_map(|id| matrix.index.get(id).copied())
                .collect();
            matrix
                .search(&query, limit, &excluded, dim)
                .into_iter()
                .map(|Candidate(score, i)| Hit {
                    payload: matrix.payloads[i].clone(),
                    score,
                })
                .collect()
        })
        .await
        .map_err(|e| VectorError::Invalid {
            store: self.describe(),
            reason: format!("search task failed: {e}"),
        })?;
        Ok(found)
    }

    async fn count(&self) -> Result<u64, VectorError> {
        Ok(self
            .matrix
            .read()
            .expect("vector matrix lock")
            .payloads
            .len() as u64)
    }
}
