//! A packed single-precision GEMM for the convolutions: `C += A B`, with `A` (the weights)
//! packed once per layer and `B` (the unfolded image) packed straight from the image.
//!
//! `A` is `m x k` (output channels x `in * kh * kw`), packed in panels of [`MR`] rows: panel
//! `p` holds, for each `kk` in `0..k`, the [`MR`] values `A[p MR + r, kk]` (zero past `m`).
//! `B` is `k x n` (taps x output pixels), packed in panels of [`NR`] columns: panel `q`
//! holds, for each `kk`, the [`NR`] values `B[kk, q NR + j]` (zero past `n`). The
//! micro-kernel keeps an `MR x NR` block of `C` in vector registers (6 x 64 floats: 24
//! AVX-512 registers) and, per `kk`, adds `A[:, kk]` (broadcast) times `B[kk, :]`; it runs
//! inside [`wide!`], so the loops become AVX-512 (or AVX2) fused multiply-adds. `k` is cut
//! into blocks of [`KC`] so that a `B` panel block (`KC x NR`, 32 KiB) stays in the L1 cache
//! while the `A` panels stream from L2.
//!
//! Compared with a general GEMM this skips repacking the weights on every call and packs
//! the image once (no im2col matrix that the GEMM would copy again).

use crate::nn::simd::wide;

/// Rows of `C` (output channels) per micro-tile.
pub(crate) const MR: usize = 6;
/// Columns of `C` (output pixels) per micro-tile: four 16-lane vectors.
pub(crate) const NR: usize = 64;
/// Depth of one block of the `k` loop.
const KC: usize = 128;

/// A row-major `m x k` matrix packed in panels of [`MR`] rows (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct PackedA {
    data: Vec<f32>,
    m: usize,
    k: usize,
}

impl PackedA {
    /// Packs the row-major `a` (`m x k`).
    pub(crate) fn new(a: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(a.len(), m * k, "PackedA: a is not m x k");
        let panels = m.div_ceil(MR);
        let mut data = vec![0.0f32; panels * k * MR];
        for (p, panel) in data.chunks_exact_mut(k * MR).enumerate() {
            for r in 0..MR.min(m - p * MR) {
                let row = &a[(p * MR + r) * k..(p * MR + r + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * MR + r] = v;
                }
            }
        }
        PackedA { data, m, k }
    }

    pub(crate) fn rows(&self) -> usize {
        self.m
    }

    pub(crate) fn depth(&self) -> usize {
        self.k
    }

    /// Number of [`MR`]-row panels.
    pub(crate) fn panels(&self) -> usize {
        self.m.div_ceil(MR)
    }
}

/// Floats a packed `B` of `k x n` occupies.
pub(crate) fn packed_b_len(k: usize, n: usize) -> usize {
    k * n.div_ceil(NR) * NR
}

/// `C += A B` for the `A` panels in `panels`: `b` is a packed `k x n` matrix
/// ([`packed_b_len`] floats), `C` the `m x n` matrix at `c` with row stride `c_rs`. Runs on
/// the calling thread.
///
/// # Safety
/// `c` must be valid for reads and writes of rows `panels.start * MR ..
/// min(panels.end * MR, m)`, columns `0..n`, at row stride `c_rs`, and not be accessed by
/// anything else during the call.
pub(crate) unsafe fn gemm_acc(
    a: &PackedA,
    panels: std::ops::Range<usize>,
    b: &[f32],
    n: usize,
    c: *mut f32,
    c_rs: usize,
) {
    let k = a.k;
    assert!(b.len() >= packed_b_len(k, n) && panels.end <= a.panels());
    let qs = n.div_ceil(NR);
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        for q in 0..qs {
            let bp = &b[(q * k + k0) * NR..(q * k + k0 + kc) * NR];
            let cols = NR.min(n - q * NR);
            for p in panels.clone() {
                let ap = &a.data[(p * k + k0) * MR..(p * k + k0 + kc) * MR];
                let rows = MR.min(a.m - p * MR);
                // SAFETY: the tile's rows p MR .. p MR + rows and columns q NR .. + cols
                // lie inside the region the caller vouches for.
                let ct = unsafe { c.add(p * MR * c_rs + q * NR) };
                unsafe { micro(ap, bp, ct, c_rs, rows, cols) };
            }
        }
        k0 += kc;
    }
}

/// One `MR x NR` tile: `C[r, j] += sum_kk a[kk MR + r] b[kk NR + j]` for `r < rows`,
/// `j < cols`; `a` and `b` hold the same number of `kk` steps. AVX-512 registers when the
/// CPU has them, else the portable loop under [`wide!`].
///
/// # Safety
/// `c` must be valid for reads and writes at `r c_rs + j` for those `r`, `j`.
#[inline]
unsafe fn micro(a: &[f32], b: &[f32], c: *mut f32, c_rs: usize, rows: usize, cols: usize) {
    let kc = a.len() / MR;
    debug_assert_eq!(b.len(), kc * NR);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        if rows == MR && cols == NR {
            // SAFETY: AVX-512F is present; a full tile is in bounds by the contract.
            unsafe { x86::micro_6x64(kc, a.as_ptr(), b.as_ptr(), c, c_rs) };
        } else {
            let mut tile = [0.0f32; MR * NR];
            // SAFETY: as above, into the local full tile.
            unsafe { x86::micro_6x64(kc, a.as_ptr(), b.as_ptr(), tile.as_mut_ptr(), NR) };
            // SAFETY: only the tile's valid rows and columns reach C.
            unsafe { add_tile(&tile, c, c_rs, rows, cols) };
        }
        return;
    }
    let mut tile = [0.0f32; MR * NR];
    wide!(micro_portable(a, b, &mut tile));
    // SAFETY: only the tile's valid rows and columns reach C.
    unsafe { add_tile(&tile, c, c_rs, rows, cols) };
}

/// `C[r, j] += tile[r NR + j]` for `r < rows`, `j < cols`.
///
/// # Safety
/// As [`micro`].
unsafe fn add_tile(tile: &[f32; MR * NR], c: *mut f32, c_rs: usize, rows: usize, cols: usize) {
    for (r, tr) in tile.chunks_exact(NR).enumerate().take(rows) {
        // SAFETY: `cols` columns of row r < rows, in bounds by the caller's contract.
        let cr = unsafe { std::slice::from_raw_parts_mut(c.add(r * c_rs), cols) };
        for (cv, &v) in cr.iter_mut().zip(tr) {
            *cv += v;
        }
    }
}

/// The micro-kernel as plain loops (any CPU): `tile = a b` for one `MR x NR` tile.
#[inline(always)]
fn micro_portable(a: &[f32], b: &[f32], tile: &mut [f32; MR * NR]) {
    for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        for (r, &av) in ak.iter().enumerate() {
            for (t, &bv) in tile[r * NR..(r + 1) * NR].iter_mut().zip(bk) {
                *t = av.mul_add(bv, *t);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };

    use super::{MR, NR};

    const V: usize = NR / 16;

    /// `C[r, 16 v + l] += sum_kk a[kk MR + r] b[kk NR + 16 v + l]` over a full 6 x 64 tile,
    /// the 24 accumulators in registers.
    ///
    /// # Safety
    /// AVX-512F must be present; `a` holds `kc MR` floats, `b` `kc NR`, and `c` is valid
    /// for reads and writes of 6 rows of 64 floats at row stride `c_rs`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn micro_6x64(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        c_rs: usize,
    ) {
        let mut acc: [[__m512; V]; MR] = [[_mm512_setzero_ps(); V]; MR];
        for kk in 0..kc {
            // SAFETY: kk < kc, so the loads stay inside `a` and `b`.
            unsafe {
                let bp = b.add(kk * NR);
                let bv: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(bp.add(16 * v)));
                let ap = a.add(kk * MR);
                for (r, accr) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*ap.add(r));
                    for (acv, &bvv) in accr.iter_mut().zip(&bv) {
                        *acv = _mm512_fmadd_ps(av, bvv, *acv);
                    }
                }
            }
        }
        for (r, accr) in acc.iter().enumerate() {
            for (v, &acv) in accr.iter().enumerate() {
                // SAFETY: row r < 6, columns 16 v .. 16 v + 16 < 64, in bounds.
                unsafe {
                    let cp = c.add(r * c_rs + 16 * v);
                    _mm512_storeu_ps(cp, _mm512_add_ps(_mm512_loadu_ps(cp), acv));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testutil::*;

    /// Row-major `b` (`k x n`) in the packed layout, written out element by element.
    pub(crate) fn pack_b(b: &[f32], k: usize, n: usize) -> Vec<f32> {
        let mut pb = vec![0.0; packed_b_len(k, n)];
        for kk in 0..k {
            for j in 0..n {
                pb[((j / NR) * k + kk) * NR + j % NR] = b[kk * n + j];
            }
        }
        pb
    }

    #[test]
    fn packed_gemm_matches_naive_including_edges_and_k_blocks() {
        // Partial panels in m and n, k across several KC blocks, k = 1.
        for &(m, n, k) in &[
            (1, 1, 1),
            (6, 64, 128),
            (7, 65, 129),
            (13, 130, 300),
            (20, 3, 5),
        ] {
            let a = rand_vec(m * k, 1);
            let b = rand_vec(k * n, 2);
            let c0 = rand_vec(m * n, 3);
            let pa = PackedA::new(&a, m, k);
            let pb = pack_b(&b, k, n);
            let mut c = c0.clone();
            // Two calls over complementary panel ranges, as the threads split them.
            let half = pa.panels() / 2;
            unsafe {
                gemm_acc(&pa, 0..half, &pb, n, c.as_mut_ptr(), n);
                gemm_acc(&pa, half..pa.panels(), &pb, n, c.as_mut_ptr(), n);
            }
            // f32 sums of k <= 300 products of values in (-1, 1): error ~ k eps relative.
            let want: Vec<f64> = crate::nn::gemm::tests::naive(m, n, k, &a, false, &b, false)
                .iter()
                .zip(&c0)
                .map(|(p, &c)| p + c as f64)
                .collect();
            let e = rel_err(&c, &want);
            assert!(e < 1e-5, "({m}, {n}, {k}): relative error {e}");
        }
    }
}
