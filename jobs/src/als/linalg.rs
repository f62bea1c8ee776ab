//! Dense f32 kernels of implicit ALS, written so the compiler vectorises them: contiguous
//! factor rows, several independent accumulators, no bounds checks in inner loops.

/// Whether the AVX2 + FMA kernels can run here (checked once).
fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static SIMD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SIMD.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// a · b.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA are available (checked by `simd`); lengths are equal.
        return unsafe { avx::dot(a, b) };
    }
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + ar.iter().zip(br).map(|(x, y)| x * y).sum::<f32>()
}

/// y += alpha · x.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA are available (checked by `simd`); lengths are equal.
        return unsafe { avx::axpy(alpha, x, y) };
    }
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// out = G · v for a symmetric k×k row-major matrix G (computed as Σ_l v_l · G[l, :]).
#[inline]
pub fn matvec(g: &[f32], v: &[f32], out: &mut [f32]) {
    let k = v.len();
    assert_eq!(g.len(), k * k);
    assert_eq!(out.len(), k);
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA are available (checked by `simd`); sizes are checked above.
        return unsafe { avx::matvec(g, v, out) };
    }
    out.fill(0.0);
    for (l, &vl) in v.iter().enumerate() {
        for (o, gl) in out.iter_mut().zip(&g[l * k..(l + 1) * k]) {
            *o += vl * gl;
        }
    }
}

/// Adds Fᵀ F of the row-major `rows × k` matrix `f` into the k×k matrix `gram`.
pub fn add_gram(f: &[f32], k: usize, gram: &mut [f32]) {
    assert_eq!(gram.len(), k * k);
    for row in f.chunks_exact(k) {
        for (j, &rj) in row.iter().enumerate() {
            if rj != 0.0 {
                axpy(rj, row, &mut gram[j * k..(j + 1) * k]);
            }
        }
    }
}

/// AVX2 + FMA versions of the kernels: 8 lanes per register, several accumulators.
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// Needs AVX2 and FMA; `a` and `b` of equal length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 32 <= n (or i + 8 <= n) keeps them inside both slices.
        unsafe {
            while i + 32 <= n {
                for (j, a_j) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                    let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                    *a_j = _mm256_fmadd_ps(x, y, *a_j);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                    acc[0],
                );
                i += 8;
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut s = hsum(sum);
            while i < n {
                s += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            s
        }
    }

    /// # Safety
    /// Needs AVX2 and FMA; `x` and `y` of equal length.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let a = _mm256_set1_ps(alpha);
        let mut i = 0;
        // SAFETY: i + 8 <= n keeps every access inside both slices.
        unsafe {
            while i + 8 <= n {
                let v = _mm256_fmadd_ps(a, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
                _mm256_storeu_ps(py.add(i), v);
                i += 8;
            }
            while i < n {
                *py.add(i) += alpha * *px.add(i);
                i += 1;
            }
        }
    }

    /// # Safety
    /// Needs AVX2 and FMA; `g` is k×k, `v` and `out` have length k.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn matvec(g: &[f32], v: &[f32], out: &mut [f32]) {
        let k = v.len();
        let pg = g.as_ptr();
        let po = out.as_mut_ptr();
        let mut col = 0;
        // Panels of 32 output columns stay in four registers while all k rows stream by.
        // SAFETY (all accesses): col + 32 <= k, l < k, so every load is inside row l of g and
        // every store inside out.
        unsafe {
            while col + 32 <= k {
                let mut acc = [_mm256_setzero_ps(); 4];
                for (l, &vl) in v.iter().enumerate() {
                    let b = _mm256_set1_ps(vl);
                    let row = pg.add(l * k + col);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(b, _mm256_loadu_ps(row.add(8 * j)), *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(po.add(col + 8 * j), *a);
                }
                col += 32;
            }
            for c in col..k {
                let mut s = 0.0;
                for (l, &vl) in v.iter().enumerate() {
                    s += vl * *pg.add(l * k + c);
                }
                *po.add(c) = s;
            }
        }
    }
}

/// The normal equations of one row of implicit ALS with the other side's factors `y` (rows of
/// length k): A = G + Σ (c_i − 1) y_i y_iᵀ + λ I and b = Σ c_i y_i, over the row's observed items
/// `items` with confidences `conf`.
pub struct Row<'a> {
    pub k: usize,
    pub gram: &'a [f32],
    pub y: &'a [f32],
    pub items: &'a [u32],
    pub conf: &'a [f32],
    pub reg: f32,
}

impl Row<'_> {
    #[inline]
    fn item(&self, i: u32) -> &[f32] {
        let k = self.k;
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
        let k = self.k;
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
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    #[test]
    fn kernels() {
        for n in [0, 1, 7, 8, 31, 32, 37, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
            let b: Vec<f32> = (0..n).map(|i| (n - i) as f32).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(dot(&a, &b), want, "n={n}");
            let mut y = b.clone();
            axpy(2.0, &a, &mut y);
            assert!(
                y.iter()
                    .zip(&a)
                    .zip(&b)
                    .all(|((y, a), b)| *y == b + 2.0 * a)
            );
        }
        let g = [1.0, 2.0, 2.0, 5.0];
        let mut out = [0.0; 2];
        matvec(&g, &[1.0, 1.0], &mut out);
        assert_eq!(out, [3.0, 7.0]);
        // A symmetric 40×40 matrix exercises the 32-column panels and the tail.
        let k = 40;
        let g: Vec<f32> = (0..k * k).map(|i| ((i / k) + (i % k)) as f32).collect();
        let v: Vec<f32> = (0..k).map(|i| i as f32 * 0.5).collect();
        let mut out = vec![0.0; k];
        matvec(&g, &v, &mut out);
        for (j, o) in out.iter().enumerate() {
            let want: f32 = (0..k).map(|l| g[l * k + j] * v[l]).sum();
            assert!((o - want).abs() < 1e-3, "{j}: {o} vs {want}");
        }
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
        let conf: Vec<f32> = items
            .iter()
            .map(|&i| 1.0 + 40.0 * (1 + i % 4) as f32)
            .collect();
        let row = Row {
            k,
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
