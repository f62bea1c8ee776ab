//! Dense f32 kernels (implicit ALS solves, vector scoring): contiguous rows, several independent accumulators,
//! and AVX2 + FMA or AVX-512 versions chosen at run time (the portable build targets plain
//! x86-64), so one binary runs everywhere and uses the widest vectors it finds.

/// The widest kernels this CPU runs (checked once): 0 portable, 1 AVX2 + FMA, 2 AVX-512 (F and
/// BW).
fn level() -> u8 {
    #[cfg(target_arch = "x86_64")]
    {
        static LEVEL: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
        *LEVEL.get_or_init(|| {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") {
                2
            } else if has!("avx2") && has!("fma") {
                1
            } else {
                0
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// a · b.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU has the features (checked by `level`); lengths are equal.
        2 => return unsafe { avx512::dot(a, b) },
        1 => return unsafe { avx::dot(a, b) },
        _ => {}
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

/// `out[i]` = row `i` of `rows` (row-major, `v.len()` columns) · `v`: one scoring pass over a
/// matrix, the kernel chosen once.
pub fn dots(rows: &[f32], v: &[f32], out: &mut [f32]) {
    let k = v.len();
    assert_eq!(rows.len(), k * out.len());
    if k == 0 {
        out.fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU has the features (checked by `level`); every row has `k` values.
        2 => return unsafe { avx512::dots(rows, v, out) },
        1 => return unsafe { avx::dots(rows, v, out) },
        _ => {}
    }
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(k)) {
        *o = dot(v, r);
    }
}

/// [`dots`] over 8-bit codes.
pub fn dots_i8(rows: &[i8], v: &[i8], out: &mut [i32]) {
    let k = v.len();
    assert_eq!(rows.len(), k * out.len());
    if k == 0 {
        out.fill(0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU has the features (checked by `level`).
        2 => return unsafe { avx512::dots_i8(rows, v, out) },
        1 => return unsafe { avx::dots_i8(rows, v, out) },
        _ => {}
    }
    for (o, r) in out.iter_mut().zip(rows.chunks_exact(k)) {
        *o = dot_i8_portable(v, r);
    }
}

/// The loop the compiler vectorises (widening multiply-adds) for each feature level.
#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x) * i32::from(y))
        .sum()
}

/// The `k` best items by `score`, best first (ties: lower index first), skipping `excluded`.
pub fn top_k(scores: &[f32], k: usize, excluded: impl Fn(u32) -> bool) -> Vec<u32> {
    if k == 0 {
        return vec![];
    }
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (i, &s) in scores.iter().enumerate() {
        if best.len() == k && s <= best[k - 1].0 {
            continue;
        }
        if excluded(i as u32) {
            continue;
        }
        let pos = best.partition_point(|&(b, _)| b >= s);
        best.insert(pos, (s, i as u32));
        best.truncate(k);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

/// y += alpha · x.
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU has the features (checked by `level`); lengths are equal.
        2 => return unsafe { avx512::axpy(alpha, x, y) },
        1 => return unsafe { avx::axpy(alpha, x, y) },
        _ => {}
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
    match level() {
        // SAFETY: the CPU has the features (checked by `level`); sizes are checked above.
        2 => return unsafe { avx512::matvec(g, v, out) },
        1 => return unsafe { avx::matvec(g, v, out) },
        _ => {}
    }
    out.fill(0.0);
    for (l, &vl) in v.iter().enumerate() {
        for (o, gl) in out.iter_mut().zip(&g[l * k..(l + 1) * k]) {
            *o += vl * gl;
        }
    }
}

/// out += Σ_i (a(c_i) + b(c_i) · y_i·v) · y_i over the rows `items` of `y` (row length k), with
/// confidences `conf`: the per-rating part of both A·v (a = 0, b = c − 1) and of the initial
/// CG residual b − A·x (a = c, b = −(c − 1)).
#[inline]
pub fn accumulate_ratings(
    y: &[f32],
    k: usize,
    items: &[u32],
    conf: &[f32],
    residual: bool,
    v: &[f32],
    out: &mut [f32],
) {
    assert_eq!(v.len(), k);
    assert_eq!(out.len(), k);
    assert_eq!(items.len(), conf.len());
    assert!(items.iter().all(|&i| (i as usize + 1) * k <= y.len()));
    #[cfg(target_arch = "x86_64")]
    match level() {
        // SAFETY: the CPU has the features (checked by `level`); every row index is inside y.
        2 => return unsafe { avx512::accumulate_ratings(y, k, items, conf, residual, v, out) },
        1 => return unsafe { avx::accumulate_ratings(y, k, items, conf, residual, v, out) },
        _ => {}
    }
    for (&i, &c) in items.iter().zip(conf) {
        let yi = &y[i as usize * k..(i as usize + 1) * k];
        let s = dot(yi, v);
        let w = if residual {
            c - (c - 1.0) * s
        } else {
            (c - 1.0) * s
        };
        axpy(w, yi, out);
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

/// `accumulate_ratings` for a SIMD module, built on that module's `dot` and `axpy`.
#[cfg(target_arch = "x86_64")]
macro_rules! accumulate_ratings_with {
    ($features:literal) => {
        /// # Safety
        /// Needs the module's CPU features; `v` and `out` have length k; every
        /// `(i + 1)·k <= y.len()`.
        #[target_feature(enable = $features)]
        pub unsafe fn accumulate_ratings(
            y: &[f32],
            k: usize,
            items: &[u32],
            conf: &[f32],
            residual: bool,
            v: &[f32],
            out: &mut [f32],
        ) {
            for (&i, &c) in items.iter().zip(conf) {
                let yi = &y[i as usize * k..(i as usize + 1) * k];
                // SAFETY: yi, v and out all have length k; the features are enabled here.
                unsafe {
                    let s = dot(yi, v);
                    let w = if residual {
                        c - (c - 1.0) * s
                    } else {
                        (c - 1.0) * s
                    };
                    axpy(w, yi, out);
                }
            }
        }
    };
}

/// AVX2 + FMA versions of the kernels: 8 lanes per register, several accumulators.
#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// # Safety
    /// Needs AVX2; `rows` holds `out.len()` rows of `v.len()` > 0 codes.
    #[target_feature(enable = "avx2")]
    pub unsafe fn dots_i8(rows: &[i8], v: &[i8], out: &mut [i32]) {
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(v.len())) {
            *o = super::dot_i8_portable(v, r);
        }
    }

    /// # Safety
    /// Needs AVX2 and FMA; `rows` holds `out.len()` rows of `v.len()` > 0 values.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots(rows: &[f32], v: &[f32], out: &mut [f32]) {
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(v.len())) {
            // SAFETY: same features; equal lengths.
            *o = unsafe { dot(v, r) };
        }
    }

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

    accumulate_ratings_with!("avx2,fma");

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

/// AVX-512 versions: 16 lanes per register (a rank-64 row is four registers).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// # Safety
    /// Needs AVX-512F and AVX-512BW; `rows` holds `out.len()` rows of `v.len()` > 0 codes.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn dots_i8(rows: &[i8], v: &[i8], out: &mut [i32]) {
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(v.len())) {
            *o = super::dot_i8_portable(v, r);
        }
    }

    /// # Safety
    /// Needs AVX-512F; `rows` holds `out.len()` rows of `v.len()` > 0 values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots(rows: &[f32], v: &[f32], out: &mut [f32]) {
        for (o, r) in out.iter_mut().zip(rows.chunks_exact(v.len())) {
            // SAFETY: same features; equal lengths.
            *o = unsafe { dot(v, r) };
        }
    }

    /// # Safety
    /// Needs AVX-512F; `a` and `b` of equal length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads): i + 32 <= n (or i + 16 <= n) keeps them inside both slices.
        unsafe {
            while i + 32 <= n {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
                acc1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                    acc1,
                );
                i += 32;
            }
            while i + 16 <= n {
                acc0 =
                    _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc0);
                i += 16;
            }
            let mut s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
            while i < n {
                s += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            s
        }
    }

    /// # Safety
    /// Needs AVX-512F; `x` and `y` of equal length.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len();
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let a = _mm512_set1_ps(alpha);
        let mut i = 0;
        // SAFETY: i + 16 <= n keeps every access inside both slices.
        unsafe {
            while i + 16 <= n {
                let v = _mm512_fmadd_ps(a, _mm512_loadu_ps(px.add(i)), _mm512_loadu_ps(py.add(i)));
                _mm512_storeu_ps(py.add(i), v);
                i += 16;
            }
            while i < n {
                *py.add(i) += alpha * *px.add(i);
                i += 1;
            }
        }
    }

    /// # Safety
    /// Needs AVX-512F; `g` is k×k, `v` and `out` have length k.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn matvec(g: &[f32], v: &[f32], out: &mut [f32]) {
        let k = v.len();
        let pg = g.as_ptr();
        let po = out.as_mut_ptr();
        let mut col = 0;
        // Panels of 64 output columns stay in four registers while all k rows stream by.
        // SAFETY (all accesses): col + 64 <= k (or + 16), l < k: inside row l of g and out.
        unsafe {
            while col + 64 <= k {
                let mut acc = [_mm512_setzero_ps(); 4];
                for (l, &vl) in v.iter().enumerate() {
                    let b = _mm512_set1_ps(vl);
                    let row = pg.add(l * k + col);
                    for (j, a) in acc.iter_mut().enumerate() {
                        *a = _mm512_fmadd_ps(b, _mm512_loadu_ps(row.add(16 * j)), *a);
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    _mm512_storeu_ps(po.add(col + 16 * j), *a);
                }
                col += 64;
            }
            while col + 16 <= k {
                let mut acc = _mm512_setzero_ps();
                for (l, &vl) in v.iter().enumerate() {
                    acc = _mm512_fmadd_ps(
                        _mm512_set1_ps(vl),
                        _mm512_loadu_ps(pg.add(l * k + col)),
                        acc,
                    );
                }
                _mm512_storeu_ps(po.add(col), acc);
                col += 16;
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

    accumulate_ratings_with!("avx512f");
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
        accumulate_ratings(self.y, self.k, self.items, self.conf, false, v, out);
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
        // Rows with many ratings gather their item factors once into a contiguous buffer (which
        // stays in cache) instead of reading scattered rows of a large matrix 1 + steps times.
        if self.items.len() >= GATHER_FROM && self.y.len() > GATHER_MATRIX_FLOATS {
            let CgScratch {
                gathered, index, ..
            } = scratch;
            gathered.clear();
            for &i in self.items {
                gathered.extend_from_slice(self.item(i));
            }
            index.clear();
            index.extend(0..self.items.len() as u32);
            let (gathered, index) = (std::mem::take(gathered), std::mem::take(index));
            let local = Row {
                y: &gathered,
                items: &index,
                ..*self
            };
            local.solve_cg_inner(x, steps, scratch);
            scratch.gathered = gathered;
            scratch.index = index;
        } else {
            self.solve_cg_inner(x, steps, scratch);
        }
    }

    fn solve_cg_inner(&self, x: &mut [f32], steps: usize, scratch: &mut CgScratch) {
        let CgScratch { r, p, ap, .. } = scratch;
        // r = b − A x in one pass over the ratings:
        // −(G + λI) x + Σ_i (c_i − (c_i − 1) y_i·x) y_i.
        matvec(self.gram, x, r);
        for (ri, xi) in r.iter_mut().zip(x.iter()) {
            *ri = -*ri - self.reg * xi;
        }
        accumulate_ratings(self.y, self.k, self.items, self.conf, true, x, r);
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

/// Rows with at least this many ratings gather their factors (see [`Row::solve_cg`]).
const GATHER_FROM: usize = 32;
/// ... when the other side's matrix is larger than this (floats; ~1 MB, beyond L2 reach).
const GATHER_MATRIX_FLOATS: usize = 256 * 1024;

/// Work vectors of [`Row::solve_cg`], reused across rows.
pub struct CgScratch {
    r: Vec<f32>,
    p: Vec<f32>,
    ap: Vec<f32>,
    gathered: Vec<f32>,
    index: Vec<u32>,
}

impl CgScratch {
    pub fn new(k: usize) -> Self {
        CgScratch {
            r: vec![0.0; k],
            p: vec![0.0; k],
            ap: vec![0.0; k],
            gathered: Vec::new(),
            index: Vec::new(),
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

    #[test]
    fn matrix_passes_match_row_by_row_dots() {
        let k = 37;
        let rows: Vec<f32> = (0..k * 5).map(|i| ((i * 13) % 17) as f32 - 8.0).collect();
        let v: Vec<f32> = (0..k).map(|i| (i % 5) as f32 * 0.5).collect();
        let mut out = vec![0.0; 5];
        dots(&rows, &v, &mut out);
        for (i, o) in out.iter().enumerate() {
            assert_eq!(*o, dot(&v, &rows[i * k..(i + 1) * k]));
        }
    }

    #[test]
    fn int8_passes_match_the_scalar_sums() {
        for k in [1, 31, 64, 384, 1001] {
            let rows: Vec<i8> = (0..3 * k)
                .map(|i| ((i * 37 + 11) % 255) as u8 as i8)
                .collect();
            let v: Vec<i8> = (0..k).map(|i| ((i * 91 + 5) % 255) as u8 as i8).collect();
            let mut out = vec![0; 3];
            dots_i8(&rows, &v, &mut out);
            for (r, o) in out.iter().enumerate() {
                let row = &rows[r * k..(r + 1) * k];
                let want: i32 = row.iter().zip(&v).map(|(&x, &y)| x as i32 * y as i32).sum();
                assert_eq!(*o, want, "k = {k}, row {r}");
            }
        }
    }

    #[test]
    fn top_k_orders_and_excludes() {
        let scores = [0.1, 0.9, 0.5, 0.9, 0.7];
        assert_eq!(top_k(&scores, 3, |_| false), vec![1, 3, 4]);
        assert_eq!(top_k(&scores, 3, |i| i == 1), vec![3, 4, 2]);
        assert_eq!(top_k(&scores, 10, |_| false).len(), 5);
    }

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
