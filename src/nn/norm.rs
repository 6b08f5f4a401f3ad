//! Group normalization (`nn.GroupNorm(groups, C, eps, affine=True)`).

use ndarray::{Array1, ArrayD, ArrayViewD};
use rayon::prelude::*;

use crate::nn::act::silu1;
use crate::nn::simd::wide;
use crate::nn::{same_shape, shape_err};
use crate::{Error, Result};

/// GroupNorm over input `(N, C, *spatial)` (any number of spatial axes, including none):
/// the `C` channels are split into `groups` consecutive groups of `C / groups`; each
/// (sample, group) block is normalized by its own mean and biased variance,
/// `y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]`. guided-diffusion's
/// `normalization(ch)` is `GroupNorm32(32, ch)` with eps 1e-5 (computed in f32; here the
/// block statistics are accumulated in f64).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    pub groups: usize,
    pub eps: f32,
    pub weight: Array1<f32>,
    pub bias: Array1<f32>,
}

/// Parameter gradients of [`GroupNorm`].
#[derive(Debug, Clone)]
pub struct GroupNormGrads {
    pub weight: Array1<f32>,
    pub bias: Array1<f32>,
}

impl GroupNorm {
    /// Validates `groups >= 1`, `C % groups == 0`, `bias.len() == weight.len() == C`,
    /// `eps > 0`.
    pub fn new(groups: usize, eps: f32, weight: Array1<f32>, bias: Array1<f32>) -> Result<Self> {
        let c = weight.len();
        if groups == 0 || c % groups != 0 || bias.len() != c || eps.is_nan() || eps <= 0.0 {
            return Err(Error::Invalid(format!(
                "group_norm: expected groups >= 1 dividing the channel count, weight and bias of equal length, eps > 0; got groups {groups}, weight {c}, bias {}, eps {eps}",
                bias.len()
            )));
        }
        Ok(GroupNorm {
            groups,
            eps,
            weight,
            bias,
        })
    }

    /// guided-diffusion's `normalization(channels)`: 32 groups, eps 1e-5.
    pub fn gn32(weight: Array1<f32>, bias: Array1<f32>) -> Result<Self> {
        Self::new(32, 1e-5, weight, bias)
    }

    fn check(&self, x: &ArrayViewD<f32>) -> Result<(usize, usize)> {
        let c = self.weight.len();
        if x.ndim() < 2 || x.shape()[1] != c {
            return Err(shape_err("group_norm", format!("(N, {c}, ...)"), x.shape()));
        }
        let spatial: usize = x.shape()[2..].iter().product();
        Ok((x.shape()[0], spatial))
    }

    /// Mean and 1/sqrt(var + eps) of one block (two passes; partial sums in f32 lanes,
    /// combined in f64).
    #[inline(always)]
    fn stats(&self, block: &[f32]) -> (f64, f64) {
        let len = block.len().max(1) as f64;
        let mean = sum64(block, |v| v) / len;
        let m = mean as f32;
        let var = sum64(block, |v| (v - m) * (v - m)) / len;
        (mean, 1.0 / (var + self.eps as f64).sqrt())
    }

    /// Forward; output has the input's shape.
    pub fn forward(&self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        self.forward_fused(x, None, false)
    }

    /// `silu(forward(x))` in one pass over the data.
    pub fn forward_silu(&self, x: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        self.forward_fused(x, None, true)
    }

    /// The forward followed, in the same pass, by a per-(sample, channel) affine map
    /// `y * mul[n, c] + add[n, c]` (`modulation = (mul, add)`, both `N x C` row-major: the
    /// scale-shift norm's `1 + scale` and `shift`) and, with `silu`, a SiLU.
    pub fn forward_fused(
        &self,
        x: ArrayViewD<f32>,
        modulation: Option<(&[f32], &[f32])>,
        silu: bool,
    ) -> Result<ArrayD<f32>> {
        let (n, s) = self.check(&x)?;
        let c = self.weight.len();
        if let Some((mul, add)) = modulation {
            if mul.len() != n * c || add.len() != n * c {
                return Err(Error::Invalid(format!(
                    "group_norm: modulation needs {n} x {c} values, got {} and {}",
                    mul.len(),
                    add.len()
                )));
            }
        }
        let cg = c / self.groups;
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let mut y = ArrayD::zeros(x.raw_dim());
        let blk = cg * s;
        if blk == 0 {
            return Ok(y);
        }
        y.as_slice_mut()
            .expect("fresh array")
            .par_chunks_mut(blk)
            .enumerate()
            .for_each(|(i, yb)| {
                let (b, g) = (i / self.groups, i % self.groups);
                let xb = &xs[i * blk..(i + 1) * blk];
                let (mean, rstd) = wide!(self.stats(xb));
                // (x - mean) first: folding the mean into the shift cancels badly when
                // rstd is large (near-constant blocks).
                let m = mean as f32;
                for j in 0..cg {
                    let ch = g * cg + j;
                    let (a, bias) = ((rstd * self.weight[ch] as f64) as f32, self.bias[ch]);
                    let modulation =
                        modulation.map(|(mul, add)| (mul[b * c + ch], add[b * c + ch]));
                    let (yc, xc) = (&mut yb[j * s..(j + 1) * s], &xb[j * s..(j + 1) * s]);
                    wide!(normalize_channel(yc, xc, m, a, bias, modulation, silu));
                }
            });
        Ok(y)
    }

    /// VJP with respect to the input: with `xh = (x - mean) rstd`, `g = dy * weight`,
    /// per block `dx = rstd (g - mean(g) - xh mean(g xh))`.
    pub fn vjp(&self, x: ArrayViewD<f32>, dy: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        let (_, s) = self.check(&x)?;
        same_shape("group_norm", "output gradient", x.shape(), dy.shape())?;
        let cg = self.weight.len() / self.groups;
        let x = x.as_standard_layout();
        let dy = dy.as_standard_layout();
        let (xs, dys) = (
            x.as_slice().expect("standard layout"),
            dy.as_slice().expect("standard layout"),
        );
        let mut dx = ArrayD::zeros(x.raw_dim());
        let blk = cg * s;
        if blk == 0 {
            return Ok(dx);
        }
        dx.as_slice_mut()
            .expect("fresh array")
            .par_chunks_mut(blk)
            .enumerate()
            .for_each(|(i, dxb)| {
                let g = i % self.groups;
                let xb = &xs[i * blk..(i + 1) * blk];
                let db = &dys[i * blk..(i + 1) * blk];
                let (mean, rstd) = wide!(self.stats(xb));
                let (m, r) = (mean as f32, rstd as f32);
                let (mut m1, mut m2) = (0.0f64, 0.0f64);
                for j in 0..cg {
                    let w = self.weight[g * cg + j] as f64;
                    let (xc, dc) = (&xb[j * s..(j + 1) * s], &db[j * s..(j + 1) * s]);
                    m1 += w * wide!(sum64(dc, |v| v));
                    m2 += w * r as f64 * wide!(dot64(dc, xc, m));
                }
                let len = blk as f64;
                let (m1, m2) = ((m1 / len) as f32, (m2 / len) as f32);
                for j in 0..cg {
                    let w = self.weight[g * cg + j];
                    let range = j * s..(j + 1) * s;
                    let (o, xc, dc) = (&mut dxb[range.clone()], &xb[range.clone()], &db[range]);
                    wide!({
                        for ((o, &xv), &dv) in o.iter_mut().zip(xc).zip(dc) {
                            let xh = (xv - m) * r;
                            *o = r * (dv * w - m1 - xh * m2);
                        }
                    });
                }
            });
        Ok(dx)
    }

    /// Parameter gradients: `dweight[c] = sum dy xh`, `dbias[c] = sum dy` over batch and
    /// space.
    pub fn param_grads(&self, x: ArrayViewD<f32>, dy: ArrayViewD<f32>) -> Result<GroupNormGrads> {
        let (n, s) = self.check(&x)?;
        same_shape("group_norm", "output gradient", x.shape(), dy.shape())?;
        let c = self.weight.len();
        let cg = c / self.groups;
        let x = x.as_standard_layout();
        let dy = dy.as_standard_layout();
        let (xs, dys) = (
            x.as_slice().unwrap_or_default(),
            dy.as_slice().unwrap_or_default(),
        );
        let mut gw = vec![0.0f64; c];
        let mut gb = vec![0.0f64; c];
        let blk = cg * s;
        for i in 0..n * self.groups {
            if blk == 0 {
                break;
            }
            let g = i % self.groups;
            let xb = &xs[i * blk..(i + 1) * blk];
            let (mean, rstd) = self.stats(xb);
            for j in 0..cg {
                for t in j * s..(j + 1) * s {
                    let d = dys[i * blk + t] as f64;
                    gw[g * cg + j] += d * (xb[t] as f64 - mean) * rstd;
                    gb[g * cg + j] += d;
                }
            }
        }
        Ok(GroupNormGrads {
            weight: gw.iter().map(|&v| v as f32).collect(),
            bias: gb.iter().map(|&v| v as f32).collect(),
        })
    }
}

/// One channel of [`GroupNorm::forward_fused`]: `y = (x - m) a + bias`, then
/// `y mul + add` with `modulation = (mul, add)`, then SiLU with `silu` (each rounded as
/// written out).
#[inline(always)]
fn normalize_channel(
    y: &mut [f32],
    x: &[f32],
    m: f32,
    a: f32,
    bias: f32,
    modulation: Option<(f32, f32)>,
    silu: bool,
) {
    match (modulation, silu) {
        (Some((mul, add)), true) => {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = silu1(((xv - m) * a + bias) * mul + add);
            }
        }
        (Some((mul, add)), false) => {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = ((xv - m) * a + bias) * mul + add;
            }
        }
        (None, true) => {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = silu1((xv - m) * a + bias);
            }
        }
        (None, false) => {
            for (yv, &xv) in y.iter_mut().zip(x) {
                *yv = (xv - m) * a + bias;
            }
        }
    }
}

/// `sum f(x_i)` in f64, vectorisable: f32 partial sums in 16 lanes over blocks of 1024
/// elements, the blocks combined in f64 (relative error ~1e-7 for the sums here).
#[inline(always)]
fn sum64(xs: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    xs.chunks(1024)
        .map(|blk| {
            let mut acc = [0.0f32; 16];
            let mut it = blk.chunks_exact(16);
            for c in &mut it {
                for (a, &v) in acc.iter_mut().zip(c) {
                    *a += f(v);
                }
            }
            let tail: f32 = it.remainder().iter().map(|&v| f(v)).sum();
            acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
        })
        .sum()
}

/// `sum d_i (x_i - m)` in f64, vectorised as [`sum64`].
#[inline(always)]
fn dot64(d: &[f32], x: &[f32], m: f32) -> f64 {
    d.chunks(1024)
        .zip(x.chunks(1024))
        .map(|(db, xb)| {
            let mut acc = [0.0f32; 16];
            let (mut di, mut xi) = (db.chunks_exact(16), xb.chunks_exact(16));
            for (dc, xc) in (&mut di).zip(&mut xi) {
                for ((a, &dv), &xv) in acc.iter_mut().zip(dc).zip(xc) {
                    *a += dv * (xv - m);
                }
            }
            let tail: f32 = di
                .remainder()
                .iter()
                .zip(xi.remainder())
                .map(|(&dv, &xv)| dv * (xv - m))
                .sum();
            acc.iter().map(|&v| v as f64).sum::<f64>() + tail as f64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testutil::*;
    use ndarray::IxDyn;

    /// Naive GroupNorm in f64 (two-pass statistics per (n, group)).
    fn naive(
        x: &[f64],
        n: usize,
        c: usize,
        s: usize,
        groups: usize,
        w: &[f32],
        b: &[f32],
    ) -> Vec<f64> {
        let cg = c / groups;
        let mut y = vec![0.0; x.len()];
        for a in 0..n {
            for g in 0..groups {
                let idx: Vec<usize> = (g * cg..(g + 1) * cg)
                    .flat_map(|ch| (0..s).map(move |t| (a * c + ch) * s + t))
                    .collect();
                let m = idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64;
                let v = idx.iter().map(|&i| (x[i] - m).powi(2)).sum::<f64>() / idx.len() as f64;
                for &i in &idx {
                    let ch = (i / s) % c;
                    y[i] = (x[i] - m) / (v + 1e-5).sqrt() * w[ch] as f64 + b[ch] as f64;
                }
            }
        }
        y
    }

    #[test]
    fn forward_vjp_param_grads_match_naive() {
        // (N, C, spatial, groups): 2-D images with odd sizes, a sequence (N, C, T), and
        // one group per channel.
        let cases: [(Vec<usize>, usize); 3] = [
            (vec![2, 6, 3, 5], 3),
            (vec![1, 8, 7], 2),
            (vec![2, 4, 2, 3], 4),
        ];
        for (k, (shape, groups)) in cases.into_iter().enumerate() {
            let (n, c) = (shape[0], shape[1]);
            let s: usize = shape[2..].iter().product();
            let w = rand_vec(c, 100 + k as u64);
            let b = rand_vec(c, 200 + k as u64);
            let gn = GroupNorm::new(groups, 1e-5, w.clone().into(), b.clone().into()).unwrap();
            // Offset and scale the input so the mean subtraction matters.
            let xv: Vec<f32> = rand_vec(n * c * s, 300 + k as u64)
                .iter()
                .map(|v| 3.0 * v + 2.0)
                .collect();
            let x = ArrayD::from_shape_vec(IxDyn(&shape), xv.clone()).unwrap();
            let x64 = to64(&xv);
            let f = |xs: &[f64]| naive(xs, n, c, s, groups, &w, &b);
            let y = gn.forward(x.view()).unwrap();
            // f64 statistics, f32 output: ~1e-7 relative.
            assert!(
                rel_err(y.as_slice().unwrap(), &f(&x64)) < 1e-5,
                "case {k}: forward"
            );
            let dyv = rand_vec(n * c * s, 400 + k as u64);
            let dy = ArrayD::from_shape_vec(IxDyn(&shape), dyv.clone()).unwrap();
            let dx = gn.vjp(x.view(), dy.view()).unwrap();
            let want = fd_grad(f, &x64, &to64(&dyv));
            // The input is f32-rounded but the VJP uses the same rounded values; FD step
            // 1e-4 on values of size ~5: truncation ~1e-8.
            let e = rel_err(dx.as_slice().unwrap(), &want);
            assert!(e < 1e-4, "case {k}: vjp rel err {e}");
            let g = gn.param_grads(x.view(), dy.view()).unwrap();
            // d/dweight and d/dbias by finite differences of the naive map in the params.
            let h = 1e-4;
            for ch in 0..c {
                let mut wp = w.clone();
                let mut wm = w.clone();
                wp[ch] += h as f32;
                wm[ch] -= h as f32;
                let yp = naive(&x64, n, c, s, groups, &wp, &b);
                let ym = naive(&x64, n, c, s, groups, &wm, &b);
                let step = wp[ch] as f64 - wm[ch] as f64;
                let fd: f64 = yp
                    .iter()
                    .zip(&ym)
                    .zip(&dyv)
                    .map(|((p, m), d)| (p - m) * *d as f64)
                    .sum::<f64>()
                    / step;
                assert!(
                    (g.weight[ch] as f64 - fd).abs() < 1e-3 * fd.abs().max(1.0),
                    "dweight {ch}"
                );
                let db: f64 = (0..n)
                    .flat_map(|a| (0..s).map(move |t| (a, t)))
                    .map(|(a, t)| dyv[(a * c + ch) * s + t] as f64)
                    .sum();
                assert!((g.bias[ch] as f64 - db).abs() < 1e-5, "dbias {ch}");
            }
        }
    }

    #[test]
    fn bad_parameters_and_shapes_are_errors() {
        assert!(GroupNorm::new(3, 1e-5, Array1::ones(8), Array1::zeros(8)).is_err());
        assert!(GroupNorm::new(2, 1e-5, Array1::ones(8), Array1::zeros(6)).is_err());
        assert!(GroupNorm::gn32(Array1::ones(64), Array1::zeros(64)).is_ok());
        let gn = GroupNorm::new(2, 1e-5, Array1::ones(4), Array1::zeros(4)).unwrap();
        assert!(gn
            .forward(ArrayD::zeros(IxDyn(&[1, 3, 2, 2])).view())
            .is_err());
        // A constant block normalizes to the bias (variance 0 is guarded by eps).
        let y = gn
            .forward(ArrayD::from_elem(IxDyn(&[1, 4, 2, 2]), 5.0).view())
            .unwrap();
        assert!(y.iter().all(|v| v.abs() < 1e-6));
    }
}
