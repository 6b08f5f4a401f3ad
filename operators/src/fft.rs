//! Two-dimensional FFTs, planned once and executed many times.
//!
//! Data are row-major `h x w` slices of `Complex32`. Two conventions:
//! - [`Fft2::forward`] / [`Fft2::inverse`]: the plain unnormalised DFT
//!   `X[k,l] = sum_{m,n} x[m,n] exp(-2 pi i (k m / h + l n / w))` and its unnormalised
//!   inverse (so `inverse(forward(x)) = h w x`), with the zero frequency at index (0, 0).
//!   Used for circular convolution.
//! - [`Fft2::forward_centered`] / [`Fft2::inverse_centered`]: the centred orthonormal DFT
//!   `fftshift(fft2(ifftshift(x))) / sqrt(h w)`, as MRI uses: the image centre and the
//!   k-space centre (DC) both sit at index (h/2, w/2) (floor division, numpy's convention
//!   for odd sizes too). It is unitary, so its inverse is its adjoint.

use std::sync::Arc;

use ndarray::{ArrayView3, ArrayViewMut3};
use num_complex::Complex32;
use rayon::prelude::*;
use rustfft::{Fft, FftPlanner};

/// A planned 2-D FFT of size `h x w`.
#[derive(Clone)]
pub struct Fft2 {
    h: usize,
    w: usize,
    row_fwd: Arc<dyn Fft<f32>>,
    row_inv: Arc<dyn Fft<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
}

impl std::fmt::Debug for Fft2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fft2({}x{})", self.h, self.w)
    }
}

impl Fft2 {
    /// Plans the transforms for `h x w` arrays (any sizes >= 1).
    pub fn new(h: usize, w: usize) -> Self {
        let mut planner = FftPlanner::new();
        Fft2 {
            h,
            w,
            row_fwd: planner.plan_fft_forward(w),
            row_inv: planner.plan_fft_inverse(w),
            col_fwd: planner.plan_fft_forward(h),
            col_inv: planner.plan_fft_inverse(h),
        }
    }

    /// `(h, w)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.h, self.w)
    }

    /// Unnormalised forward DFT, in place.
    pub fn forward(&self, data: &mut [Complex32]) {
        self.run(data, &self.row_fwd, &self.col_fwd);
    }

    /// Unnormalised inverse DFT, in place (`inverse(forward(x)) = h w x`).
    pub fn inverse(&self, data: &mut [Complex32]) {
        self.run(data, &self.row_inv, &self.col_inv);
    }

    /// Centred orthonormal forward DFT, in place.
    pub fn forward_centered(&self, data: &mut [Complex32]) {
        self.centered(data, false);
    }

    /// Centred orthonormal inverse DFT (the adjoint of [`Fft2::forward_centered`]), in place.
    pub fn inverse_centered(&self, data: &mut [Complex32]) {
        self.centered(data, true);
    }

    /// `fftshift(dft(ifftshift(x))) / sqrt(h w)`. For even sizes the shifts become signs:
    /// along an axis of even length `n`, `fftshift(dft(ifftshift(x)))[k] =
    /// (-1)^(k - n/2) dft((-1)^m x[m])[k]` (a shift by n/2 is a modulation by (-1)^k), so
    /// two sign passes, fused with the scaling, replace the two copying rolls.
    fn centered(&self, data: &mut [Complex32], inverse: bool) {
        let (h, w) = (self.h, self.w);
        let s = 1.0 / ((h * w) as f32).sqrt();
        if h % 2 == 0 && w % 2 == 0 {
            modulate(data, w, 1.0);
            if inverse {
                self.inverse(data);
            } else {
                self.forward(data);
            }
            // (-1)^(k - h/2) (-1)^(l - w/2) = (-1)^(k + l) (-1)^((h + w) / 2).
            let sign = if ((h + w) / 2) % 2 == 0 { s } else { -s };
            modulate(data, w, sign);
        } else {
            ifftshift2(data, h, w);
            if inverse {
                self.inverse(data);
            } else {
                self.forward(data);
            }
            fftshift2(data, h, w);
            data.iter_mut().for_each(|v| *v *= s);
        }
    }

    fn run(&self, data: &mut [Complex32], rows: &Arc<dyn Fft<f32>>, cols: &Arc<dyn Fft<f32>>) {
        let (h, w) = (self.h, self.w);
        assert_eq!(data.len(), h * w, "Fft2: buffer length != h * w");
        data.par_chunks_mut(w).for_each_init(
            || vec![Complex32::default(); rows.get_inplace_scratch_len()],
            |scratch, row| rows.process_with_scratch(row, scratch),
        );
        // Columns: transpose into one buffer, transform its rows, transpose back in place.
        let mut t = vec![Complex32::default(); h * w];
        transpose_into(data, &mut t, h, w);
        t.par_chunks_mut(h).for_each_init(
            || vec![Complex32::default(); cols.get_inplace_scratch_len()],
            |scratch, col| cols.process_with_scratch(col, scratch),
        );
        transpose_into(&t, data, w, h);
    }
}

/// Multiplies entry `(i, j)` of a row-major array with rows of length `w` by
/// `scale * (-1)^(i + j)`.
fn modulate(data: &mut [Complex32], w: usize, scale: f32) {
    for (i, row) in data.chunks_mut(w).enumerate() {
        let first = if i % 2 == 0 { scale } else { -scale };
        for (j, v) in row.iter_mut().enumerate() {
            *v *= if j % 2 == 0 { first } else { -first };
        }
    }
}

/// Writes the transpose of a row-major `h x w` array into `out` (`w x h`), in cache-sized
/// tiles, the bands of output rows in parallel.
fn transpose_into(data: &[Complex32], out: &mut [Complex32], h: usize, w: usize) {
    const B: usize = 32;
    out.par_chunks_mut(B * h)
        .enumerate()
        .for_each(|(band, rows)| {
            let j0 = band * B;
            let j1 = (j0 + B).min(w);
            for i0 in (0..h).step_by(B) {
                for i in i0..(i0 + B).min(h) {
                    for j in j0..j1 {
                        rows[(j - j0) * h + i] = data[i * w + j];
                    }
                }
            }
        });
}

/// Cyclic shift of a row-major `h x w` array by (`dy`, `dx`): `out[(i+dy)%h][(j+dx)%w] = in[i][j]`.
pub fn roll2<T: Copy>(data: &mut [T], h: usize, w: usize, dy: usize, dx: usize) {
    if h == 0 || w == 0 {
        return;
    }
    let src = data.to_vec();
    for i in 0..h {
        let oi = (i + dy) % h;
        for j in 0..w {
            data[oi * w + (j + dx) % w] = src[i * w + j];
        }
    }
}

/// numpy's `fftshift` over both axes: moves index 0 to index (h/2, w/2).
pub fn fftshift2<T: Copy>(data: &mut [T], h: usize, w: usize) {
    roll2(data, h, w, h / 2, w / 2);
}

/// numpy's `ifftshift` over both axes, the inverse of [`fftshift2`].
pub fn ifftshift2<T: Copy>(data: &mut [T], h: usize, w: usize) {
    roll2(data, h, w, h - h / 2, w - w / 2);
}

/// Reads a `(2, h, w)` channel pair (re, im) into complex numbers, row-major.
pub fn complex_from_pair(pair: ArrayView3<f32>) -> Vec<Complex32> {
    let (re, im) = (
        pair.index_axis(ndarray::Axis(0), 0),
        pair.index_axis(ndarray::Axis(0), 1),
    );
    re.iter()
        .zip(im.iter())
        .map(|(&a, &b)| Complex32::new(a, b))
        .collect()
}

/// Writes complex numbers (row-major `h x w`) into a `(2, h, w)` channel pair (re, im).
pub fn write_pair(data: &[Complex32], mut pair: ArrayViewMut3<f32>) {
    let w = pair.shape()[2];
    for (k, v) in data.iter().enumerate() {
        let (i, j) = (k / w, k % w);
        pair[[0, i, j]] = v.re;
        pair[[1, i, j]] = v.im;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn naive_dft(x: &[Complex32], h: usize, w: usize) -> Vec<Complex32> {
        let mut out = vec![Complex32::default(); h * w];
        for k in 0..h {
            for l in 0..w {
                let mut acc = num_complex::Complex64::default();
                for m in 0..h {
                    for n in 0..w {
                        let ph =
                            -2.0 * PI * ((k * m) as f64 / h as f64 + (l * n) as f64 / w as f64);
                        let v = x[m * w + n];
                        acc += num_complex::Complex64::new(v.re as f64, v.im as f64)
                            * num_complex::Complex64::from_polar(1.0, ph);
                    }
                }
                out[k * w + l] = Complex32::new(acc.re as f32, acc.im as f32);
            }
        }
        out
    }

    fn signal(n: usize) -> Vec<Complex32> {
        (0..n)
            .map(|i| Complex32::new((i as f32 * 0.37).sin(), (i as f32 * 0.11).cos()))
            .collect()
    }

    #[test]
    fn forward_matches_naive_dft_for_many_sizes() {
        for &(h, w) in &[(1, 1), (2, 3), (4, 4), (5, 7), (8, 6), (9, 12)] {
            let x = signal(h * w);
            let mut y = x.clone();
            Fft2::new(h, w).forward(&mut y);
            let r = naive_dft(&x, h, w);
            for (a, b) in y.iter().zip(&r) {
                assert!(
                    (a - b).norm() < 1e-4 * (h * w) as f32,
                    "{h}x{w}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn centered_transform_is_unitary_and_puts_dc_at_centre() {
        for &(h, w) in &[(4, 6), (5, 7), (8, 8)] {
            let f = Fft2::new(h, w);
            let x = signal(h * w);
            let mut y = x.clone();
            f.forward_centered(&mut y);
            let e0: f32 = x.iter().map(|v| v.norm_sqr()).sum();
            let e1: f32 = y.iter().map(|v| v.norm_sqr()).sum();
            assert!((e0 - e1).abs() < 1e-4 * e0);
            f.inverse_centered(&mut y);
            for (a, b) in y.iter().zip(&x) {
                assert!((a - b).norm() < 1e-5);
            }
            // A constant image has all its energy at the centre (DC) sample.
            let mut c = vec![Complex32::new(1.0, 0.0); h * w];
            f.forward_centered(&mut c);
            let centre = c[(h / 2) * w + w / 2];
            assert!((centre.re - ((h * w) as f32).sqrt()).abs() < 1e-4);
        }
    }

    #[test]
    fn centered_transform_equals_shift_fft_shift_for_even_and_odd_sizes() {
        for &(h, w) in &[(4, 6), (8, 8), (6, 10), (5, 7), (4, 5), (2, 2)] {
            let f = Fft2::new(h, w);
            let x = signal(h * w);
            for inverse in [false, true] {
                let mut fast = x.clone();
                let mut slow = x.clone();
                ifftshift2(&mut slow, h, w);
                if inverse {
                    f.inverse_centered(&mut fast);
                    f.inverse(&mut slow);
                } else {
                    f.forward_centered(&mut fast);
                    f.forward(&mut slow);
                }
                fftshift2(&mut slow, h, w);
                let s = 1.0 / ((h * w) as f32).sqrt();
                for (a, b) in fast.iter().zip(&slow) {
                    assert!(
                        (a - b * s).norm() < 1e-5,
                        "{h}x{w} inverse={inverse}: {a} vs {}",
                        b * s
                    );
                }
            }
        }
    }

    #[test]
    fn shifts_invert_each_other_for_odd_sizes() {
        let mut v: Vec<usize> = (0..35).collect();
        fftshift2(&mut v, 5, 7);
        assert_eq!(v[2 * 7 + 3], 0);
        ifftshift2(&mut v, 5, 7);
        assert_eq!(v, (0..35).collect::<Vec<_>>());
    }
}
