//! 2x resampling by a separable FIR filter, as EDM's `Conv2d(up=True | down=True,
//! resample_filter=f)` does it (DDPM++ / NCSN++ after Song et al.; StyleGAN2's `upfirdn2d`
//! at factor 2).
//!
//! The 2-D filter is `outer(f, f) / sum(f)^2` for the 1-D taps `f` (`[1, 1]`: the box filter,
//! `[1, 3, 3, 1]`: NCSN++'s). With `p = (len - 1) / 2`, per axis:
//! - down: `y[i] = sum_a g[a] x[2i + a - p]` with `g = f / sum f` (zero outside `x`): EDM's
//!   depthwise `conv2d(x, filter, stride=2, padding=p)`, `(H, W) -> (H/2, W/2)`;
//! - up: `y[2i + a - p] += 2 g[a] x[i]`: EDM's depthwise `conv_transpose2d(x, 4 filter,
//!   stride=2, padding=p)`, `(H, W) -> (2H, 2W)`.
//!
//! The box filter gives 2x2 average pooling and nearest-neighbour upsampling exactly. Each
//! resampling's VJP is the other's structure (a scatter for a gather), so four 1-D
//! passes serve the forward and reverse directions. Only even filter lengths are accepted:
//! an odd one upsamples to `2H - 1`, which no U-Net's skips fit.

use ndarray::{Array4, ArrayView4};
use rayon::prelude::*;

use crate::nn::same_shape;
use crate::{Error, Result};

/// A normalised, separable 2x resampling filter (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Fir {
    /// `f / sum(f)`, even length.
    taps: Vec<f32>,
}

impl Fir {
    /// The filter of EDM's `resample_filter` list (`[1, 1]`, `[1, 3, 3, 1]`, ...): even
    /// length, finite, positive sum.
    pub fn new(filter: &[f64]) -> Result<Fir> {
        let sum: f64 = filter.iter().sum();
        if filter.is_empty()
            || !filter.len().is_multiple_of(2)
            || filter.iter().any(|v| !v.is_finite())
            || sum.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err(Error::Unsupported(format!(
                "resample_filter {filter:?}: expected an even number of finite taps with a positive sum, such as [1, 1] or [1, 3, 3, 1]"
            )));
        }
        Ok(Fir {
            taps: filter.iter().map(|&v| (v / sum) as f32).collect(),
        })
    }

    /// The box filter `[1, 1]` (average pooling / nearest upsampling).
    pub fn is_box(&self) -> bool {
        self.taps == [0.5, 0.5]
    }

    /// The padding of EDM's resampling, `(len - 1) / 2`.
    fn pad(&self) -> usize {
        (self.taps.len() - 1) / 2
    }

    /// The 2-D filter `outer(g, g)` as EDM stores it (`resample_filter` buffers,
    /// `(1, 1, len, len)` row-major).
    pub fn kernel_2d(&self) -> Vec<f32> {
        let t = &self.taps;
        t.iter()
            .flat_map(|a| t.iter().map(move |b| a * b))
            .collect()
    }

    /// The number of taps per axis.
    pub fn taps(&self) -> usize {
        self.taps.len()
    }

    /// Downsampling with EDM's padding: `(N, C, H, W) -> (N, C, H/2, W/2)` (`H`, `W` even).
    pub fn down2x(&self, x: ArrayView4<f32>) -> Result<Array4<f32>> {
        self.down(x, self.pad())
    }

    /// Downsampling without padding (EDM's fused `conv -> filter` of NCSN++'s residual
    /// encoder path, whose convolution pads by both radii): `(H, W) -> ((H - len) / 2 + 1,
    /// ...)`.
    pub fn down2x_valid(&self, x: ArrayView4<f32>) -> Result<Array4<f32>> {
        self.down(x, 0)
    }

    /// Upsampling: `(N, C, H, W) -> (N, C, 2H, 2W)`.
    pub fn up2x(&self, x: ArrayView4<f32>) -> Array4<f32> {
        let (n, c, h, w) = x.dim();
        let g: Vec<f32> = self.taps.iter().map(|v| 2.0 * v).collect();
        planes(x, (n, c, 2 * h, 2 * w), |src, dst| {
            scatter2d(src, h, w, dst, 2 * h, 2 * w, &g, self.pad())
        })
    }

    /// VJP of [`Fir::down2x`] for an input of shape `in_shape`.
    pub fn down2x_vjp(&self, in_shape: [usize; 4], dy: ArrayView4<f32>) -> Result<Array4<f32>> {
        self.down_vjp(in_shape, dy, self.pad())
    }

    /// VJP of [`Fir::down2x_valid`] for an input of shape `in_shape`.
    pub fn down2x_valid_vjp(
        &self,
        in_shape: [usize; 4],
        dy: ArrayView4<f32>,
    ) -> Result<Array4<f32>> {
        self.down_vjp(in_shape, dy, 0)
    }

    /// VJP of [`Fir::up2x`]: `dy` `(N, C, 2H, 2W)` -> `(N, C, H, W)`.
    pub fn up2x_vjp(&self, dy: ArrayView4<f32>) -> Result<Array4<f32>> {
        let (n, c, h2, w2) = dy.dim();
        if h2 % 2 != 0 || w2 % 2 != 0 {
            return Err(crate::nn::shape_err(
                "fir up2x vjp",
                "(N, C, 2H, 2W) with even spatial sizes",
                dy.shape(),
            ));
        }
        let g: Vec<f32> = self.taps.iter().map(|v| 2.0 * v).collect();
        let (h, w) = (h2 / 2, w2 / 2);
        Ok(planes(dy, (n, c, h, w), |src, dst| {
            gather2d(src, h2, w2, dst, h, w, &g, self.pad())
        }))
    }

    /// Output size of a stride-2 gather over `n` samples with padding `pad`.
    fn down_len(&self, n: usize, pad: usize) -> Option<usize> {
        (n + 2 * pad)
            .checked_sub(self.taps.len())
            .map(|k| k / 2 + 1)
    }

    fn down_shape(&self, shape: &[usize], pad: usize) -> Result<(usize, usize)> {
        match (self.down_len(shape[2], pad), self.down_len(shape[3], pad)) {
            (Some(h), Some(w)) => Ok((h, w)),
            _ => Err(crate::nn::shape_err(
                "fir down2x",
                format!("(N, C, H, W) with H, W >= {}", self.taps.len() - 2 * pad),
                shape,
            )),
        }
    }

    fn down(&self, x: ArrayView4<f32>, pad: usize) -> Result<Array4<f32>> {
        let (n, c, h, w) = x.dim();
        let (ho, wo) = self.down_shape(x.shape(), pad)?;
        Ok(planes(x, (n, c, ho, wo), |src, dst| {
            gather2d(src, h, w, dst, ho, wo, &self.taps, pad)
        }))
    }

    fn down_vjp(
        &self,
        in_shape: [usize; 4],
        dy: ArrayView4<f32>,
        pad: usize,
    ) -> Result<Array4<f32>> {
        let [n, c, h, w] = in_shape;
        let (ho, wo) = self.down_shape(&in_shape, pad)?;
        same_shape("fir down2x", "output gradient", &[n, c, ho, wo], dy.shape())?;
        Ok(planes(dy, (n, c, h, w), |src, dst| {
            scatter2d(src, ho, wo, dst, h, w, &self.taps, pad)
        }))
    }
}

/// Applies `f(src_plane, dst_plane)` to every `(n, c)` plane in parallel.
fn planes(
    x: ArrayView4<f32>,
    out: (usize, usize, usize, usize),
    f: impl Fn(&[f32], &mut [f32]) + Sync,
) -> Array4<f32> {
    let (_, _, h, w) = x.dim();
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let mut y = Array4::zeros(out);
    let plane = out.2 * out.3;
    if plane == 0 || h * w == 0 {
        return y;
    }
    y.as_slice_mut()
        .expect("fresh array")
        .par_chunks_mut(plane)
        .zip(xs.par_chunks(h * w))
        .for_each(|(dst, src)| f(src, dst));
    y
}

/// The index `2 i + a - pad` when it lies in `[0, n)`.
#[inline]
fn tap_index(i: usize, a: usize, pad: usize, n: usize) -> Option<usize> {
    (2 * i + a).checked_sub(pad).filter(|&j| j < n)
}

/// `y = gather(x)` along both axes of an `h x w` plane into `ho x wo`:
/// `y[i] = sum_a g[a] x[2i + a - pad]` per axis.
#[allow(clippy::too_many_arguments)]
fn gather2d(
    x: &[f32],
    h: usize,
    w: usize,
    y: &mut [f32],
    ho: usize,
    wo: usize,
    g: &[f32],
    pad: usize,
) {
    // Rows first (h x wo), then columns, whole rows at a time.
    let mut rows = vec![0.0f32; h * wo];
    for (xr, rr) in x.chunks_exact(w).zip(rows.chunks_exact_mut(wo)) {
        for (i, out) in rr.iter_mut().enumerate() {
            *out = g
                .iter()
                .enumerate()
                .filter_map(|(a, &ga)| tap_index(i, a, pad, w).map(|j| ga * xr[j]))
                .sum();
        }
    }
    for (i, yr) in y.chunks_exact_mut(wo).enumerate().take(ho) {
        for (a, &ga) in g.iter().enumerate() {
            if let Some(j) = tap_index(i, a, pad, h) {
                for (o, &v) in yr.iter_mut().zip(&rows[j * wo..(j + 1) * wo]) {
                    *o += ga * v;
                }
            }
        }
    }
}

/// `y += scatter(x)` along both axes of an `h x w` plane into `ho x wo`:
/// `y[2i + a - pad] += g[a] x[i]` per axis (the adjoint of [`gather2d`]).
#[allow(clippy::too_many_arguments)]
fn scatter2d(
    x: &[f32],
    h: usize,
    w: usize,
    y: &mut [f32],
    ho: usize,
    wo: usize,
    g: &[f32],
    pad: usize,
) {
    let mut rows = vec![0.0f32; h * wo];
    for (xr, rr) in x.chunks_exact(w).zip(rows.chunks_exact_mut(wo)) {
        for (i, &v) in xr.iter().enumerate() {
            for (a, &ga) in g.iter().enumerate() {
                if let Some(j) = tap_index(i, a, pad, wo) {
                    rr[j] += ga * v;
                }
            }
        }
    }
    for (i, rr) in rows.chunks_exact(wo).enumerate() {
        for (a, &ga) in g.iter().enumerate() {
            if let Some(j) = tap_index(i, a, pad, ho) {
                for (o, &v) in y[j * wo..(j + 1) * wo].iter_mut().zip(rr) {
                    *o += ga * v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testutil::*;
    use crate::nn::{avg_pool2x, upsample_nearest2x};

    /// EDM's resampling written out in f64 from its definition: the 2-D filter
    /// `outer(f, f) / sum(f)^2`, a depthwise stride-2 correlation with zero padding `pad`
    /// (down) or a stride-2 transposed convolution with `4 filter` cropped by `pad` (up).
    fn naive(
        x: &[f64],
        h: usize,
        w: usize,
        f: &[f64],
        up: bool,
        pad: usize,
    ) -> (Vec<f64>, usize, usize) {
        let k = f.len();
        let s: f64 = f.iter().sum::<f64>().powi(2);
        let k2 = |a: usize, b: usize| f[a] * f[b] / s;
        if up {
            let (ho, wo) = (2 * h, 2 * w);
            let mut y = vec![0.0; ho * wo];
            for i in 0..h {
                for j in 0..w {
                    for a in 0..k {
                        for b in 0..k {
                            let (oi, oj) = (2 * i + a, 2 * j + b);
                            if oi >= pad && oj >= pad && oi - pad < ho && oj - pad < wo {
                                y[(oi - pad) * wo + oj - pad] += 4.0 * k2(a, b) * x[i * w + j];
                            }
                        }
                    }
                }
            }
            (y, ho, wo)
        } else {
            let (ho, wo) = ((h + 2 * pad - k) / 2 + 1, (w + 2 * pad - k) / 2 + 1);
            let mut y = vec![0.0; ho * wo];
            for i in 0..ho {
                for j in 0..wo {
                    for a in 0..k {
                        for b in 0..k {
                            let (si, sj) = (
                                (2 * i + a) as isize - pad as isize,
                                (2 * j + b) as isize - pad as isize,
                            );
                            if si >= 0 && sj >= 0 && (si as usize) < h && (sj as usize) < w {
                                y[i * wo + j] += k2(a, b) * x[si as usize * w + sj as usize];
                            }
                        }
                    }
                }
            }
            (y, ho, wo)
        }
    }

    #[test]
    fn down_and_up_match_the_written_out_filters() {
        for f in [
            vec![1.0, 1.0],
            vec![1.0, 3.0, 3.0, 1.0],
            vec![1.0, 2.0, 5.0, 5.0, 2.0, 1.0],
        ] {
            let fir = Fir::new(&f).unwrap();
            for (h, w) in [(4, 6), (8, 8), (6, 2)] {
                let (n, c) = (2, 3);
                let xv = rand_vec(n * c * h * w, (h * 10 + w) as u64);
                let x = Array4::from_shape_vec((n, c, h, w), xv.clone()).unwrap();
                let pad = (f.len() - 1) / 2;
                for (up, valid) in [(false, false), (true, false), (false, true)] {
                    if valid && (h < f.len() || w < f.len()) {
                        continue;
                    }
                    let got = match (up, valid) {
                        (true, _) => fir.up2x(x.view()),
                        (false, false) => fir.down2x(x.view()).unwrap(),
                        (false, true) => fir.down2x_valid(x.view()).unwrap(),
                    };
                    let p = if valid { 0 } else { pad };
                    let mut want = Vec::new();
                    for plane in xv.chunks(h * w) {
                        let (y, ho, wo) = naive(&to64(plane), h, w, &f, up, p);
                        assert_eq!(got.dim(), (n, c, ho, wo));
                        want.extend(y);
                    }
                    let e = rel_err(got.as_slice().unwrap(), &want);
                    // f32 sums of <= 36 products against f64: ~1e-7.
                    assert!(e < 1e-6, "{f:?} {h}x{w} up={up} valid={valid}: {e}");
                }
            }
        }
    }

    #[test]
    fn box_filter_is_average_pooling_and_nearest_upsampling() {
        let fir = Fir::new(&[1.0, 1.0]).unwrap();
        assert!(fir.is_box() && !Fir::new(&[1.0, 3.0, 3.0, 1.0]).unwrap().is_box());
        let x = Array4::from_shape_vec((1, 2, 4, 6), rand_vec(48, 7)).unwrap();
        let d = fir.down2x(x.view()).unwrap();
        let e = (&d - &avg_pool2x(x.view()))
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()));
        assert!(e < 1e-6, "{e}");
        assert_eq!(fir.up2x(x.view()), upsample_nearest2x(x.view()));
    }

    /// Each VJP is the adjoint of its map: `<A x, y> = <x, A^T y>` to f32 rounding, and a
    /// wrong VJP (the other map's structure with the wrong taps) is off by O(1).
    #[test]
    fn vjps_are_adjoints() {
        let dot = |a: &Array4<f32>, b: &Array4<f32>| -> f64 {
            a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum()
        };
        for f in [vec![1.0, 1.0], vec![1.0, 3.0, 3.0, 1.0]] {
            let fir = Fir::new(&f).unwrap();
            let shape = [2, 3, 8, 6];
            let x = Array4::from_shape_vec(shape, rand_vec(288, 1)).unwrap();
            let d = fir.down2x(x.view()).unwrap();
            let dy = Array4::from_shape_vec(d.raw_dim(), rand_vec(d.len(), 2)).unwrap();
            let lhs = dot(&d, &dy);
            let rhs = dot(&x, &fir.down2x_vjp(shape, dy.view()).unwrap());
            assert!((lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0), "down {f:?}");
            let u = fir.up2x(x.view());
            let du = Array4::from_shape_vec(u.raw_dim(), rand_vec(u.len(), 3)).unwrap();
            let lhs = dot(&u, &du);
            let rhs = dot(&x, &fir.up2x_vjp(du.view()).unwrap());
            assert!((lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0), "up {f:?}");
            let v = fir.down2x_valid(x.view()).unwrap();
            let dv = Array4::from_shape_vec(v.raw_dim(), rand_vec(v.len(), 4)).unwrap();
            let lhs = dot(&v, &dv);
            let rhs = dot(&x, &fir.down2x_valid_vjp(shape, dv.view()).unwrap());
            assert!((lhs - rhs).abs() < 1e-5 * lhs.abs().max(1.0), "valid {f:?}");
            // The up VJP is a down with doubled taps: plain down2x is 4x off.
            let wrong = dot(&x, &fir.down2x(du.view()).unwrap());
            assert!((dot(&u, &du) - wrong).abs() > 0.1 * wrong.abs(), "{f:?}");
        }
    }

    #[test]
    fn bad_filters_and_shapes_are_errors() {
        for f in [
            vec![],
            vec![1.0, 2.0, 1.0],
            vec![1.0, -1.0],
            vec![f64::NAN, 1.0],
        ] {
            let e = Fir::new(&f).unwrap_err();
            assert!(matches!(e, Error::Unsupported(_)), "{f:?}");
        }
        let fir = Fir::new(&[1.0, 3.0, 3.0, 1.0]).unwrap();
        let x = Array4::<f32>::zeros((1, 1, 1, 1));
        assert!(fir.down2x_valid(x.view()).is_err());
        let dy = Array4::<f32>::zeros((1, 1, 3, 3));
        assert!(fir.down2x_vjp([1, 1, 8, 8], dy.view()).is_err());
        assert!(fir.up2x_vjp(dy.view()).is_err());
        assert_eq!(fir.kernel_2d()[0], 1.0 / 64.0);
        assert_eq!(fir.kernel_2d()[5], 9.0 / 64.0);
    }
}
