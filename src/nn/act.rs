//! SiLU (swish): `y = x * sigmoid(x)`, elementwise on any shape.

use ndarray::{ArrayD, ArrayViewD, Zip};
use rayon::prelude::*;

use crate::nn::same_shape;
use crate::nn::simd::{madd, wide};
use crate::Result;

/// `e^x` in f32 without a libm call, so loops over slices vectorise: `x = n ln 2 + r` with
/// an integer `n` (rounded to nearest by adding and subtracting 1.5 * 2^23, which needs no
/// rounding instruction; Cody-Waite split of ln 2, so `r` is exact to f32), `|r| <= ln 2 / 2`,
/// `e^r` by its degree-6 Taylor polynomial, `2^n` through the exponent bits (relative error
/// ~2e-7, a couple of ulp). The argument is clamped to [-87, 88], so the result is finite
/// and positive (`exp(-87) ~ 1.6e-38`). Loops that call it run inside [`wide!`]. The
/// multiply-adds are [`madd`], a multiply and an add on x86-64 (`f32::mul_add` would be a
/// libm call per element on the portable path) and fused on aarch64; the high part of
/// `ln 2` has 9 trailing zero bits, so `n ln2_hi` is exact either way.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: x + ROUND - ROUND rounds |x| < 2^22
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = madd(n, -0.693_145_75, x);
    let r = madd(n, -1.428_606_8e-6, r);
    let p = 1.0f32 / 720.0;
    let p = madd(p, r, 1.0 / 120.0);
    let p = madd(p, r, 1.0 / 24.0);
    let p = madd(p, r, 1.0 / 6.0);
    let p = madd(p, r, 0.5);
    let p = madd(p, r, 1.0);
    let p = madd(p, r, 1.0);
    f32::from_bits(p.to_bits().wrapping_add(((n as i32) << 23) as u32))
}

#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// `x * sigmoid(x)` for one value.
#[inline(always)]
pub(crate) fn silu1(x: f32) -> f32 {
    x * sigmoid(x)
}

/// Elements per rayon task of the elementwise maps.
const CHUNK: usize = 1 << 15;

/// `x * sigmoid(x)` elementwise (PyTorch's `nn.SiLU`).
pub fn silu(x: ArrayViewD<f32>) -> ArrayD<f32> {
    if let Some(xs) = x.as_slice() {
        let mut y = ArrayD::<f32>::zeros(x.raw_dim());
        let ys = y.as_slice_mut().expect("fresh array");
        ys.par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK))
            .for_each(|(yc, xc)| {
                wide!({
                    for (o, &v) in yc.iter_mut().zip(xc) {
                        *o = silu1(v);
                    }
                })
            });
        return y;
    }
    x.mapv(silu1)
}

/// `dy * silu'(x)` for one value: `s (1 + x (1 - s))`, `s = sigmoid(x)`.
#[inline(always)]
pub(crate) fn silu_grad1(x: f32, g: f32) -> f32 {
    let s = sigmoid(x);
    g * s * (1.0 + x * (1.0 - s))
}

/// VJP of [`silu`]: `dx = dy * s (1 + x (1 - s))`, `s = sigmoid(x)`.
pub fn silu_vjp(x: ArrayViewD<f32>, dy: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
    same_shape("silu", "output gradient", x.shape(), dy.shape())?;
    let mut dx = ArrayD::zeros(x.raw_dim());
    if let (Some(xs), Some(ds)) = (x.as_slice(), dy.as_slice()) {
        dx.as_slice_mut()
            .expect("fresh array")
            .par_chunks_mut(CHUNK)
            .zip(xs.par_chunks(CHUNK).zip(ds.par_chunks(CHUNK)))
            .for_each(|(oc, (xc, dc))| {
                wide!({
                    for ((o, &v), &g) in oc.iter_mut().zip(xc).zip(dc) {
                        *o = silu_grad1(v, g);
                    }
                })
            });
        return Ok(dx);
    }
    Zip::from(&mut dx)
        .and(&x)
        .and(&dy)
        .for_each(|d, &v, &g| *d = silu_grad1(v, g));
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testutil::*;
    use ndarray::IxDyn;

    fn naive(x: &[f64]) -> Vec<f64> {
        x.iter().map(|v| v / (1.0 + (-v).exp())).collect()
    }

    #[test]
    fn forward_and_vjp_match_f64_reference() {
        let n = 2 * 3 * 5;
        let xv: Vec<f32> = rand_vec(n, 7).iter().map(|v| 6.0 * v).collect();
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 3, 5]), xv.clone()).unwrap();
        let y = silu(x.view());
        // f32 exp/division: a few ulp.
        assert!(rel_err(y.as_slice().unwrap(), &naive(&to64(&xv))) < 1e-6);
        let dyv = rand_vec(n, 8);
        let dy = ArrayD::from_shape_vec(IxDyn(&[2, 3, 5]), dyv.clone()).unwrap();
        let dx = silu_vjp(x.view(), dy.view()).unwrap();
        let want = fd_grad(naive, &to64(&xv), &to64(&dyv));
        // Elementwise map: only rounding of f32 sigmoid and the FD truncation (~1e-8).
        assert!(rel_err(dx.as_slice().unwrap(), &want) < 1e-5);
        assert!(silu_vjp(x.view(), dy.slice(ndarray::s![.., .., ..2]).into_dyn()).is_err());
        // Non-contiguous views take the generic path and agree with the slice path.
        let xt = x.t();
        let yt = silu(xt.view());
        assert!(yt.iter().zip(xt.iter()).all(|(a, b)| *a == silu1(*b)));
    }

    #[test]
    fn fast_exp_is_accurate_over_the_range() {
        let mut worst = 0.0f64;
        for i in -8700..=8790 {
            let x = i as f32 * 0.01 + 0.003;
            let want = (x as f64).exp();
            worst = worst.max(((fast_exp(x) as f64 - want) / want).abs());
        }
        // A few ulp of f32 (eps 1.2e-7).
        assert!(worst < 5e-7, "max relative error {worst}");
        assert!(fast_exp(-1e30) > 0.0 && fast_exp(1e30).is_finite());
        assert_eq!(fast_exp(0.0), 1.0);
    }
}
