//! 2-D convolution (cross-correlation, as PyTorch) by im2col + GEMM.

use std::sync::Mutex;

use ndarray::{Array1, Array4, ArrayView4};
use rayon::prelude::*;

use crate::nn::{gemm::sgemm, same_shape, shape_err};
use crate::{Error, Result};

/// `nn.Conv2d(in, out, (kh, kw), stride, padding)` with zero padding.
///
/// `weight` is `(out, in, kh, kw)` and `bias` `(out,)`, exactly PyTorch's layout. Input
/// `(N, in, H, W)`, output `(N, out, Ho, Wo)` with `Ho = (H + 2 pad - kh) / stride + 1`
/// (floor), likewise `Wo`. guided-diffusion uses 3x3 (pad 1, stride 1 or 2 for strided
/// downsampling) and 1x1 (pad 0).
///
/// Computed per batch item as `Y = W_mat (out, in*kh*kw) x col (in*kh*kw, Ho*Wo)`, where
/// `col` is the im2col unfolding; the `col` buffer is a workspace kept in the layer and
/// reused across calls (a 1x1, stride-1 convolution skips it). Calls on one layer from
/// several threads serialize on that workspace.
#[derive(Debug)]
pub struct Conv2d {
    pub weight: Array4<f32>,
    pub bias: Array1<f32>,
    pub stride: usize,
    pub padding: usize,
    scratch: Mutex<Vec<f32>>,
}

/// Parameter gradients of [`Conv2d`], summed over the batch.
#[derive(Debug, Clone)]
pub struct Conv2dGrads {
    pub weight: Array4<f32>,
    pub bias: Array1<f32>,
}

impl Clone for Conv2d {
    fn clone(&self) -> Self {
        Conv2d {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            stride: self.stride,
            padding: self.padding,
            scratch: Mutex::new(Vec::new()),
        }
    }
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
            weight: weight.as_standard_layout().into_owned(),
            bias,
            stride,
            padding,
            scratch: Mutex::new(Vec::new()),
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

    fn is_pointwise(&self) -> bool {
        let (_, _, kh, kw) = self.weight.dim();
        kh == 1 && kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// im2col of one image `x` (in, H, W) into `col` (in*kh*kw, Ho*Wo).
    fn im2col(&self, x: &[f32], h: usize, w: usize, ho: usize, wo: usize, col: &mut [f32]) {
        let (_, ci, kh, kw) = self.weight.dim();
        let (s, p) = (self.stride as isize, self.padding as isize);
        debug_assert_eq!(col.len(), ci * kh * kw * ho * wo);
        col.par_chunks_mut(kh * kw * ho * wo)
            .enumerate()
            .for_each(|(c, block)| {
                let img = &x[c * h * w..(c + 1) * h * w];
                for a in 0..kh {
                    for b in 0..kw {
                        let row = &mut block[(a * kw + b) * ho * wo..(a * kw + b + 1) * ho * wo];
                        for oy in 0..ho {
                            let iy = oy as isize * s - p + a as isize;
                            let dst = &mut row[oy * wo..(oy + 1) * wo];
                            if iy < 0 || iy >= h as isize {
                                dst.fill(0.0);
                                continue;
                            }
                            let src = &img[iy as usize * w..(iy as usize + 1) * w];
                            for (ox, d) in dst.iter_mut().enumerate() {
                                let ix = ox as isize * s - p + b as isize;
                                *d = if ix < 0 || ix >= w as isize {
                                    0.0
                                } else {
                                    src[ix as usize]
                                };
                            }
                        }
                    }
                }
            });
    }

    /// Adjoint of [`Self::im2col`]: scatter-add `col` into `dx` (in, H, W), overwriting it.
    fn col2im(&self, col: &[f32], h: usize, w: usize, ho: usize, wo: usize, dx: &mut [f32]) {
        let (_, _, kh, kw) = self.weight.dim();
        let (s, p) = (self.stride as isize, self.padding as isize);
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

    fn with_scratch<R>(&self, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
        let mut guard = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if guard.len() < len {
            guard.resize(len, 0.0);
        }
        f(&mut guard[..len])
    }

    /// Forward: `(N, in, H, W) -> (N, out, Ho, Wo)`.
    pub fn forward(&self, x: ArrayView4<f32>) -> Result<Array4<f32>> {
        let (ho, wo) = self.check_input(&x)?;
        let (n, ci, h, w) = x.dim();
        let (co, _, kh, kw) = self.weight.dim();
        let x = x.as_standard_layout();
        let xs = x.as_slice().unwrap_or_default();
        let wmat = self.weight.as_slice().unwrap_or_default();
        let mut y = Array4::zeros((n, co, ho, wo));
        let ys = y.as_slice_mut().unwrap_or_default();
        let kdim = ci * kh * kw;
        let pointwise = self.is_pointwise();
        for b in 0..n {
            let yb = &mut ys[b * co * ho * wo..(b + 1) * co * ho * wo];
            for (o, row) in yb.chunks_mut(ho * wo).enumerate() {
                row.fill(self.bias[o]);
            }
            let xb = &xs[b * ci * h * w..(b + 1) * ci * h * w];
            if pointwise {
                sgemm(co, ho * wo, kdim, wmat, false, xb, false, yb, true);
            } else {
                self.with_scratch(kdim * ho * wo, |col| {
                    self.im2col(xb, h, w, ho, wo, col);
                    sgemm(co, ho * wo, kdim, wmat, false, col, false, yb, true);
                });
            }
        }
        Ok(y)
    }

    /// VJP with respect to the input: `dy` `(N, out, Ho, Wo)` for an input of spatial size
    /// `(h, w)`; returns `(N, in, h, w)`. (`dcol = W_mat^T dy`, then col2im.)
    pub fn vjp(&self, h: usize, w: usize, dy: ArrayView4<f32>) -> Result<Array4<f32>> {
        let (ho, wo) = self.out_size(h, w)?;
        let n = dy.dim().0;
        let (co, ci, kh, kw) = self.weight.dim();
        same_shape("conv2d", "output gradient", &[n, co, ho, wo], dy.shape())?;
        let dy = dy.as_standard_layout();
        let dys = dy.as_slice().unwrap_or_default();
        let wmat = self.weight.as_slice().unwrap_or_default();
        let mut dx = Array4::zeros((n, ci, h, w));
        let dxs = dx.as_slice_mut().unwrap_or_default();
        let kdim = ci * kh * kw;
        for b in 0..n {
            let dyb = &dys[b * co * ho * wo..(b + 1) * co * ho * wo];
            let dxb = &mut dxs[b * ci * h * w..(b + 1) * ci * h * w];
            if self.is_pointwise() {
                sgemm(kdim, ho * wo, co, wmat, true, dyb, false, dxb, false);
            } else {
                self.with_scratch(kdim * ho * wo, |col| {
                    sgemm(kdim, ho * wo, co, wmat, true, dyb, false, col, false);
                    self.col2im(col, h, w, ho, wo, dxb);
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
        let x = x.as_standard_layout();
        let dy = dy.as_standard_layout();
        let (xs, dys) = (
            x.as_slice().unwrap_or_default(),
            dy.as_slice().unwrap_or_default(),
        );
        let kdim = ci * kh * kw;
        let mut gw = Array4::zeros(self.weight.raw_dim());
        let gws = gw.as_slice_mut().unwrap_or_default();
        for b in 0..n {
            let dyb = &dys[b * co * ho * wo..(b + 1) * co * ho * wo];
            let xb = &xs[b * ci * h * w..(b + 1) * ci * h * w];
            if self.is_pointwise() {
                sgemm(co, kdim, ho * wo, dyb, false, xb, true, gws, b > 0);
            } else {
                self.with_scratch(kdim * ho * wo, |col| {
                    self.im2col(xb, h, w, ho, wo, col);
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
                // f32 sums of <= 37 products of size <= 1: ~1e-6 relative.
                let e = rel_err(y.as_slice().unwrap(), &want);
                assert!(e < 1e-5, "case {case}: forward rel err {e}");
            }
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
