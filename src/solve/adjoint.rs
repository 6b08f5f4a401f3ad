//! The adjoint reconstruction `c A^T y`, with `c` fitted to the measurement.

use ndarray::{ArrayD, ArrayViewD};
use posterior_operators::linear::dot;
use posterior_operators::{LinearOperator, LinearOperatorExt};

use crate::error::Result;

/// `c A^T y` with `c = <A A^T y, y> / ||A A^T y||^2`, the factor that minimises
/// `||A (c A^T y) - y||`. For masks and orthonormal k-space sampling `A A^T` is a
/// projection and `c = 1` (zero-filling); for back-projection or pooling it puts the
/// result on the image's intensity scale.
pub fn scaled_adjoint(op: &dyn LinearOperator, y: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
    let mut x = op.adjoint_to(y.view())?;
    let aaty = op.apply_to(x.view())?;
    let den = dot(aaty.view(), aaty.view());
    if den > 0.0 {
        let c = (dot(aaty.view(), y) / den) as f32;
        x.mapv_inplace(|v| v * c);
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_operators::{Identity, Scaled};

    #[test]
    fn scaled_adjoint_undoes_a_scale() {
        let op = Scaled::new(Box::new(Identity::new(&[2, 3])), 4.0).unwrap();
        let y = ndarray::arr2(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]).into_dyn();
        // A = 4 I: A^T y = 4 y, c = 1/16, so the result is y / 4 = A^-1 y.
        let x = scaled_adjoint(&op, y.view()).unwrap();
        for (a, b) in x.iter().zip(y.iter()) {
            assert!((a - b / 4.0).abs() < 1e-6);
        }
    }
}
