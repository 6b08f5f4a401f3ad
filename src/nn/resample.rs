//! 2x nearest upsampling and 2x average-pool downsampling on NCHW data (guided-diffusion's
//! `Upsample` / `Downsample` without their optional convolutions; the strided-conv
//! downsampling is [`crate::nn::Conv2d`] with stride 2).

use ndarray::{Array4, ArrayView4};

use crate::nn::same_shape;
use crate::Result;

/// Nearest-neighbour 2x upsampling: `(N, C, H, W) -> (N, C, 2H, 2W)`, each pixel copied to
/// a 2x2 block (`F.interpolate(x, scale_factor=2, mode="nearest")`).
pub fn upsample_nearest2x(x: ArrayView4<f32>) -> Array4<f32> {
    let (n, c, h, w) = x.dim();
    Array4::from_shape_fn((n, c, 2 * h, 2 * w), |(a, b, i, j)| x[[a, b, i / 2, j / 2]])
}

/// VJP of [`upsample_nearest2x`] (its adjoint): each input pixel receives the sum of its
/// 2x2 output block. `dy` must be `(N, C, 2H, 2W)`; returns `(N, C, H, W)`.
pub fn upsample_nearest2x_vjp(dy: ArrayView4<f32>) -> Result<Array4<f32>> {
    let (n, c, h2, w2) = dy.dim();
    if h2 % 2 != 0 || w2 % 2 != 0 {
        return Err(crate::nn::shape_err(
            "upsample_nearest2x_vjp",
            "(N, C, 2H, 2W) with even spatial sizes",
            dy.shape(),
        ));
    }
    Ok(Array4::from_shape_fn(
        (n, c, h2 / 2, w2 / 2),
        |(a, b, i, j)| {
            dy[[a, b, 2 * i, 2 * j]]
                + dy[[a, b, 2 * i, 2 * j + 1]]
                + dy[[a, b, 2 * i + 1, 2 * j]]
                + dy[[a, b, 2 * i + 1, 2 * j + 1]]
        },
    ))
}

/// 2x2 average pooling with stride 2: `(N, C, H, W) -> (N, C, H/2, W/2)` (floor, as
/// `F.avg_pool2d(x, 2, 2)`: an odd last row/column is dropped).
pub fn avg_pool2x(x: ArrayView4<f32>) -> Array4<f32> {
    let (n, c, h, w) = x.dim();
    Array4::from_shape_fn((n, c, h / 2, w / 2), |(a, b, i, j)| {
        0.25 * (x[[a, b, 2 * i, 2 * j]]
            + x[[a, b, 2 * i, 2 * j + 1]]
            + x[[a, b, 2 * i + 1, 2 * j]]
            + x[[a, b, 2 * i + 1, 2 * j + 1]])
    })
}

/// VJP of [`avg_pool2x`] for an input of shape `in_shape`: each input pixel of a pooled
/// block gets a quarter of the block's output gradient; dropped odd rows/columns get zero.
pub fn avg_pool2x_vjp(in_shape: [usize; 4], dy: ArrayView4<f32>) -> Result<Array4<f32>> {
    let [n, c, h, w] = in_shape;
    same_shape(
        "avg_pool2x",
        "output gradient",
        &[n, c, h / 2, w / 2],
        dy.shape(),
    )?;
    Ok(Array4::from_shape_fn((n, c, h, w), |(a, b, i, j)| {
        if i / 2 < h / 2 && j / 2 < w / 2 {
            0.25 * dy[[a, b, i / 2, j / 2]]
        } else {
            0.0
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testutil::*;

    fn arr(shape: [usize; 4], seed: u64) -> Array4<f32> {
        Array4::from_shape_vec(shape, rand_vec(shape.iter().product(), seed)).unwrap()
    }
    fn dot(a: &Array4<f32>, b: &Array4<f32>) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    #[test]
    fn upsample_forward_and_adjoint() {
        let x = arr([2, 3, 3, 5], 1);
        let y = upsample_nearest2x(x.view());
        assert_eq!(y.dim(), (2, 3, 6, 10));
        assert_eq!(y[[1, 2, 5, 9]], x[[1, 2, 2, 4]]);
        assert_eq!(y[[0, 1, 2, 7]], x[[0, 1, 1, 3]]);
        // Linear map: the VJP is the adjoint, <dy, U x> = <U^T dy, x> up to f32 rounding.
        let dy = arr([2, 3, 6, 10], 2);
        let dx = upsample_nearest2x_vjp(dy.view()).unwrap();
        let (l, r) = (dot(&dy, &y), dot(&dx, &x));
        assert!((l - r).abs() < 1e-5 * l.abs().max(1.0), "{l} vs {r}");
        assert!(upsample_nearest2x_vjp(arr([1, 1, 3, 4], 3).view()).is_err());
    }

    #[test]
    fn avgpool_forward_and_adjoint_odd_sizes() {
        for shape in [[2, 3, 4, 6], [1, 2, 5, 7]] {
            let x = arr(shape, 4);
            let y = avg_pool2x(x.view());
            let (h2, w2) = (shape[2] / 2, shape[3] / 2);
            assert_eq!(y.dim(), (shape[0], shape[1], h2, w2));
            let m = (x[[0, 1, 2, 2]] + x[[0, 1, 2, 3]] + x[[0, 1, 3, 2]] + x[[0, 1, 3, 3]]) / 4.0;
            assert!((y[[0, 1, 1, 1]] - m).abs() < 1e-6);
            let dy = arr([shape[0], shape[1], h2, w2], 5);
            let dx = avg_pool2x_vjp(shape, dy.view()).unwrap();
            let (l, r) = (dot(&dy, &y), dot(&dx, &x));
            assert!((l - r).abs() < 1e-5 * l.abs().max(1.0), "{l} vs {r}");
        }
        assert!(avg_pool2x_vjp([1, 1, 4, 4], arr([1, 1, 3, 2], 6).view()).is_err());
    }
}
