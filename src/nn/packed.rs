//! A packed single-precision GEMM for the convolutions: `C += A B`, with `A` (the weights)
//! packed once per layer and `B` (the unfolded image) packed straight from the image.
//!
//! `A` is `m x k` (output channels x `in * kh * kw`), packed in panels of [`MR`] rows: panel
//! `p` holds, for each `kk` in `0..k`, the [`MR`] values `A[p MR + r, kk]` (zero past `m`).
//! `B` is `k x n` (taps x output pixels), packed in panels of [`NR`] columns: panel `q`
//! holds, for each `kk`, the [`NR`] values `B[kk, q NR + j]` (zero past `n`). `k` is cut
//! into blocks of [`KC`] so that a `B` panel block (`KC x NR`, 32 KiB) stays in the L1 cache
//! while the `A` panels stream from L2.
//!
//! One `MR x NR` tile of `C` is computed by a micro-kernel per [`SimdPath`], each keeping
//! its accumulators in vector registers for the whole `KC` block:
//! - `avx512`: the 6 x 64 tile at once, 24 of the 32 zmm registers;
//! - `avx2`: four 6 x 16 sub-tiles, 12 of the 16 ymm registers (plus two for `B`, one
//!   for the broadcast `A` value), BLIS's Haswell shape;
//! - `portable`: twelve 2 x 16 sub-tiles written as plain multiply-adds over arrays,
//!   which LLVM keeps in 8 registers of 4 lanes (SSE2 on x86-64, NEON on aarch64).
//!
//! All three read the same packed layout, so the packing is done once whatever the path.
//!
//! Compared with a general GEMM this skips repacking the weights on every call and packs
//! the image once (no im2col matrix that the GEMM would copy again).

use rayon::prelude::*;

use crate::nn::simd::{madd, SimdPath};

/// Rows of `C` (output channels) per micro-tile.
pub(crate) const MR: usize = 6;
/// Columns of `C` (output pixels) per micro-tile: four 16-lane vectors.
pub(crate) const NR: usize = 64;
/// Depth of one block of the `k` loop.
const KC: usize = 128;
/// Matrices of at least this many elements are packed in parallel.
const PAR_PACK: usize = 1 << 16;

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
        let mut data = vec![0.0f32; m.div_ceil(MR) * k * MR];
        let pack = |(p, panel): (usize, &mut [f32])| {
            for r in 0..MR.min(m - p * MR) {
                let row = &a[(p * MR + r) * k..(p * MR + r + 1) * k];
                for (kk, &v) in row.iter().enumerate() {
                    panel[kk * MR + r] = v;
                }
            }
        };
        // A layer's weights are packed on its first use, inside the first network pass:
        // large ones on all threads.
        if m * k >= PAR_PACK {
            data.par_chunks_exact_mut(k * MR).enumerate().for_each(pack);
        } else {
            data.chunks_exact_mut(k * MR).enumerate().for_each(pack);
        }
        PackedA { data, m, k }
    }

    /// Packs `A = a^T` (`m x k`) from the row-major `a` (`k x m`).
    pub(crate) fn new_transposed(a: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(a.len(), m * k, "PackedA: a is not k x m");
        let mut data = vec![0.0f32; m.div_ceil(MR) * k * MR];
        for (p, panel) in data.chunks_exact_mut(k * MR).enumerate() {
            let rows = MR.min(m - p * MR);
            for (kk, dst) in panel.chunks_exact_mut(MR).enumerate() {
                dst[..rows].copy_from_slice(&a[kk * m + p * MR..kk * m + p * MR + rows]);
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

/// Packs columns `cols` of `B` (`k x n`) into `dst` ([`packed_b_len`]`(k, cols.len())`
/// floats, the padding columns zeroed): `B` is the row-major `b` (`k x n`), or with
/// `transposed` the row-major `b` (`n x k`) read as its transpose.
pub(crate) fn pack_b(
    b: &[f32],
    k: usize,
    n: usize,
    transposed: bool,
    cols: std::ops::Range<usize>,
    dst: &mut [f32],
) {
    assert!(b.len() >= k * n && cols.end <= n && dst.len() == packed_b_len(k, cols.len()));
    for (q, panel) in dst.chunks_exact_mut(k * NR).enumerate() {
        let j0 = cols.start + q * NR;
        let w = NR.min(cols.end - j0);
        if w < NR {
            panel.fill(0.0);
        }
        if transposed {
            // 16 rows of the panel at a time: the 16-float runs of the `w` source rows and
            // the 16 panel rows (4 KiB) stay in L1, where a plain scatter would walk all
            // `k` panel rows for every column.
            for kk0 in (0..k).step_by(16) {
                let kb = 16.min(k - kk0);
                for j in 0..w {
                    let src = &b[(j0 + j) * k + kk0..(j0 + j) * k + kk0 + kb];
                    for (i, &v) in src.iter().enumerate() {
                        panel[(kk0 + i) * NR + j] = v;
                    }
                }
            }
        } else {
            for (kk, run) in panel.chunks_exact_mut(NR).enumerate() {
                run[..w].copy_from_slice(&b[kk * n + j0..kk * n + j0 + w]);
            }
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint elements of one output.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only used to hand parallel tasks pointers into one output array whose element
// sets are disjoint (each user states which).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// Workspaces larger than this many floats are not kept between calls.
const KEEP_FLOATS: usize = 1 << 24;

thread_local! {
    static WORKSPACE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's workspace of `len` floats (contents unspecified), kept between
/// calls up to [`KEEP_FLOATS`]. A nested call on the same thread (rayon work stealing) gets
/// a fresh buffer.
pub(crate) fn with_workspace<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    WORKSPACE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut ws) if len <= KEEP_FLOATS => {
            if ws.len() < len {
                ws.resize(len, 0.0);
            }
            f(&mut ws[..len])
        }
        _ => f(&mut vec![0.0; len]),
    })
}

/// `C += A B` for the `A` panels in `panels`: `b` is a packed `k x n` matrix
/// ([`packed_b_len`] floats), `C` the `m x n` matrix at `c` with row stride `c_rs`. Runs on
/// the calling thread, with `path`'s micro-kernel (the portable one where the CPU lacks
/// it); callers pass [`crate::nn::simd::active`] except to test a given path.
///
/// # Safety
/// `c` must be valid for reads and writes of rows `panels.start * MR ..
/// min(panels.end * MR, m)`, columns `0..n`, at row stride `c_rs`, and not be accessed by
/// anything else during the call.
pub(crate) unsafe fn gemm_acc(
    path: SimdPath,
    a: &PackedA,
    panels: std::ops::Range<usize>,
    b: &[f32],
    n: usize,
    c: *mut f32,
    c_rs: usize,
) {
    assert!(b.len() >= packed_b_len(a.k, n) && panels.end <= a.panels());
    // SAFETY (all arms): the kernel's instructions are present (`available`), and the
    // caller's contract is forwarded.
    #[cfg(target_arch = "x86_64")]
    match path {
        SimdPath::Avx512 if path.available() => {
            return unsafe { blocks(a, panels, b, n, c, c_rs, x86::tile_avx512) }
        }
        SimdPath::Avx2 if path.available() => {
            return unsafe { blocks(a, panels, b, n, c, c_rs, x86::tile_avx2) }
        }
        _ => {}
    }
    let _ = path;
    unsafe { blocks(a, panels, b, n, c, c_rs, tile_portable) }
}

/// A full-tile micro-kernel: `C[r, j] += sum_kk a[kk MR + r] b[kk NR + j]` for `r < MR`,
/// `j < NR`, over `kc` steps; `c` at row stride `c_rs`.
type Tile = unsafe fn(kc: usize, a: *const f32, b: *const f32, c: *mut f32, c_rs: usize);

/// The blocked loops of [`gemm_acc`] around one micro-kernel. Edge tiles (fewer than
/// [`MR`] rows or [`NR`] columns) run the kernel on a local tile whose valid part is then
/// added to `C`.
///
/// # Safety
/// As [`gemm_acc`], and `tile` must be runnable on this CPU.
#[inline(always)]
unsafe fn blocks(
    a: &PackedA,
    panels: std::ops::Range<usize>,
    b: &[f32],
    n: usize,
    c: *mut f32,
    c_rs: usize,
    tile: Tile,
) {
    let k = a.k;
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
                // lie inside the region the caller vouches for; `ap` and `bp` hold `kc`
                // steps.
                unsafe {
                    let ct = c.add(p * MR * c_rs + q * NR);
                    if rows == MR && cols == NR {
                        tile(kc, ap.as_ptr(), bp.as_ptr(), ct, c_rs);
                    } else {
                        let mut local = [0.0f32; MR * NR];
                        tile(kc, ap.as_ptr(), bp.as_ptr(), local.as_mut_ptr(), NR);
                        add_tile(&local, ct, c_rs, rows, cols);
                    }
                }
            }
        }
        k0 += kc;
    }
}

/// `C[r, j] += tile[r NR + j]` for `r < rows`, `j < cols`.
///
/// # Safety
/// `c` must be valid for reads and writes at `r c_rs + j` for those `r`, `j`.
unsafe fn add_tile(tile: &[f32; MR * NR], c: *mut f32, c_rs: usize, rows: usize, cols: usize) {
    for (r, tr) in tile.chunks_exact(NR).enumerate().take(rows) {
        // SAFETY: `cols` columns of row r < rows, in bounds by the caller's contract.
        let cr = unsafe { std::slice::from_raw_parts_mut(c.add(r * c_rs), cols) };
        for (cv, &v) in cr.iter_mut().zip(tr) {
            *cv += v;
        }
    }
}

/// Rows and columns of one portable sub-tile: 2 x 16 accumulators are 8 vectors of 4
/// lanes; with 4 for the row of `B`, one for the broadcast `A` value and one for the
/// product (no fused multiply-add on baseline x86-64) that is 14 of the 16 registers SSE2
/// has (NEON has 32). Of the shapes that fit 16 registers (3 x 8, 6 x 4, 2 x 8, 2 x 16) it
/// was the fastest on x86-64; 6 x 8 spills.
const PR: usize = 2;
const PW: usize = 16;

/// The portable micro-kernel ([`Tile`]): `(MR / PR) (NR / PW)` sub-tiles of `PR x PW`, each
/// accumulated in a local array that LLVM keeps in registers (fully unrolled, no
/// aliasing), with [`madd`] (a multiply and an add on baseline x86-64, a fused
/// multiply-add on aarch64).
///
/// # Safety
/// `a` holds `kc MR` floats, `b` `kc NR`, and `c` is valid for reads and writes of `MR`
/// rows of `NR` floats at row stride `c_rs`.
unsafe fn tile_portable(kc: usize, a: *const f32, b: *const f32, c: *mut f32, c_rs: usize) {
    // SAFETY: the lengths are the contract's.
    let (a, b) = unsafe {
        (
            std::slice::from_raw_parts(a, kc * MR),
            std::slice::from_raw_parts(b, kc * NR),
        )
    };
    for r0 in (0..MR).step_by(PR) {
        for j0 in (0..NR).step_by(PW) {
            let mut acc = [[0.0f32; PW]; PR];
            for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
                let av: &[f32; PR] = ak[r0..r0 + PR].try_into().expect("PR rows");
                let bv: &[f32; PW] = bk[j0..j0 + PW].try_into().expect("PW columns");
                for (accr, &ar) in acc.iter_mut().zip(av) {
                    for (t, &bj) in accr.iter_mut().zip(bv) {
                        *t = madd(ar, bj, *t);
                    }
                }
            }
            for (r, accr) in acc.iter().enumerate() {
                // SAFETY: row r0 + r < MR, columns j0 .. j0 + PW <= NR: in bounds by the
                // contract.
                let cr = unsafe { std::slice::from_raw_parts_mut(c.add((r0 + r) * c_rs + j0), PW) };
                for (cv, &v) in cr.iter_mut().zip(accr) {
                    *cv += v;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{
        __m256, __m512, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps,
        _mm256_setzero_ps, _mm256_storeu_ps, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps,
        _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };

    use super::{MR, NR};

    /// The AVX-512 [`super::Tile`]: the whole 6 x 64 tile in 24 zmm accumulators.
    ///
    /// # Safety
    /// AVX-512F must be present; `a` holds `kc MR` floats, `b` `kc NR`, and `c` is valid
    /// for reads and writes of 6 rows of 64 floats at row stride `c_rs`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        c_rs: usize,
    ) {
        const V: usize = NR / 16;
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
                // SAFETY: row r < 6, columns 16 v .. 16 v + 16 <= 64, in bounds.
                unsafe {
                    let cp = c.add(r * c_rs + 16 * v);
                    _mm512_storeu_ps(cp, _mm512_add_ps(_mm512_loadu_ps(cp), acv));
                }
            }
        }
    }

    /// The AVX2 [`super::Tile`]: four 6 x 16 sub-tiles, each in 12 ymm accumulators, with
    /// two ymm for the row of `B` and one for the broadcast `A` value.
    ///
    /// # Safety
    /// AVX2 and FMA must be present; otherwise as [`tile_avx512`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        c_rs: usize,
    ) {
        for j0 in (0..NR).step_by(16) {
            let mut acc: [[__m256; 2]; MR] = [[_mm256_setzero_ps(); 2]; MR];
            for kk in 0..kc {
                // SAFETY: kk < kc and j0 + 16 <= NR, so the loads stay inside `a` and `b`.
                unsafe {
                    let bp = b.add(kk * NR + j0);
                    let bv = [_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8))];
                    let ap = a.add(kk * MR);
                    for (r, accr) in acc.iter_mut().enumerate() {
                        let av = _mm256_set1_ps(*ap.add(r));
                        accr[0] = _mm256_fmadd_ps(av, bv[0], accr[0]);
                        accr[1] = _mm256_fmadd_ps(av, bv[1], accr[1]);
                    }
                }
            }
            for (r, accr) in acc.iter().enumerate() {
                for (v, &acv) in accr.iter().enumerate() {
                    // SAFETY: row r < 6, columns j0 + 8 v .. + 8 <= 64, in bounds.
                    unsafe {
                        let cp = c.add(r * c_rs + j0 + 8 * v);
                        _mm256_storeu_ps(cp, _mm256_add_ps(_mm256_loadu_ps(cp), acv));
                    }
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
    fn pack_b_naive(b: &[f32], k: usize, n: usize) -> Vec<f32> {
        let mut pb = vec![0.0; packed_b_len(k, n)];
        for kk in 0..k {
            for j in 0..n {
                pb[((j / NR) * k + kk) * NR + j % NR] = b[kk * n + j];
            }
        }
        pb
    }

    fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..cols * rows)
            .map(|i| a[(i % rows) * cols + i / rows])
            .collect()
    }

    #[test]
    fn packers_agree_with_the_element_by_element_layout() {
        // k = 37: the transposed packer's 16-row blocks, a partial one included.
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 65, 3),
            (13, 130, 9),
            (6, 128, 2),
            (5, 70, 37),
        ] {
            let a = rand_vec(m * k, 4);
            let b = rand_vec(k * n, 5);
            let at = transpose(&a, m, k);
            assert_eq!(
                PackedA::new_transposed(&at, m, k).data,
                PackedA::new(&a, m, k).data
            );
            let want = pack_b_naive(&b, k, n);
            let mut got = vec![f32::NAN; packed_b_len(k, n)];
            pack_b(&b, k, n, false, 0..n, &mut got);
            assert_eq!(got, want);
            got.fill(f32::NAN);
            pack_b(&transpose(&b, k, n), k, n, true, 0..n, &mut got);
            assert_eq!(got, want);
            // A column range starting at a panel boundary is that part of the whole.
            if n > NR {
                let mut part = vec![f32::NAN; packed_b_len(k, n - NR)];
                pack_b(&b, k, n, false, NR..n, &mut part);
                assert_eq!(part, want[k * NR..]);
            }
        }
    }

    #[test]
    fn every_path_matches_the_naive_gemm_including_edges_and_k_blocks() {
        // Partial panels in m and n, k across several KC blocks (128, 129, 300, 517), k = 1,
        // whole tiles, and n below one sub-tile of every kernel.
        let shapes = [
            (1, 1, 1),
            (6, 64, 128),
            (7, 65, 129),
            (13, 130, 300),
            (20, 3, 5),
            (12, 192, 517),
            (5, 17, 64),
            (18, 9, 256),
        ];
        for path in SimdPath::ALL {
            if !path.available() {
                eprintln!("packed GEMM, {path} path: skipped (this CPU lacks it)");
                continue;
            }
            for &(m, n, k) in &shapes {
                let a = rand_vec(m * k, 1);
                let b = rand_vec(k * n, 2);
                let c0 = rand_vec(m * n, 3);
                let pa = PackedA::new(&a, m, k);
                let pb = pack_b_naive(&b, k, n);
                let mut c = c0.clone();
                // Two calls over complementary panel ranges, as the threads split them.
                let half = pa.panels() / 2;
                unsafe {
                    gemm_acc(path, &pa, 0..half, &pb, n, c.as_mut_ptr(), n);
                    gemm_acc(path, &pa, half..pa.panels(), &pb, n, c.as_mut_ptr(), n);
                }
                // f32 sums of k <= 517 products of values in (-1, 1) onto C: error ~ sqrt(k)
                // eps relative to the largest entry, far below 1e-5.
                let want: Vec<f64> = crate::nn::gemm::tests::naive(m, n, k, &a, false, &b, false)
                    .iter()
                    .zip(&c0)
                    .map(|(p, &c)| p + c as f64)
                    .collect();
                let e = rel_err(&c, &want);
                assert!(e < 1e-5, "{path} ({m}, {n}, {k}): relative error {e}");
            }
            eprintln!("packed GEMM, {path} path: {} shapes checked", shapes.len());
        }
    }
}
