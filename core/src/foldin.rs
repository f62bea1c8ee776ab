//! Real-time fold-in: a user without an ALS factor but with some plays gets the factor ALS
//! itself would give them, solved against the fixed item factors (one exact least-squares
//! solve: (YᵀY + Σ (c_i − 1) y_i y_iᵀ + λI) x = Σ c_i y_i), so new users are personalised at
//! once, not after the next train.

use crate::linalg::{Row, add_gram};

/// Item factors and the training settings a fold-in needs.
pub struct ItemFactors {
    pub k: usize,
    /// Row-major, one row per item.
    pub y: Vec<f32>,
    /// YᵀY (k × k).
    pub gram: Vec<f32>,
    pub reg: f32,
    /// λ × the user's number of ratings (ALS's `--reg-scaling count`, the default) instead of λ.
    pub reg_per_rating: bool,
    /// Confidence of a rating: c = 1 + alpha · ln(1 + r / epsilon) with `Some(epsilon)` (the
    /// default log form), c = 1 + alpha · r with `None`.
    pub alpha: f32,
    pub epsilon: Option<f32>,
}

impl ItemFactors {
    pub fn new(
        k: usize,
        y: Vec<f32>,
        reg: f32,
        reg_per_rating: bool,
        alpha: f32,
        epsilon: Option<f32>,
    ) -> Self {
        let mut gram = vec![0.0; k * k];
        add_gram(&y, k, &mut gram);
        ItemFactors {
            k,
            y,
            gram,
            reg,
            reg_per_rating,
            alpha,
            epsilon,
        }
    }

    pub fn confidence(&self, rating: f32) -> f32 {
        match self.epsilon {
            Some(epsilon) => 1.0 + self.alpha * (1.0 + rating / epsilon).ln(),
            None => 1.0 + self.alpha * rating,
        }
    }

    /// The factor of a user with `ratings` (item index, rating); `None` without ratings.
    pub fn fold_in(&self, ratings: &[(u32, f32)]) -> Option<Vec<f32>> {
        if ratings.is_empty() {
            return None;
        }
        let items: Vec<u32> = ratings.iter().map(|(i, _)| *i).collect();
        let conf: Vec<f32> = ratings.iter().map(|(_, r)| self.confidence(*r)).collect();
        let row = Row {
            k: self.k,
            gram: &self.gram,
            y: &self.y,
            items: &items,
            conf: &conf,
            reg: if self.reg_per_rating {
                self.reg * ratings.len() as f32
            } else {
                self.reg
            },
        };
        let mut x = vec![0.0; self.k];
        let mut scratch = Vec::new();
        row.solve_exact(&mut x, &mut scratch);
        Some(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_in_solves_the_normal_equations() {
        // Three items in 2-d; the user played item 0 a lot and item 2 once.
        let y = vec![1.0, 0.0, 0.0, 1.0, 0.7, 0.7];
        let f = ItemFactors::new(2, y.clone(), 0.1, false, 1.0, Some(1.0));
        let ratings = [(0u32, 10.0f32), (2, 1.0)];
        let x = f.fold_in(&ratings).unwrap();
        // Check A x = b directly.
        let c: Vec<f32> = ratings.iter().map(|(_, r)| f.confidence(*r)).collect();
        let mut a = f.gram.clone();
        for ((i, _), ci) in ratings.iter().zip(&c) {
            let yi = &y[*i as usize * 2..*i as usize * 2 + 2];
            for p in 0..2 {
                for q in 0..2 {
                    a[p * 2 + q] += (ci - 1.0) * yi[p] * yi[q];
                }
            }
        }
        a[0] += 0.1;
        a[3] += 0.1;
        for p in 0..2 {
            let lhs: f32 = (0..2).map(|q| a[p * 2 + q] * x[q]).sum();
            let rhs: f32 = ratings
                .iter()
                .zip(&c)
                .map(|((i, _), ci)| ci * y[*i as usize * 2 + p])
                .sum();
            assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
        }
        // The folded-in user prefers what they played.
        let score = |i: usize| x[0] * y[i * 2] + x[1] * y[i * 2 + 1];
        assert!(score(0) > score(1));
        assert!(f.fold_in(&[]).is_none());
        // Count scaling: λ × 2 ratings shrinks the factor.
        let scaled = ItemFactors::new(2, y.clone(), 0.1, true, 1.0, Some(1.0));
        let xs = scaled.fold_in(&ratings).unwrap();
        assert!(xs[0].abs() < x[0].abs());
    }
}
