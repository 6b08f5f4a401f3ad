//! Sinusoidal timestep embedding exactly as guided-diffusion's `timestep_embedding`.

use ndarray::Array2;

/// `(N,) timesteps -> (N, dim)` embedding: `half = dim / 2`,
/// `freqs[i] = exp(-ln(max_period) * i / half)` for `i < half`, `args = t * freqs`, output
/// `[cos(args), sin(args)]` (cosines first), plus one zero column when `dim` is odd.
/// The arithmetic is f32 in the same order as PyTorch's (`-ln(P) * i`, then `/ half`, then
/// `exp`), so the values agree with guided-diffusion's to f32 rounding of cos/sin.
/// guided-diffusion uses `max_period = 10000`. Timesteps may be fractional.
pub fn timestep_embedding(timesteps: &[f32], dim: usize, max_period: f32) -> Array2<f32> {
    sinusoidal_embedding(
        timesteps,
        dim,
        &timestep_frequencies(dim, max_period, 0.0),
        true,
    )
}

/// `(N,) timesteps -> (N, dim)`: `[cos(t f), sin(t f)]` (`cos_first`) or `[sin, cos]` over
/// the `dim / 2` frequencies `freqs`, plus a zero column when `dim` is odd. The general form
/// of guided-diffusion's, diffusers' (`flip_sin_to_cos` is `cos_first`) and EDM's
/// positional embeddings.
pub fn sinusoidal_embedding(
    timesteps: &[f32],
    dim: usize,
    freqs: &[f32],
    cos_first: bool,
) -> Array2<f32> {
    let half = dim / 2;
    debug_assert_eq!(freqs.len(), half);
    let (c0, s0) = if cos_first { (0, half) } else { (half, 0) };
    let mut out = Array2::zeros((timesteps.len(), dim));
    for (n, &t) in timesteps.iter().enumerate() {
        for (i, &f) in freqs.iter().enumerate() {
            let a = t * f;
            out[[n, c0 + i]] = a.cos();
            out[[n, s0 + i]] = a.sin();
        }
    }
    out
}

/// The `dim / 2` frequencies `exp(-ln(max_period) i / (dim / 2 - shift))` (diffusers'
/// `downscale_freq_shift`; guided-diffusion's is 0, EDM's `endpoint=True` is 1), in
/// PyTorch's f32 order of operations (shared with the GPU twin, so both devices use the
/// same values).
pub(crate) fn timestep_frequencies(dim: usize, max_period: f32, shift: f32) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(max_period as f64).ln() as f32;
    (0..half)
        .map(|i| ((neg_log * i as f32) / (half as f32 - shift)).exp())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_formula_in_f64_cos_first_odd_dim_padded() {
        let ts = [0.0f32, 1.0, 37.5, 999.0];
        for dim in [8usize, 9, 128] {
            let e = timestep_embedding(&ts, dim, 10000.0);
            assert_eq!(e.dim(), (4, dim));
            let half = dim / 2;
            for (n, &t) in ts.iter().enumerate() {
                for i in 0..half {
                    let f = (-(10000f64).ln() * i as f64 / half as f64).exp();
                    let a = t as f64 * f;
                    // f32 freqs carry ~1e-7 relative error, times |t| <= 999 in the
                    // argument: up to ~1e-4 absolute in cos/sin.
                    assert!((e[[n, i]] as f64 - a.cos()).abs() < 2e-4, "cos n={n} i={i}");
                    assert!((e[[n, half + i]] as f64 - a.sin()).abs() < 2e-4, "sin");
                }
                if dim % 2 == 1 {
                    assert_eq!(e[[n, dim - 1]], 0.0);
                }
            }
            // t = 0: cos block is 1, sin block is 0 (so the order is cos first).
            assert!(e.row(0).iter().take(half).all(|&v| v == 1.0));
            assert!(e.row(0).iter().skip(half).take(half).all(|&v| v == 0.0));
        }
    }
}
