//! SiLU (swish): `y = x * sigmoid(x)`, elementwise on any shape.

use ndarray::{ArrayD, ArrayViewD, Zip};

use crate::nn::same_shape;
use crate::Result;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x * sigmoid(x)` elementwise (PyTorch's `nn.SiLU`).
pub fn silu(x: ArrayViewD<f32>) -> ArrayD<f32> {
    x.mapv(|v| v * sigmoid(v))
}

/// VJP of [`silu`]: `dx = dy * s (1 + x (1 - s))`, `s = sigmoid(x)`.
pub fn silu_vjp(x: ArrayViewD<f32>, dy: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
    same_shape("silu", "output gradient", x.shape(), dy.shape())?;
    let mut dx = ArrayD::zeros(x.raw_dim());
    Zip::from(&mut dx).and(&x).and(&dy).for_each(|d, &v, &g| {
        let s = sigmoid(v);
        *d = g * s * (1.0 + v * (1.0 - s));
    });
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
    }
}
