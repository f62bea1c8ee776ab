//! Dense f32 kernels of implicit ALS, written so the compiler vectorises them: contiguous
//! factor rows, several independent accumulators, no bounds checks in inner loops.

/// a · b.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// y += alpha · x.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// out = G · v for a k×k row-major matrix G.
#[inline]
pub fn matvec(g: &[f32], v: &[f32], out: &mut [f32]) {
    let k = v.len();
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot(&g[j * k..(j + 1) * k], v);
    }
}

/// Adds Fᵀ F of the row-major `rows × k` matrix `f` into the k×k matrix `gram`.
pub fn add_gram(f: &[f32], k: usize, gram: &mut [f32]) {
    debug_assert_eq!(gram.len(), k * k);
    for row in f.chunks_exact(k) {
        for (j, &rj) in row.iter().enumerate() {
            if rj != 0.0 {
                axpy(rj, row, &mut gram[j * k..(j + 1) * k]);
            }
        }
    }
}

/// The normal equations of one row of implicit ALS with the other side's factors `y` (rows of
/// length k): A = G + Σ (c_i − 1) y_i y_iᵀ + λ I and b = Σ c_i y_i, over the row's observed items
/// `items` with confidences `conf`.
pub struct Row<'a> {
    pub gram: &'a [f32],
    pub y: &'a [f32],
    pub items: &'a [u32],
    pub conf: &'a [f32],
    pub reg: f32,
}

impl Row<'_> {
    fn k(&self) -> usize {
        (self.gram.len() as f64).sqrt() as usize
    }

    fn item(&self, i: u32) -> &[f32] {
        let k = self.k();
        &self.y[i as usize * k..(i as usize + 1) * k]
    }

    /// out = A v.
    pub fn apply(&self, v: &[f32], out: &mut [f32]) {
        matvec(self.gram, v, out);
        axpy(self.reg, v, out);
        for (&i, &c) in self.items.iter().zip(self.conf) {
            let yi = self.item(i);
            axpy((c - 1.0) * dot(yi, v), yi, out);
        }
    }

    /// b = Σ c_i y_i.
    pub fn rhs(&self, out: &mut [f32]) {
        out.fill(0.0);
        for (&i, &c) in self.items.iter().zip(self.conf) {
            axpy(c, self.item(i), out);
        }
    }

    /// `steps` conjugate-gradient steps on A x = b, warm-started from `x`.
    pub fn solve_cg(&self, x: &mut [f32], steps: usize, scratch: &mut CgScratch) {
        let CgScratch { r, p, ap } = scratch;
        self.rhs(r);
        self.apply(x, ap);
        for (ri, api) in r.iter_mut().zip(ap.iter()) {
            *ri -= api;
        }
        p.copy_from_slice(r);
        let mut rs_old = dot(r, r);
        for _ in 0..steps {
            if rs_old < 1e-20 {
                break;
            }
            self.apply(p, ap);
            let alpha = rs_old / dot(p, ap);
            axpy(alpha, p, x);
            axpy(-alpha, ap, r);
            let rs_new = dot(r, r);
            let beta = rs_new / rs_old;
            for (pi, ri) in p.iter_mut().zip(r.iter()) {
                *pi = ri + beta * *pi;
            }
            rs_old = rs_new;
        }
    }

    /// The exact solution by Cholesky factorisation of A (k³/3 flops).
    pub fn solve_exact(&self, x: &mut [f32], a: &mut Vec<f32>) {
        let k = self.k();
        a.clear();
        a.extend_from_slice(self.gram);
        for j in 0..k {
            a[j * k + j] += self.reg;
        }
        for (&i, &c) in self.items.iter().zip(self.conf) {
            let yi = self.item(i);
            for (j, &yij) in yi.iter().enumerate() {
                axpy((c - 1.0) * yij, yi, &mut a[j * k..(j + 1) * k]);
            }
        }
        self.rhs(x);
        cholesky_solve(a, k, x);
    }
}

/// Work vectors of [`Row::solve_cg`], reused across rows.
pub struct CgScratch {
    r: Vec<f32>,
    p: Vec<f32>,
    ap: Vec<f32>,
}

impl CgScratch {
    pub fn new(k: usize) -> Self {
        CgScratch {
            r: vec![0.0; k],
            p: vec![0.0; k],
            ap: vec![0.0; k],
        }
    }
}

/// Solves A x = b in place (b given in `x`) for a symmetric positive-definite row-major A,
/// overwriting A with its Cholesky factor. Accumulates in f64 for stability.
pub fn cholesky_solve(a: &mut [f32], k: usize, x: &mut [f32]) {
    for j in 0..k {
        let mut d = a[j * k + j] as f64;
        for l in 0..j {
            d -= (a[j * k + l] as f64).powi(2);
        }
        let d = d.max(1e-12).sqrt();
        a[j * k + j] = d as f32;
        for i in j + 1..k {
            let mut s = a[i * k + j] as f64;
            for l in 0..j {
                s -= a[i * k + l] as f64 * a[j * k + l] as f64;
            }
            a[i * k + j] = (s / d) as f32;
        }
    }
    // L z = b, then Lᵀ x = z.
    for i in 0..k {
        let mut s = x[i] as f64;
        for l in 0..i {
            s -= a[i * k + l] as f64 * x[l] as f64;
        }
        x[i] = (s / a[i * k + i] as f64) as f32;
    }
    for i in (0..k).rev() {
        let mut s = x[i] as f64;
        for l in i + 1..k {
            s -= a[l * k + i] as f64 * x[l] as f64;
        }
        x[i] = (s / a[i * k + i] as f64) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn kernels() {
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..37).map(|i| (37 - i) as f32).collect();
        let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert_eq!(dot(&a, &b), want);
        let f = [1.0, 2.0, 3.0, 4.0]; // 2 rows, k = 2
        let mut g = vec![0.0; 4];
        add_gram(&f, 2, &mut g);
        assert_eq!(g, vec![10.0, 14.0, 14.0, 20.0]);
    }

    #[test]
    fn cg_converges_to_the_exact_solution() {
        let (k, n) = (16, 60);
        let mut seed = 7;
        let y: Vec<f32> = (0..n * k).map(|_| lcg(&mut seed)).collect();
        let mut gram = vec![0.0; k * k];
        add_gram(&y, k, &mut gram);
        let items: Vec<u32> = (0..n as u32).step_by(3).collect();
        let conf: Vec<f32> = items.iter().map(|&i| 1.0 + 40.0 * (1 + i % 4) as f32).collect();
        let row = Row {
            gram: &gram,
            y: &y,
            items: &items,
            conf: &conf,
            reg: 0.1,
        };
        let mut exact = vec![0.0; k];
        row.solve_exact(&mut exact, &mut Vec::new());
        // The exact solution satisfies A x = b.
        let (mut ax, mut b) = (vec![0.0; k], vec![0.0; k]);
        row.apply(&exact, &mut ax);
        row.rhs(&mut b);
        for (p, q) in ax.iter().zip(&b) {
            assert!((p - q).abs() < 1e-2 * q.abs().max(1.0), "{p} vs {q}");
        }
        // Enough CG steps reach it from zero.
        let mut x = vec![0.0; k];
        row.solve_cg(&mut x, 3 * k, &mut CgScratch::new(k));
        for (p, q) in x.iter().zip(&exact) {
            assert!((p - q).abs() < 1e-3 * q.abs().max(1.0), "{p} vs {q}");
        }
    }
}
