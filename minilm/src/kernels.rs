//! The two places where burn-flex's generic kernels lose to PyTorch on this model, replaced by
//! kernels over the raw buffers:
//! - **GELU**: burn's exact GELU calls scalar `erff` per element (15 % of the time);
//!   [`gelu_in_place`] uses a rational erf approximation (a few ulp on [-4, 4], ±1 outside)
//!   that vectorises;
//! - **attention**: reads Q, K and V straight out of the fused `[b, len, 3, heads, head_dim]`
//!   projection (no permute copies), runs each sequence only over its real tokens (no mask, no
//!   work on padding), and uses a vectorised `exp` in the softmax. Two GEMMs per (sequence,
//!   head), heads spread over rayon's pool.

use rayon::prelude::*;

/// Elements per parallel GELU chunk.
const CHUNK: usize = 1 << 14;

/// `x ← 0.5·x·(1 + erf(x/√2))` (exact-erf GELU, as BERT's `hidden_act = "gelu"`).
pub fn gelu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(|chunk| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { gelu_avx512(chunk) };
        }
        gelu_slice(chunk)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn gelu_avx512(x: &mut [f32]) {
    gelu_slice(x)
}

#[inline(always)]
fn gelu_slice(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf(x) as a rational function of x on [-4, 4] (Eigen's float approximation; erf(±4) rounds
/// to ±1 in f32), branch-free so loops over it vectorise.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_3e-10, 2.770_681_4e-8);
    p = p.mul_add(x2, -2.101_024e-6);
    p = p.mul_add(x2, -5.692_506_4e-5);
    p = p.mul_add(x2, -7.349_906_3e-4);
    p = p.mul_add(x2, -2.954_600_6e-3);
    p = p.mul_add(x2, -1.609_603_3e-2);
    let mut q = x2.mul_add(-1.456_607_2e-5, -2.133_740_6e-4);
    q = q.mul_add(x2, -1.682_827e-3);
    q = q.mul_add(x2, -7.373_329e-3);
    q = q.mul_add(x2, -1.426_474e-2);
    x * p / q
}

/// e^x (Cephes' single-precision polynomial after range reduction; ~1 ulp), branch-free.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.7);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = r.mul_add(1.987_569_1e-4, 1.398_2e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 0.166_666_65);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) << 23) as u32)
}

/// Lanes of the independent accumulators in reductions (floating-point reductions only
/// vectorise when written as separate lanes).
const LANES: usize = 16;

/// Softmax of `row` in place.
#[inline(always)]
fn softmax(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut max = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    max = lanes.iter().copied().fold(max, f32::max);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let mut lanes = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let mut sum: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    sum += lanes.iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn softmax_rows_avx512(scores: &mut [f32], n: usize) {
    for row in scores.chunks_exact_mut(n) {
        softmax(row)
    }
}

fn softmax_rows(scores: &mut [f32], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { softmax_rows_avx512(scores, n) };
    }
    for row in scores.chunks_exact_mut(n) {
        softmax(row)
    }
}

/// Shapes of one attention call.
pub struct AttentionShape {
    pub batch: usize,
    /// Padded sequence length.
    pub len: usize,
    pub heads: usize,
    pub head_dim: usize,
}

/// Multi-head self-attention over the fused projection `qkv` (`[batch, len, 3, heads,
/// head_dim]`, row-major), sequence `b` attending only over its first `lengths[b]` tokens.
/// Returns the context `[batch, len, heads·head_dim]`; rows past a sequence's length are zero.
pub fn attention(qkv: &[f32], lengths: &[usize], shape: &AttentionShape) -> Vec<f32> {
    let AttentionShape {
        batch,
        len,
        heads,
        head_dim,
    } = *shape;
    let width = heads * head_dim;
    let row = 3 * width;
    assert_eq!(qkv.len(), batch * len * row, "attention: qkv shape");
    assert_eq!(lengths.len(), batch, "attention: one length per sequence");
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut context = vec![0f32; batch * len * width];
    // One task per (sequence, head); each writes a disjoint column band of its sequence's rows.
    let out = SendPtr(context.as_mut_ptr());
    (0..batch * heads)
        .into_par_iter()
        .for_each_init(Vec::new, |scores, task| {
            let (b, h) = (task / heads, task % heads);
            let n = lengths[b].min(len);
            if n == 0 {
                return;
            }
            let base = b * len * row + h * head_dim;
            let (q, k, v) = (&qkv[base..], &qkv[base + width..], &qkv[base + 2 * width..]);
            scores.clear();
            scores.resize(n * n, 0.0);
            // SAFETY: every pointer/stride pair addresses elements inside `qkv`, `scores` or this
            // task's own band of `context` (rows of sequence b, columns h·head_dim..+head_dim); no two
            // tasks write the same element.
            unsafe {
                // scores = scale · Q Kᵀ   (n × n)
                gemm::gemm(
                    n,
                    n,
                    head_dim,
                    scores.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    q.as_ptr(),
                    1,
                    row as isize,
                    k.as_ptr(),
                    row as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
                softmax_rows(scores, n);
                // context = P V   (n × head_dim)
                let dst = out.get().add(b * len * width + h * head_dim);
                gemm::gemm(
                    n,
                    head_dim,
                    n,
                    dst,
                    1,
                    width as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    n as isize,
                    v.as_ptr(),
                    1,
                    row as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    context
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `attention`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_and_exp_are_within_a_few_ulp() {
        let mut worst_erf = 0f64;
        let mut worst_exp = 0f64;
        for i in -100_000..=100_000 {
            let x = i as f32 * 1e-4 * 6.0;
            worst_erf = worst_erf.max((f64::from(erf(x)) - libm::erf(f64::from(x))).abs());
            let e = f64::from(x).exp();
            worst_exp = worst_exp.max(((f64::from(exp(x)) - e) / e).abs());
        }
        assert!(worst_erf < 5e-7, "erf max abs error {worst_erf}");
        assert!(worst_exp < 5e-7, "exp max relative error {worst_exp}");
    }

    #[test]
    fn attention_matches_a_direct_computation() {
        let shape = AttentionShape {
            batch: 2,
            len: 5,
            heads: 2,
            head_dim: 3,
        };
        let lengths = [5, 3];
        let width = shape.heads * shape.head_dim;
        let qkv: Vec<f32> = (0..2 * 5 * 3 * width)
            .map(|i| ((i * 7919) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let got = attention(&qkv, &lengths, &shape);
        let at = |b: usize, t: usize, part: usize, h: usize, d: usize| {
            qkv[((b * 5 + t) * 3 + part) * width + h * 3 + d]
        };
        for b in 0..2 {
            for h in 0..2 {
                for i in 0..5 {
                    let n = lengths[b];
                    let mut want = [0f64; 3];
                    if i < n {
                        let s: Vec<f64> = (0..n)
                            .map(|j| {
                                (0..3)
                                    .map(|d| f64::from(at(b, i, 0, h, d) * at(b, j, 1, h, d)))
                                    .sum::<f64>()
                                    / 3f64.sqrt()
                            })
                            .collect();
                        let m = s.iter().copied().fold(f64::MIN, f64::max);
                        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                        for (j, sj) in s.iter().enumerate() {
                            for (d, w) in want.iter_mut().enumerate() {
                                *w += (sj - m).exp() / z * f64::from(at(b, j, 2, h, d));
                            }
                        }
                    }
                    for (d, w) in want.iter().enumerate() {
                        let g = got[(b * 5 + i) * width + h * 3 + d];
                        assert!(
                            (f64::from(g) - w).abs() < 1e-5,
                            "b{b} h{h} i{i} d{d}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
