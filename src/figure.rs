//! Contact sheets: images of different sizes laid out on a grid of equal tiles, for the
//! demo and benchmark reports.

use ndarray::{s, Array2, Array3, ArrayView3, Axis};

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
