//! A small row-major f32 GEMM for the products that are not convolutions (attention,
//! linear layers, parameter gradients, the input VJP of strided convolutions): both
//! operands are packed into the layouts of `nn::packed` and multiplied by its
//! micro-kernels, so every product runs on the active [`crate::nn::SimdPath`]
//! (`POSTERIOR_SIMD` reaches it like the convolutions). Large products are split over the
//! rayon threads by column blocks.

use rayon::prelude::*;

use crate::nn::packed::{gemm_acc, pack_b, packed_b_len, with_workspace, PackedA, SendPtr, NR};
use crate::nn::simd::active;

/// Products with at least this many multiply-adds are split across the rayon threads;
/// below it one thread is faster (the split costs more than it saves, and the network
/// layers parallelise at a coarser grain themselves).
const PAR_THRESHOLD: usize = 1 << 25;

/// Columns of `B` packed at a time on one thread (a multiple of [`NR`]): 64 KiB per 64
/// rows of depth, so a block of a few hundred rows stays in L2.
const COL_BLOCK: usize = 4 * NR;

/// `C = op(A) op(B)` (or `C += op(A) op(B)` when `accumulate`), all row-major and dense.
///
/// `C` is `m x n`. `op(A)` is `m x k`: `A` is stored `m x k` (`ta = false`) or `k x m`
/// (`ta = true`, used transposed). `op(B)` is `k x n`: `B` stored `k x n` or `n x k`
/// (`tb = true`). Slices must hold at least those sizes (this is an internal kernel,
/// callers validate shapes; a short slice panics).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    if !accumulate {
        c.fill(0.0);
    }
    if k == 0 {
        return;
    }
    let (a, b) = (&a[..m * k], &b[..k * n]);
    let pa = if ta {
        PackedA::new_transposed(a, m, k)
    } else {
        PackedA::new(a, m, k)
    };
    let (threads, path) = (rayon::current_num_threads(), active());
    let parallel = m * n * k >= PAR_THRESHOLD && threads > 1;
    // In parallel, about two blocks per thread at least (whole panels).
    let block = if parallel {
        (n.div_ceil(2 * threads).div_ceil(NR) * NR).min(COL_BLOCK)
    } else {
        COL_BLOCK
    };
    let cp = SendPtr(c.as_mut_ptr());
    let run = |j0: usize| {
        let j1 = (j0 + block).min(n);
        with_workspace(packed_b_len(k, j1 - j0), |bp| {
            pack_b(b, k, n, tb, j0..j1, bp);
            // SAFETY: C is m x n at row stride n; this call writes columns j0..j1 of every
            // row, disjoint from the other blocks' columns, and `c` is borrowed mutably.
            unsafe { gemm_acc(path, &pa, 0..pa.panels(), bp, j1 - j0, cp.get().add(j0), n) };
        })
    };
    if parallel {
        (0..n).into_par_iter().step_by(block).for_each(run);
    } else {
        (0..n).step_by(block).for_each(run);
    }
}

/// `C += A B` with `A` the row-major `m x k` matrix `a` and `B` already packed (`pb`,
/// [`packed_b_len`]`(k, n)` floats, see [`pack_b`]): for products whose `B` is fixed (a
/// linear layer's weights) and packed once. `C` is row-major `m x n`. Runs on the calling
/// thread.
pub(crate) fn gemm_packed_b(m: usize, k: usize, a: &[f32], pb: &[f32], n: usize, c: &mut [f32]) {
    assert!(a.len() == m * k && pb.len() == packed_b_len(k, n) && c.len() == m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let pa = PackedA::new(a, m, k);
    // SAFETY: C is m x n at row stride n, borrowed mutably; every panel's rows lie below m.
    unsafe { gemm_acc(active(), &pa, 0..pa.panels(), pb, n, c.as_mut_ptr(), n) };
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::nn::testutil::*;

    /// `op(A) op(B)` by the triple loop in f64.
    pub(crate) fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        ta: bool,
        b: &[f32],
        tb: bool,
    ) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av as f64 * bv as f64;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn matches_naive_triple_loop_all_transposes() {
        // Shapes include odd sizes, k=1, vectors, and one above the parallel threshold.
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (17, 1, 9),
            (1, 13, 4),
            (33, 29, 65),
            (70, 66, 61),
        ] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a = rand_vec(m * k, 1);
                    let b = rand_vec(k * n, 2);
                    let want = naive(m, n, k, &a, ta, &b, tb);
                    let mut c = vec![f32::NAN; m * n];
                    sgemm(m, n, k, &a, ta, &b, tb, &mut c, false);
                    // f32 accumulation over k <= 65 terms of size <= 1: error ~ k * eps.
                    let e = rel_err(&c, &want);
                    assert!(e < 1e-5, "({m},{n},{k}) ta={ta} tb={tb}: rel err {e}");
                    // Accumulate: C += AB on top of C = AB gives 2AB.
                    sgemm(m, n, k, &a, ta, &b, tb, &mut c, true);
                    let want2: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
                    let e = rel_err(&c, &want2);
                    assert!(e < 1e-5, "accumulate ({m},{n},{k}): rel err {e}");
                }
            }
        }
        // A large product (multi-threaded path).
        let (m, n, k) = (64, 4096, 160);
        let a = rand_vec(m * k, 3);
        let b = rand_vec(k * n, 4);
        let mut c = vec![0.0; m * n];
        sgemm(m, n, k, &a, false, &b, false, &mut c, false);
        assert!(rel_err(&c, &naive(m, n, k, &a, false, &b, false)) < 1e-5);
    }
}
