//! 2-D convolution (cross-correlation, as PyTorch) as a packed GEMM (`nn::packed`).
//!
//! The weights are packed once per layer (on first use). The output pixels of every batch
//! item are cut into tiles of whole 64-pixel panels; each tile is one rayon task that
//! unfolds its receptive field straight into the packed layout, in a per-thread workspace
//! (sized to stay in the core's L2 cache), and multiplies it by the packed weights on the
//! calling thread, accumulating into the output (which starts as the bias, or as the
//! values there for [`Conv2d::forward_add`]). When there are too few tiles to feed the
//! threads (small images), the image is packed once and the product split over output
//! channels instead. The input VJP of a stride-1 convolution is the forward convolution of
//! the output gradient with the flipped, transposed kernel, so it runs on the same path.

use std::sync::OnceLock;

use ndarray::{Array1, Array4, ArrayView4};
use rayon::prelude::*;

use crate::nn::gemm::sgemm;
use crate::nn::packed::{gemm_acc, packed_b_len, with_workspace, PackedA, SendPtr, NR};
use crate::nn::simd::active;
use crate::nn::{same_shape, shape_err};
use crate::{Error, Result};

/// `nn.Conv2d(in, out, (kh, kw), stride, padding)` with zero padding.
///
/// `weight` is `(out, in, kh, kw)` and `bias` `(out,)`, exactly PyTorch's layout. Input
/// `(N, in, H, W)`, output `(N, out, Ho, Wo)` with `Ho = (H + 2 pad - kh) / stride + 1`
/// (floor), likewise `Wo`. guided-diffusion uses 3x3 (pad 1, stride 1 or 2 for strided
/// downsampling) and 1x1 (pad 0).
///
/// Computed as `Y = W_mat (out, in*kh*kw) x col (in*kh*kw, Ho*Wo)` per batch item, where
/// `col` is the im2col unfolding, packed tile by tile in per-thread workspaces that are
/// reused across calls. Calls may come from several threads at once.
///
/// The parameters are public for reading; build a new layer with [`Conv2d::new`] to change
/// them (the forward and the input VJP each cache a packed copy of `weight` on first use,
/// so a layer holds up to three copies of its weights once both have run).
#[derive(Debug, Clone)]
pub struct Conv2d {
    pub weight: Array4<f32>,
    pub bias: Array1<f32>,
    pub stride: usize,
    pub padding: usize,
    /// `weight` as the packed `(out, in*kh*kw)` matrix of the convolution GEMM. Built on
    /// first use.
    packed: OnceLock<PackedA>,
    /// `weight` flipped in space with in/out swapped, `(in, out, kh, kw)`, packed: the
    /// kernel of the stride-1 input VJP. Built on first use.
    flipped: OnceLock<PackedA>,
}

/// Parameter gradients of [`Conv2d`], summed over the batch.
#[derive(Debug, Clone)]
pub struct Conv2dGrads {
    pub weight: Array4<f32>,
    pub bias: Array1<f32>,
}

/// Workspace floats per packed image tile (512 KiB: it stays in a core's L2 cache).
const TILE_FLOATS: usize = 1 << 17;

/// Shapes of one convolution: `ci -> co` channels, kernel `kh x kw`, stride `s`, padding
/// `p`, input `h x w`, output `ho x wo`.
#[derive(Clone, Copy, Debug)]
struct Geom {
    ci: usize,
    co: usize,
    kh: usize,
    kw: usize,
    s: usize,
    p: usize,
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn kdim(&self) -> usize {
        self.ci * self.kh * self.kw
    }
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.s == 1 && self.p == 0
    }

    /// Output columns `[lo, hi)` whose input column `ox s + off` lies inside `[0, w)`.
    fn valid_cols(&self, off: isize) -> (usize, usize) {
        let s = self.s as isize;
        let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
        let last = self.w as isize - 1 - off;
        let hi = if last < 0 { 0 } else { last / s + 1 };
        let lo = (lo as usize).min(self.wo);
        (lo, (hi as usize).clamp(lo, self.wo))
    }

    /// The unfolded image for output pixels `[p0, p1)` (row-major over `ho x wo`) of one
    /// image `x` (ci, h, w), written straight into the packed `B` layout of
    /// [`crate::nn::packed`] (`kdim x (p1 - p0)`, the padding columns zeroed), panel by
    /// panel.
    fn im2col_packed(&self, x: &[f32], p0: usize, p1: usize, dst: &mut [f32]) {
        let (hw, kdim) = (self.h * self.w, self.kdim());
        let taps = self.kh * self.kw;
        debug_assert_eq!(dst.len(), packed_b_len(kdim, p1 - p0));
        for (q, panel) in dst.chunks_exact_mut(kdim * NR).enumerate() {
            let (q0, q1) = (p0 + q * NR, (p0 + (q + 1) * NR).min(p1));
            if q1 - q0 < NR {
                for run in panel.chunks_exact_mut(NR) {
                    run[q1 - q0..].fill(0.0);
                }
            }
            self.tap_pieces(q0, q1, |at, len, tap, source| {
                for c in 0..self.ci {
                    let kk = (c * taps + tap) * NR + at;
                    self.write_piece(&x[c * hw..], source, &mut panel[kk..kk + len]);
                }
            });
        }
    }

    /// im2col of output rows `[r0, r1)` of one image `x` (ci, h, w) into `col`
    /// (ci*kh*kw, (r1 - r0) wo), row-major.
    fn im2col_rows(&self, x: &[f32], r0: usize, r1: usize, col: &mut [f32]) {
        let (hw, taps) = (self.h * self.w, self.kh * self.kw);
        let tpx = (r1 - r0) * self.wo;
        debug_assert_eq!(col.len(), self.kdim() * tpx);
        self.tap_pieces(r0 * self.wo, r1 * self.wo, |at, len, tap, source| {
            for c in 0..self.ci {
                let kk = (c * taps + tap) * tpx + at;
                self.write_piece(&x[c * hw..], source, &mut col[kk..kk + len]);
            }
        });
    }

    /// Walks output pixels `[p0, p1)` (row-major over `ho x wo`) piece by piece, one piece
    /// per output row, and for each piece every tap `(a, b)`: calls
    /// `f(at, len, a kw + b, source)` with the piece's offset `at` from `p0`, its length, and
    /// where its values come from (see [`Geom::write_piece`]). The bounds are worked out
    /// here once for all input channels.
    fn tap_pieces(
        &self,
        p0: usize,
        p1: usize,
        mut f: impl FnMut(usize, usize, usize, Option<(usize, usize, usize)>),
    ) {
        let wo = self.wo;
        let mut p = p0;
        while p < p1 {
            let (oy, ox0) = (p / wo, p % wo);
            let ox1 = wo.min(ox0 + p1 - p);
            for a in 0..self.kh {
                let iy = (oy * self.s + a) as isize - self.p as isize;
                for b in 0..self.kw {
                    let off = b as isize - self.p as isize;
                    let (lo, hi) = self.valid_cols(off);
                    let (vlo, vhi) = (lo.clamp(ox0, ox1), hi.clamp(ox0, ox1));
                    let source = (iy >= 0 && iy < self.h as isize && vlo < vhi).then(|| {
                        let src0 = iy as usize * self.w + ((vlo * self.s) as isize + off) as usize;
                        (vlo - ox0, vhi - ox0, src0)
                    });
                    f(p - p0, ox1 - ox0, a * self.kw + b, source);
                }
            }
            p += ox1 - ox0;
        }
    }

    /// One tap's values for one piece of an output row, from one input channel `img`:
    /// `source = Some((z0, z1, src0))` means `piece[z0 + j] = img[src0 + j s]` for
    /// `j < z1 - z0` and zero elsewhere (the padding); `None`, all zero.
    #[inline]
    fn write_piece(&self, img: &[f32], source: Option<(usize, usize, usize)>, piece: &mut [f32]) {
        let Some((z0, z1, src0)) = source else {
            piece.fill(0.0);
            return;
        };
        piece[..z0].fill(0.0);
        piece[z1..].fill(0.0);
        let valid = &mut piece[z0..z1];
        if self.s == 1 {
            valid.copy_from_slice(&img[src0..src0 + z1 - z0]);
        } else {
            for (j, d) in valid.iter_mut().enumerate() {
                *d = img[src0 + j * self.s];
            }
        }
    }

    /// Adjoint of a whole-image im2col: scatter-add `col` into `dx` (ci, h, w), overwriting.
    fn col2im(&self, col: &[f32], dx: &mut [f32]) {
        let (h, w, ho, wo) = (self.h, self.w, self.ho, self.wo);
        let (kh, kw) = (self.kh, self.kw);
        let (s, p) = (self.s as isize, self.p as isize);
        dx.par_chunks_mut(h * w).enumerate().for_each(|(c, img)| {
            img.fill(0.0);
            let block = &col[c * kh * kw * ho * wo..(c + 1) * kh * kw * ho * wo];
            for a in 0..kh {
                for b in 0..kw {
                    let row = &block[(a * kw + b) * ho * wo..(a * kw + b + 1) * ho * wo];
                    for oy in 0..ho {
                        let iy = oy as isize * s - p + a as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let dst = &mut img[iy as usize * w..(iy as usize + 1) * w];
                        for (ox, &v) in row[oy * wo..(oy + 1) * wo].iter().enumerate() {
                            let ix = ox as isize * s - p + b as isize;
                            if ix >= 0 && ix < w as isize {
                                dst[ix as usize] += v;
                            }
                        }
                    }
                }
            }
        });
    }
}

/// `y = conv(x)` (+ `bias`) for `n` images: `wpack` the packed `(co, ci*kh*kw)` weight
/// matrix, `xs` (n, ci, h, w), `ys` (n, co, ho, wo), all contiguous; `ys` is overwritten, or
/// added to with `accumulate`.
fn conv_into(
    g: &Geom,
    wpack: &PackedA,
    bias: Option<&[f32]>,
    xs: &[f32],
    n: usize,
    ys: &mut [f32],
    accumulate: bool,
) {
    let (npix, kdim) = (g.ho * g.wo, g.kdim());
    let (in_len, out_len) = (g.ci * g.h * g.w, g.co * npix);
    assert!(
        wpack.rows() == g.co
            && wpack.depth() == kdim
            && xs.len() == n * in_len
            && ys.len() == n * out_len,
        "conv_into: inconsistent buffer sizes"
    );
    if n == 0 || npix == 0 {
        return;
    }
    let (threads, path) = (rayon::current_num_threads(), active());
    // Pixels per tile, a multiple of NR: within the workspace budget, then smaller until
    // every thread has about two tiles (but at least NR).
    let panels = npix.div_ceil(NR);
    let mut tile_panels = (TILE_FLOATS / (kdim * NR)).clamp(1, panels);
    while tile_panels > 1 && n * panels.div_ceil(tile_panels) < 2 * threads {
        tile_panels = tile_panels.div_ceil(2);
    }
    let tile_px = tile_panels * NR;
    let tiles_per_img = npix.div_ceil(tile_px);
    // The packed GEMM accumulates into C, so C starts as the bias (plus the old values).
    let fill_bias = |yb: &mut [f32], p0: usize, p1: usize| {
        for o in 0..g.co {
            let dst = &mut yb[o * npix + p0..o * npix + p1];
            match (bias, accumulate) {
                (Some(bv), false) => dst.fill(bv[o]),
                (None, false) => dst.fill(0.0),
                (Some(bv), true) => dst.iter_mut().for_each(|v| *v += bv[o]),
                (None, true) => {}
            }
        }
    };
    let pack = |xb: &[f32], p0: usize, p1: usize, f: &mut dyn FnMut(&[f32])| {
        with_workspace(packed_b_len(kdim, p1 - p0), |bp| {
            g.im2col_packed(xb, p0, p1, bp);
            f(bp);
        })
    };
    let yp = SendPtr(ys.as_mut_ptr());
    if threads > 1 && n * tiles_per_img < threads && wpack.panels() >= 2 * threads {
        // Few pixels: one packed image, the product split over output-channel panels.
        let per = wpack.panels().div_ceil(threads);
        for b in 0..n {
            let xb = &xs[b * in_len..(b + 1) * in_len];
            fill_bias(&mut ys[b * out_len..(b + 1) * out_len], 0, npix);
            pack(xb, 0, npix, &mut |bp| {
                (0..threads).into_par_iter().for_each(|t| {
                    let range = (t * per).min(wpack.panels())..((t + 1) * per).min(wpack.panels());
                    // SAFETY: each task writes the rows of its own panels of image b's
                    // output, all columns; `ys` is borrowed mutably for the whole call.
                    unsafe {
                        gemm_acc(
                            path,
                            wpack,
                            range,
                            bp,
                            npix,
                            yp.get().add(b * out_len),
                            npix,
                        );
                    }
                });
            });
        }
        return;
    }
    (0..n * tiles_per_img).into_par_iter().for_each(|task| {
        let (b, t) = (task / tiles_per_img, task % tiles_per_img);
        let (p0, p1) = (t * tile_px, ((t + 1) * tile_px).min(npix));
        let xb = &xs[b * in_len..(b + 1) * in_len];
        // SAFETY: task (b, t) writes exactly the elements [b, o, p0..p1] of `ys` for every
        // o: disjoint across tasks, and `ys` is borrowed mutably for the whole call.
        let yb = unsafe { std::slice::from_raw_parts_mut(yp.get().add(b * out_len), out_len) };
        // `yb` aliases other tasks' pixels, so only this tile's pixels are touched below.
        fill_bias(yb, p0, p1);
        let c = yb[p0..].as_mut_ptr();
        pack(xb, p0, p1, &mut |bp| {
            // SAFETY: C is (co, p1 - p0) at row stride npix from pixel p0: this task's own.
            unsafe { gemm_acc(path, wpack, 0..wpack.panels(), bp, p1 - p0, c, npix) };
        });
    });
}

impl Conv2d {
    /// Validates `bias.len() == out`, `stride >= 1`, a non-empty kernel.
    pub fn new(
        weight: Array4<f32>,
        bias: Array1<f32>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let (o, i, kh, kw) = weight.dim();
        if bias.len() != o {
            return Err(Error::Invalid(format!(
                "conv2d: bias has {} entries, expected {o} (weight is {:?})",
                bias.len(),
                weight.shape()
            )));
        }
        if stride == 0 || kh == 0 || kw == 0 || i == 0 {
            return Err(Error::Invalid(format!(
                "conv2d: expected stride >= 1 and a non-empty (out, in, kh, kw) weight, got stride {stride}, weight {:?}",
                weight.shape()
            )));
        }
        Ok(Conv2d {
            weight: crate::nn::standard(weight),
            bias,
            stride,
            padding,
            packed: OnceLock::new(),
            flipped: OnceLock::new(),
        })
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dim().0
    }
    pub fn in_channels(&self) -> usize {
        self.weight.dim().1
    }

    /// Output spatial size for an input of `(h, w)`; an error if the padded input is smaller
    /// than the kernel.
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (_, _, kh, kw) = self.weight.dim();
        let (hp, wp) = (h + 2 * self.padding, w + 2 * self.padding);
        if hp < kh || wp < kw {
            return Err(Error::Invalid(format!(
                "conv2d: input {h}x{w} with padding {} is smaller than the {kh}x{kw} kernel",
                self.padding
            )));
        }
        Ok(((hp - kh) / self.stride + 1, (wp - kw) / self.stride + 1))
    }

    fn check_input(&self, x: &ArrayView4<f32>) -> Result<(usize, usize)> {
        if x.dim().1 != self.in_channels() {
            return Err(shape_err(
                "conv2d",
                format!("(N, {}, H, W)", self.in_channels()),
                x.shape(),
            ));
        }
        self.out_size(x.dim().2, x.dim().3)
    }

    fn geom(&self, h: usize, w: usize, ho: usize, wo: usize) -> Geom {
        let (co, ci, kh, kw) = self.weight.dim();
        Geom {
            ci,
            co,
            kh,
            kw,
            s: self.stride,
            p: self.padding,
            h,
            w,
            ho,
            wo,
        }
    }

    fn wmat(&self) -> &[f32] {
        self.weight
            .as_slice()
            .expect("Conv2d::new stores the weight contiguous")
    }

    /// The weight matrix `(out, in*kh*kw)`, packed for the GEMM.
    fn packed(&self) -> &PackedA {
        self.packed.get_or_init(|| {
            let (co, ci, kh, kw) = self.weight.dim();
            PackedA::new(self.wmat(), co, ci * kh * kw)
        })
    }

    /// The stride-1 VJP kernel: `(in, out, kh, kw)`, `[i, o, a, b] = W[o, i, kh-1-a, kw-1-b]`,
    /// packed for the GEMM.
    fn flipped(&self) -> &PackedA {
        self.flipped.get_or_init(|| {
            let (co, ci, kh, kw) = self.weight.dim();
            let w = self.wmat();
            let mut f = vec![0.0f32; w.len()];
            for i in 0..ci {
                for o in 0..co {
                    for a in 0..kh {
                        for b in 0..kw {
                            f[((i * co + o) * kh + a) * kw + b] =
                                w[((o * ci + i) * kh + (kh - 1 - a)) * kw + (kw - 1 - b)];
                        }
                    }
                }
            }
            PackedA::new(&f, ci, co * kh * kw)
        })
    }

    /// Forward: `(N, in, H, W) -> (N, out, Ho, Wo)`.
    pub fn forward(&self, x: ArrayView4<f32>) -> Result<Array4<f32>> {
        let (ho, wo) = self.check_input(&x)?;
        let (n, _, h, w) = x.dim();
        let g = self.geom(h, w, ho, wo);
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let mut y = Array4::zeros((n, g.co, ho, wo));
        let ys = y.as_slice_mut().expect("fresh array");
        conv_into(&g, self.packed(), self.bias.as_slice(), xs, n, ys, false);
        Ok(y)
    }

    /// `out += forward(x)` without a temporary (a residual connection added inside the
    /// product); `out` must have the output's shape `(N, out, Ho, Wo)`.
    pub fn forward_add(&self, x: ArrayView4<f32>, out: &mut Array4<f32>) -> Result<()> {
        let (ho, wo) = self.check_input(&x)?;
        let (n, _, h, w) = x.dim();
        let g = self.geom(h, w, ho, wo);
        same_shape("conv2d", "accumulator", &[n, g.co, ho, wo], out.shape())?;
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        match out.as_slice_mut() {
            Some(ys) => conv_into(&g, self.packed(), self.bias.as_slice(), xs, n, ys, true),
            None => *out += &self.forward(x.view())?,
        }
        Ok(())
    }

    /// VJP with respect to the input: `dy` `(N, out, Ho, Wo)` for an input of spatial size
    /// `(h, w)`; returns `(N, in, h, w)`. Stride 1 (square kernel, `pad < k`): the forward
    /// convolution of `dy` with the flipped kernel and padding `k - 1 - pad`; otherwise
    /// `dcol = W_mat^T dy`, then col2im.
    pub fn vjp(&self, h: usize, w: usize, dy: ArrayView4<f32>) -> Result<Array4<f32>> {
        let (ho, wo) = self.out_size(h, w)?;
        let n = dy.dim().0;
        let (co, ci, kh, kw) = self.weight.dim();
        same_shape("conv2d", "output gradient", &[n, co, ho, wo], dy.shape())?;
        let dy = dy.as_standard_layout();
        let dys = dy.as_slice().expect("standard layout");
        let mut dx = Array4::zeros((n, ci, h, w));
        let dxs = dx.as_slice_mut().expect("fresh array");
        if self.stride == 1 && kh == kw && self.padding < kh {
            let g = Geom {
                ci: co,
                co: ci,
                kh,
                kw,
                s: 1,
                p: kh - 1 - self.padding,
                h: ho,
                w: wo,
                ho: h,
                wo: w,
            };
            conv_into(&g, self.flipped(), None, dys, n, dxs, false);
            return Ok(dx);
        }
        let g = self.geom(h, w, ho, wo);
        let kdim = g.kdim();
        let wmat = self.wmat();
        for b in 0..n {
            let dyb = &dys[b * co * ho * wo..(b + 1) * co * ho * wo];
            let dxb = &mut dxs[b * ci * h * w..(b + 1) * ci * h * w];
            if g.pointwise() {
                sgemm(kdim, ho * wo, co, wmat, true, dyb, false, dxb, false);
            } else {
                with_workspace(kdim * ho * wo, |col| {
                    sgemm(kdim, ho * wo, co, wmat, true, dyb, false, col, false);
                    g.col2im(col, dxb);
                });
            }
        }
        Ok(dx)
    }

    /// Parameter gradients summed over the batch: `dW_mat = sum_n dy_n col_n^T`,
    /// `db = sum_{n, y, x} dy`.
    pub fn param_grads(&self, x: ArrayView4<f32>, dy: ArrayView4<f32>) -> Result<Conv2dGrads> {
        let (ho, wo) = self.check_input(&x)?;
        let (n, ci, h, w) = x.dim();
        let (co, _, kh, kw) = self.weight.dim();
        same_shape("conv2d", "output gradient", &[n, co, ho, wo], dy.shape())?;
        let g = self.geom(h, w, ho, wo);
        let x = x.as_standard_layout();
        let dy = dy.as_standard_layout();
        let (xs, dys) = (
            x.as_slice().expect("standard layout"),
            dy.as_slice().expect("standard layout"),
        );
        let kdim = ci * kh * kw;
        let mut gw = Array4::zeros(self.weight.raw_dim());
        let gws = gw.as_slice_mut().expect("fresh array");
        for b in 0..n {
            let dyb = &dys[b * co * ho * wo..(b + 1) * co * ho * wo];
            let xb = &xs[b * ci * h * w..(b + 1) * ci * h * w];
            if g.pointwise() {
                sgemm(co, kdim, ho * wo, dyb, false, xb, true, gws, b > 0);
            } else {
                with_workspace(kdim * ho * wo, |col| {
                    g.im2col_rows(xb, 0, ho, col);
                    sgemm(co, kdim, ho * wo, dyb, false, col, true, gws, b > 0);
                });
            }
        }
        let gb = Array1::from_shape_fn(co, |o| {
            let mut s = 0.0f64;
            for b in 0..n {
                for v in &dys[(b * co + o) * ho * wo..(b * co + o + 1) * ho * wo] {
                    s += *v as f64;
                }
            }
            s as f32
        });
        Ok(Conv2dGrads {
            weight: gw,
            bias: gb,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testutil::*;

    /// Direct convolution loops in f64.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f64],
        shape: [usize; 4],
        wt: &Array4<f32>,
        bias: &Array1<f32>,
        s: usize,
        p: usize,
    ) -> (Vec<f64>, usize, usize) {
        let [n, ci, h, w] = shape;
        let (co, _, kh, kw) = wt.dim();
        let ho = (h + 2 * p - kh) / s + 1;
        let wo = (w + 2 * p - kw) / s + 1;
        let mut y = vec![0.0; n * co * ho * wo];
        for b in 0..n {
            for o in 0..co {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = bias[o] as f64;
                        for c in 0..ci {
                            for a in 0..kh {
                                for d in 0..kw {
                                    let iy = (oy * s + a) as isize - p as isize;
                                    let ix = (ox * s + d) as isize - p as isize;
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        acc += wt[[o, c, a, d]] as f64
                                            * x[((b * ci + c) * h + iy as usize) * w + ix as usize];
                                    }
                                }
                            }
                        }
                        y[((b * co + o) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        (y, ho, wo)
    }

    #[test]
    fn forward_vjp_param_grads_match_direct_loops() {
        // (N, in, out, H, W, k, stride, pad): 3x3 pad 1 stride 1 and 2 at odd and even
        // sizes, 1x1 pointwise, and a 1x1 with stride 2 (im2col path).
        let cases = [
            (2, 3, 4, 5, 7, 3, 1, 1),
            (1, 2, 3, 6, 6, 3, 2, 1),
            (2, 3, 2, 7, 5, 3, 2, 1),
            (2, 4, 3, 5, 6, 1, 1, 0),
            (1, 3, 2, 5, 5, 1, 2, 0),
            // A valid (pad 0) 3x3: the VJP's flipped kernel pads by 2.
            (1, 2, 3, 6, 5, 3, 1, 0),
            // Several row tiles of uneven height per image (the split for parallelism).
            (1, 2, 3, 19, 17, 3, 1, 1),
            // Few pixels, many output channels: the product split over channel chunks.
            (1, 3, 40, 5, 5, 3, 1, 1),
            (1, 40, 36, 4, 4, 1, 1, 0),
            // Rows wider than a 64-pixel panel (panels starting mid-row), at stride 1 and
            // 2, and 135 taps: more than one 128-deep block of the packed GEMM.
            (1, 2, 3, 3, 100, 3, 1, 1),
            (1, 2, 2, 3, 140, 3, 2, 1),
            (1, 15, 2, 1, 66, 3, 1, 1),
        ];
        for (case, &(n, ci, co, h, w, k, s, p)) in cases.iter().enumerate() {
            let seed = 10 * case as u64;
            let wt =
                Array4::from_shape_vec((co, ci, k, k), rand_vec(co * ci * k * k, seed)).unwrap();
            let bias = Array1::from(rand_vec(co, seed + 1));
            let conv = Conv2d::new(wt.clone(), bias.clone(), s, p).unwrap();
            let xv = rand_vec(n * ci * h * w, seed + 2);
            let x = Array4::from_shape_vec((n, ci, h, w), xv.clone()).unwrap();
            let x64 = to64(&xv);
            let (want, ho, wo) = naive(&x64, [n, ci, h, w], &wt, &bias, s, p);
            // Run twice: the reused workspace must not leak state between calls.
            for _ in 0..2 {
                let y = conv.forward(x.view()).unwrap();
                assert_eq!(y.dim(), (n, co, ho, wo));
                // f32 sums of <= 136 products of size <= 1: ~1e-6 relative.
                let e = rel_err(y.as_slice().unwrap(), &want);
                assert!(e < 1e-5, "case {case}: forward rel err {e}");
            }
            // forward_add: the output added onto what is there.
            let base =
                Array4::from_shape_vec((n, co, ho, wo), rand_vec(n * co * ho * wo, seed + 4))
                    .unwrap();
            let mut acc = base.clone();
            conv.forward_add(x.view(), &mut acc).unwrap();
            let want_acc: Vec<f64> = want.iter().zip(&base).map(|(a, &b)| a + b as f64).collect();
            let e = rel_err(acc.as_slice().unwrap(), &want_acc);
            assert!(e < 1e-5, "case {case}: forward_add rel err {e}");
            assert!(conv
                .forward_add(x.view(), &mut Array4::zeros((n, co + 1, ho, wo)))
                .is_err());
            let dyv = rand_vec(n * co * ho * wo, seed + 3);
            let dy = Array4::from_shape_vec((n, co, ho, wo), dyv.clone()).unwrap();
            let dx = conv.vjp(h, w, dy.view()).unwrap();
            let f = |xs: &[f64]| naive(xs, [n, ci, h, w], &wt, &bias, s, p).0;
            let want = fd_grad(f, &x64, &to64(&dyv));
            let e = rel_err(dx.as_slice().unwrap(), &want);
            assert!(e < 1e-5, "case {case}: vjp rel err {e}");
            // Parameter gradients against the direct formula in f64.
            let g = conv.param_grads(x.view(), dy.view()).unwrap();
            let mut gw = vec![0.0f64; co * ci * k * k];
            let mut gb = vec![0.0f64; co];
            for b in 0..n {
                for o in 0..co {
                    for oy in 0..ho {
                        for ox in 0..wo {
                            let d = dy[[b, o, oy, ox]] as f64;
                            gb[o] += d;
                            for c in 0..ci {
                                for a in 0..k {
                                    for q in 0..k {
                                        let iy = (oy * s + a) as isize - p as isize;
                                        let ix = (ox * s + q) as isize - p as isize;
                                        if iy >= 0
                                            && ix >= 0
                                            && (iy as usize) < h
                                            && (ix as usize) < w
                                        {
                                            gw[((o * ci + c) * k + a) * k + q] +=
                                                d * x[[b, c, iy as usize, ix as usize]] as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            assert!(
                rel_err(g.weight.as_slice().unwrap(), &gw) < 1e-5,
                "case {case}: dW"
            );
            assert!(
                rel_err(g.bias.as_slice().unwrap(), &gb) < 1e-5,
                "case {case}: db"
            );
        }
    }

    #[test]
    fn shape_errors_are_reported() {
        let conv = Conv2d::new(Array4::zeros((4, 3, 3, 3)), Array1::zeros(4), 1, 1).unwrap();
        let e = conv
            .forward(Array4::zeros((1, 2, 5, 5)).view())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("(N, 3, H, W)") && e.contains("[1, 2, 5, 5]"),
            "{e}"
        );
        assert!(conv.vjp(5, 5, Array4::zeros((1, 4, 4, 5)).view()).is_err());
        assert!(Conv2d::new(Array4::zeros((4, 3, 3, 3)), Array1::zeros(3), 1, 1).is_err());
        assert!(Conv2d::new(Array4::zeros((4, 3, 3, 3)), Array1::zeros(4), 0, 1).is_err());
        let c0 = Conv2d::new(Array4::zeros((1, 1, 3, 3)), Array1::zeros(1), 1, 0).unwrap();
        assert!(c0.forward(Array4::zeros((1, 1, 2, 2)).view()).is_err());
    }
}
