//! Ranking metrics at a cut-off, with binary relevance (the standard offline protocol).

use serde::{Deserialize, Serialize};

/// Sums of per-user metrics (divide by `users` for the means).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricSums {
    pub users: u64,
    pub precision: f64,
    pub recall: f64,
    pub ndcg: f64,
    pub map: f64,
}

/// Means of [`MetricSums`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub users: u64,
    pub precision_at_10: f64,
    pub recall_at_10: f64,
    pub ndcg_at_10: f64,
    pub map_at_10: f64,
}

impl MetricSums {
    /// Adds one user: `ranked` is the top-k list (best first), `relevant` tells whether an item is
    /// in the user's test set, `n_relevant` the test set's size (> 0).
    pub fn add(
        &mut self,
        ranked: &[u32],
        relevant: impl Fn(u32) -> bool,
        n_relevant: usize,
        k: usize,
    ) {
        let (mut hits, mut dcg, mut ap) = (0usize, 0.0f64, 0.0f64);
        for (pos, &item) in ranked.iter().take(k).enumerate() {
            if relevant(item) {
                hits += 1;
                dcg += 1.0 / ((pos + 2) as f64).log2();
                ap += hits as f64 / (pos + 1) as f64;
            }
        }
        let ideal = n_relevant.min(k);
        let idcg: f64 = (0..ideal).map(|pos| 1.0 / ((pos + 2) as f64).log2()).sum();
        self.users += 1;
        self.precision += hits as f64 / k as f64;
        self.recall += hits as f64 / n_relevant as f64;
        self.ndcg += if idcg > 0.0 { dcg / idcg } else { 0.0 };
        self.map += if ideal > 0 { ap / ideal as f64 } else { 0.0 };
    }

    pub fn merge(&mut self, other: &MetricSums) {
        self.users += other.users;
        self.precision += other.precision;
        self.recall += other.recall;
        self.ndcg += other.ndcg;
        self.map += other.map;
    }

    pub fn means(&self) -> Metrics {
        let n = self.users.max(1) as f64;
        Metrics {
            users: self.users,
            precision_at_10: self.precision / n,
            recall_at_10: self.recall / n,
            ndcg_at_10: self.ndcg / n,
            map_at_10: self.map / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_user() {
        // Ranked [a, b, c, d]; relevant {b, d, z} (z never ranked); k = 4.
        let mut m = MetricSums::default();
        m.add(&[10, 11, 12, 13], |i| [11, 13, 99].contains(&i), 3, 4);
        let r = m.means();
        assert_eq!(r.precision_at_10, 0.5);
        assert!((r.recall_at_10 - 2.0 / 3.0).abs() < 1e-12);
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 1.0 / 4f64.log2();
        assert!((r.ndcg_at_10 - dcg / idcg).abs() < 1e-12);
        // AP: hits at ranks 2 and 4 → (1/2 + 2/4) / min(3, 4).
        assert!((r.map_at_10 - (0.5 + 0.5) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn perfect_and_empty() {
        let mut m = MetricSums::default();
        m.add(&[1, 2], |i| i <= 2, 2, 10);
        m.add(&[5, 6], |_| false, 1, 10);
        let r = m.means();
        assert_eq!(r.users, 2);
        assert_eq!(r.ndcg_at_10, 0.5);
        assert_eq!(r.map_at_10, 0.5);
    }
}
