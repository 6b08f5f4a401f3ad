//! Small dense matrices as linear operators, and the dense matrix of any linear operator
//! (for exact Gaussian computations on small problems).

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn};
use posterior_operators::LinearOperator;

use crate::error::{Error, Result};

/// `y = M x` for a dense `rows x cols` matrix `M` (row-major, f32), acting on vectors of
/// shape `(cols)` and producing `(rows)`. Meant for tests and small exact problems.
#[derive(Clone, Debug)]
pub struct DenseOperator {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
    domain: Vec<usize>,
    range: Vec<usize>,
}

impl DenseOperator {
    /// A `rows x cols` matrix from its entries in row-major order.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows == 0 || cols == 0 || data.len() != rows * cols {
            return Err(Error::Invalid(format!(
                "dense operator: {} entries given for a {rows} x {cols} matrix (expected {}, both sizes positive)",
                data.len(),
                rows * cols
            )));
        }
        posterior_operators::error::check_finite("dense operator matrix", data.iter())?;
        Ok(DenseOperator {
            rows,
            cols,
            data,
            domain: vec![cols],
            range: vec![rows],
        })
    }
    /// The entries, row-major.
    pub fn entries(&self) -> &[f32] {
        &self.data
    }
}

impl LinearOperator for DenseOperator {
    fn name(&self) -> String {
        format!("dense({}x{})", self.rows, self.cols)
    }
    fn domain_shape(&self) -> &[usize] {
        &self.domain
    }
    fn range_shape(&self) -> &[usize] {
        &self.range
    }
    fn apply(&self, x: ArrayViewD<f32>, mut y: ArrayViewMutD<f32>) {
        for (i, yi) in y.iter_mut().enumerate() {
            let row = &self.data[i * self.cols..(i + 1) * self.cols];
            *yi = row
                .iter()
                .zip(x.iter())
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>() as f32;
        }
    }
    fn adjoint(&self, y: ArrayViewD<f32>, mut x: ArrayViewMutD<f32>) {
        let mut acc = vec![0.0f64; self.cols];
        for (i, yi) in y.iter().enumerate() {
            let row = &self.data[i * self.cols..(i + 1) * self.cols];
            for (a, r) in acc.iter_mut().zip(row) {
                *a += *r as f64 * *yi as f64;
            }
        }
        for (xi, a) in x.iter_mut().zip(acc) {
            *xi = a as f32;
        }
    }
}

/// The dense matrix of a linear operator, `(rows, cols, entries row-major in f64)`, with
/// rows and columns in the row-major order of its range and domain arrays. Built by
/// applying the operator to each basis vector, so only for small domains (at most 4096).
pub fn dense_matrix(op: &dyn LinearOperator) -> Result<(usize, usize, Vec<f64>)> {
    let d: usize = op.domain_shape().iter().product();
    let m: usize = op.range_shape().iter().product();
    if d > 4096 {
        return Err(Error::Invalid(format!(
            "{}: a dense matrix needs a small domain (at most 4096 values), got {d}",
            op.name()
        )));
    }
    let mut out = vec![0.0f64; m * d];
    let mut e = ArrayD::<f32>::zeros(IxDyn(op.domain_shape()));
    let mut y = ArrayD::<f32>::zeros(IxDyn(op.range_shape()));
    for j in 0..d {
        if let Some(v) = e.as_slice_mut() {
            v.fill(0.0);
            v[j] = 1.0;
        }
        op.apply(e.view(), y.view_mut());
        for (i, v) in y.iter().enumerate() {
            out[i * d + j] = *v as f64;
        }
    }
    Ok((m, d, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_operators::adjoint_test;

    #[test]
    fn dense_operator_adjoint_and_matrix() {
        for &(r, c) in &[(3usize, 5usize), (4, 4), (7, 2)] {
            let data: Vec<f32> = (0..r * c)
                .map(|k| ((k * 7 + 3) % 11) as f32 - 5.0)
                .collect();
            let op = DenseOperator::new(r, c, data.clone()).unwrap();
            adjoint_test(&op, 3).verdict("dense", 1e-5).unwrap();
            let (m, d, mat) = dense_matrix(&op).unwrap();
            assert_eq!((m, d), (r, c));
            assert!(mat.iter().zip(&data).all(|(a, b)| *a == *b as f64));
        }
        assert!(DenseOperator::new(2, 2, vec![1.0; 3]).is_err());
        assert!(DenseOperator::new(1, 1, vec![f32::NAN]).is_err());
    }
}
