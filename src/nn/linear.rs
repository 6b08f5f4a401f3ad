//! Fully connected layer `y = x W^T + b` with PyTorch's parameter layout.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use std::sync::OnceLock;

use crate::nn::gemm::{gemm_packed_b, sgemm};
use crate::nn::packed::{pack_b, packed_b_len};
use crate::nn::{same_shape, shape_err};
use crate::{Error, Result};

/// `nn.Linear(in, out)`: `weight` `(out, in)`, `bias` `(out,)`; input `(N, in)`, output
/// `(N, out)`.
///
/// The parameters are public for reading; build a new layer with [`Linear::new`] to change
/// them (the forward caches a packed copy of `weight` on first use).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
    /// `weight^T` (`in x out`) in the packed `B` layout of the GEMM, built on first use:
    /// the batch is small (the timestep embedding), so repacking the weights on every call
    /// would cost as much as the product.
    packed_t: OnceLock<Vec<f32>>,
}

/// Parameter gradients of [`Linear`] (same shapes as the parameters).
#[derive(Debug, Clone)]
pub struct LinearGrads {
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
}

impl Linear {
    /// Validates that `bias` has `weight.nrows()` entries.
    pub fn new(weight: Array2<f32>, bias: Array1<f32>) -> Result<Self> {
        if bias.len() != weight.nrows() {
            return Err(Error::Invalid(format!(
                "linear: bias has {} entries, expected {} (weight is {:?})",
                bias.len(),
                weight.nrows(),
                weight.shape()
            )));
        }
        Ok(Linear {
            weight: crate::nn::standard(weight),
            bias,
            packed_t: OnceLock::new(),
        })
    }

    pub fn in_features(&self) -> usize {
        self.weight.ncols()
    }
    pub fn out_features(&self) -> usize {
        self.weight.nrows()
    }

    fn check(&self, x: &ArrayView2<f32>) -> Result<()> {
        if x.ncols() != self.in_features() {
            return Err(shape_err(
                "linear",
                format!("(N, {})", self.in_features()),
                x.shape(),
            ));
        }
        Ok(())
    }

    /// `y = x W^T + b`.
    pub fn forward(&self, x: ArrayView2<f32>) -> Result<Array2<f32>> {
        self.check(&x)?;
        let x = x.as_standard_layout();
        let (n, i, o) = (x.nrows(), self.in_features(), self.out_features());
        let pb = self.packed_t.get_or_init(|| {
            let mut pb = vec![0.0; packed_b_len(i, o)];
            let w = self
                .weight
                .as_slice()
                .expect("Linear::new stores the weight contiguous");
            pack_b(w, i, o, true, 0..o, &mut pb);
            pb
        });
        let mut y = Array2::from_shape_fn((n, o), |(_, c)| self.bias[c]);
        gemm_packed_b(
            n,
            i,
            x.as_slice().expect("standard layout"),
            pb,
            o,
            y.as_slice_mut().expect("fresh array"),
        );
        Ok(y)
    }

    /// VJP with respect to the input: `dx = dy W`, `dy` `(N, out)`.
    pub fn vjp(&self, dy: ArrayView2<f32>) -> Result<Array2<f32>> {
        if dy.ncols() != self.out_features() {
            return Err(shape_err(
                "linear vjp",
                format!("(N, {})", self.out_features()),
                dy.shape(),
            ));
        }
        let dy = dy.as_standard_layout();
        let n = dy.nrows();
        let mut dx = Array2::zeros((n, self.in_features()));
        sgemm(
            n,
            self.in_features(),
            self.out_features(),
            dy.as_slice().unwrap_or_default(),
            false,
            self.weight.as_slice().unwrap_or_default(),
            false,
            dx.as_slice_mut().unwrap_or_default(),
            false,
        );
        Ok(dx)
    }

    /// Parameter gradients: `dW = dy^T x`, `db = sum_n dy`.
    pub fn param_grads(&self, x: ArrayView2<f32>, dy: ArrayView2<f32>) -> Result<LinearGrads> {
        self.check(&x)?;
        same_shape(
            "linear",
            "output gradient",
            &[x.nrows(), self.out_features()],
            dy.shape(),
        )?;
        let x = x.as_standard_layout();
        let dy = dy.as_standard_layout();
        let mut gw = Array2::zeros(self.weight.raw_dim());
        sgemm(
            self.out_features(),
            self.in_features(),
            x.nrows(),
            dy.as_slice().unwrap_or_default(),
            true,
            x.as_slice().unwrap_or_default(),
            false,
            gw.as_slice_mut().unwrap_or_default(),
            false,
        );
        Ok(LinearGrads {
            weight: gw,
            bias: dy.sum_axis(Axis(0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testutil::*;

    #[test]
    fn forward_vjp_and_param_grads_match_naive() {
        let (n, i, o) = (3, 7, 5);
        let w = Array2::from_shape_vec((o, i), rand_vec(o * i, 1)).unwrap();
        let b = Array1::from(rand_vec(o, 2));
        let lin = Linear::new(w.clone(), b.clone()).unwrap();
        let x = Array2::from_shape_vec((n, i), rand_vec(n * i, 3)).unwrap();
        let dy = Array2::from_shape_vec((n, o), rand_vec(n * o, 4)).unwrap();
        let naive = |xs: &[f64]| -> Vec<f64> {
            let mut y = vec![0.0; n * o];
            for a in 0..n {
                for c in 0..o {
                    let mut s = b[c] as f64;
                    for k in 0..i {
                        s += w[[c, k]] as f64 * xs[a * i + k];
                    }
                    y[a * o + c] = s;
                }
            }
            y
        };
        let x64 = to64(x.as_slice().unwrap());
        // f32 sums of 7 terms of size <= 1: ~1e-6 relative.
        let y = lin.forward(x.view()).unwrap();
        assert!(rel_err(y.as_slice().unwrap(), &naive(&x64)) < 1e-5);
        let dx = lin.vjp(dy.view()).unwrap();
        let want = fd_grad(naive, &x64, &to64(dy.as_slice().unwrap()));
        assert!(rel_err(dx.as_slice().unwrap(), &want) < 1e-5);
        let g = lin.param_grads(x.view(), dy.view()).unwrap();
        for c in 0..o {
            for k in 0..i {
                let s: f64 = (0..n).map(|a| dy[[a, c]] as f64 * x[[a, k]] as f64).sum();
                assert!((g.weight[[c, k]] as f64 - s).abs() < 1e-5);
            }
            let s: f64 = (0..n).map(|a| dy[[a, c]] as f64).sum();
            assert!((g.bias[c] as f64 - s).abs() < 1e-5);
        }
        assert!(lin.forward(dy.view()).is_err());
        assert!(Linear::new(w, Array1::zeros(4)).is_err());
    }
}
