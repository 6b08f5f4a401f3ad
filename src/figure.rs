//! Contact sheets: images of different sizes laid out on a grid of equal tiles, for the
//! demo and benchmark reports.

use ndarray::{s, Array2, Array3, ArrayView3, ArrayView4, Axis};

/// Resizes a `(C, H, W)` image in [0, 1] to a `tile x tile` grayscale tile (channel mean,
/// nearest neighbour, aspect ratio kept, centred on black).
pub fn tile(image: ArrayView3<f32>, tile: usize) -> Array2<f32> {
    let gray = image
        .mean_axis(Axis(0))
        .unwrap_or_else(|| Array2::zeros((1, 1)));
    let (h, w) = gray.dim();
    let mut out = Array2::zeros((tile, tile));
    if h == 0 || w == 0 {
        return out;
    }
    let scale = tile as f32 / h.max(w) as f32;
    let (th, tw) = (
        ((h as f32 * scale) as usize).max(1),
        ((w as f32 * scale) as usize).max(1),
    );
    let (oy, ox) = ((tile - th) / 2, (tile - tw) / 2);
    for i in 0..th {
        let si = ((i as f32 / scale) as usize).min(h - 1);
        for j in 0..tw {
            let sj = ((j as f32 / scale) as usize).min(w - 1);
            out[[oy + i, ox + j]] = gray[[si, sj]];
        }
    }
    out
}

/// Lays tiles (all `tile x tile`) out in rows of `cols`, with a 2-pixel gap: a `(1, H, W)`
/// image.
pub fn grid(tiles: &[Array2<f32>], cols: usize, tile: usize) -> Array3<f32> {
    let gap = 2;
    let cols = cols.max(1);
    let rows = tiles.len().div_ceil(cols).max(1);
    let mut out = Array3::from_elem(
        (1, rows * (tile + gap) - gap, cols * (tile + gap) - gap),
        1.0,
    );
    for (k, t) in tiles.iter().enumerate() {
        let (r, c) = (k / cols, k % cols);
        let (y, x) = (r * (tile + gap), c * (tile + gap));
        out.slice_mut(s![0, y..y + tile, x..x + tile]).assign(t);
    }
    out
}

/// A batch of images `(N, C, H, W)` with values in `[0, 1]` laid out in rows of `cols`,
/// each shown at `scale` times its size (nearest neighbour) with a 2-pixel white gap:
/// a `(C, H', W')` image (colour kept, for one or three channels).
pub fn image_grid(images: ArrayView4<f32>, cols: usize, scale: usize) -> Array3<f32> {
    let (n, c, h, w) = images.dim();
    let (gap, cols, scale) = (2, cols.max(1).min(n.max(1)), scale.max(1));
    let rows = n.div_ceil(cols).max(1);
    let (th, tw) = (h * scale, w * scale);
    let mut out = Array3::from_elem((c, rows * (th + gap) - gap, cols * (tw + gap) - gap), 1.0);
    for k in 0..n {
        let (y, x) = ((k / cols) * (th + gap), (k % cols) * (tw + gap));
        for ch in 0..c {
            for i in 0..th {
                for j in 0..tw {
                    out[[ch, y + i, x + j]] = images[[k, ch, i / scale, j / scale]];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    #[test]
    fn image_grid_places_scaled_tiles_row_major_with_white_gaps() {
        let imgs = Array4::from_shape_fn((3, 1, 2, 2), |(k, _, i, j)| {
            (k * 4 + i * 2 + j) as f32 / 12.0
        });
        let g = image_grid(imgs.view(), 2, 2);
        // 2 columns of 4-px tiles + a 2-px gap; 2 rows.
        assert_eq!(g.shape(), &[1, 10, 10]);
        assert_eq!(g[[0, 0, 0]], imgs[[0, 0, 0, 0]]);
        assert_eq!(g[[0, 3, 3]], imgs[[0, 0, 1, 1]]);
        assert_eq!(g[[0, 0, 6]], imgs[[1, 0, 0, 0]]);
        assert_eq!(g[[0, 6, 0]], imgs[[2, 0, 0, 0]]);
        assert_eq!(g[[0, 4, 0]], 1.0); // gap
        assert_eq!(g[[0, 9, 9]], 1.0); // empty cell
    }
}
