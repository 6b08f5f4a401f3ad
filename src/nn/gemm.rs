//! A small row-major f32 GEMM on the `gemm` crate (AVX-512 / AVX2 kernels chosen at run
//! time; rayon-parallel for large products).

/// Products with at least this many multiply-adds are split across the rayon threads by
/// the `gemm` crate; below it one thread is faster (the split costs more than it saves,
/// and the network layers parallelise at a coarser grain themselves).
const PAR_THRESHOLD: usize = 1 << 25;

/// `C = op(A) op(B)` (or `C += op(A) op(B)` when `accumulate`), all row-major and dense.
///
/// `C` is `m x n`. `op(A)` is `m x k`: `A` is stored `m x k` (`ta = false`) or `k x m`
/// (`ta = true`, used transposed). `op(B)` is `k x n`: `B` stored `k x n` or `n x k`
/// (`tb = true`). Slices must hold exactly those sizes (checked in debug builds; this is an
/// internal kernel, callers validate shapes).
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
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // Strides (in elements) of op(A): row stride, column stride.
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    let par = m * n * k >= PAR_THRESHOLD;
    // SAFETY: the asserts above guarantee every index the strides reach lies inside the
    // slices: op(A)[i, p] is at i*a_rs + p*a_cs < m*k, op(B)[p, j] < k*n, C[i, j] < m*n;
    // `c` is borrowed mutably so it cannot alias `a` or `b`.
    unsafe {
        sgemm_raw(
            m,
            n,
            k,
            Strided::new(a.as_ptr(), a_rs, a_cs),
            Strided::new(b.as_ptr(), b_rs, b_cs),
            c.as_mut_ptr(),
            n as isize,
            accumulate,
            par,
        );
    }
}

/// A read-only strided matrix operand: element `[i, j]` at `ptr + i rs + j cs`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl Strided {
    pub fn new(ptr: *const f32, rs: isize, cs: isize) -> Self {
        Strided { ptr, rs, cs }
    }
}

/// `C (+)= A B` on raw strided operands: `A` `m x k`, `B` `k x n`, `C` `m x n` with row
/// stride `c_rs` and unit column stride. `parallel`: let the `gemm` crate split the product
/// over the rayon threads (otherwise it runs on the calling thread).
///
/// # Safety
/// Every element the strides reach must be valid for reads (`A`, `B`) or writes (`C`), and
/// `C`'s elements must not overlap `A`'s or `B`'s nor be accessed by another thread during
/// the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_raw(
    m: usize,
    n: usize,
    k: usize,
    a: Strided,
    b: Strided,
    c: *mut f32,
    c_rs: isize,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let par = if parallel && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded to the caller (see above). With k == 0 and !accumulate the gemm
    // crate writes zeros into C.
    unsafe {
        gemm::gemm(
            m, n, k, c, 1, c_rs, accumulate, a.ptr, a.cs, a.rs, b.ptr, b.cs, b.rs, 1.0, 1.0, false,
            false, false, par,
        );
    }
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
