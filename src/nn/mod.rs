//! Network layer primitives on the CPU: the building blocks of guided-diffusion's ADM U-Net
//! (which also computes diffusers' `UNet2DModel` and EDM's `DhariwalUNet`) and of EDM's
//! `SongUNet` ([`song`]).
//!
//! Every layer works on batched f32 data in PyTorch's layout (images NCHW, sequences NCT,
//! features NF) and stores its parameters exactly as PyTorch does (conv weight
//! `(out, in, kh, kw)`, linear weight `(out, in)`, norm `weight`/`bias` of length C), so a
//! checkpoint's tensors drop in unchanged. Each layer has a `forward` and an exact
//! vector-Jacobian product with respect to its input (`vjp`, what posterior sampling
//! needs); where it is cheap, also the gradients of its parameters (`param_grads`).
//!
//! VJPs take the forward input again (not a saved activation) and recompute what they need,
//! so the caller decides what to keep alive.
//!
//! Shape errors reachable from user input (a checkpoint's shapes, an input image) are
//! [`crate::Error::Invalid`] with the expected and found shape; inner kernels only carry
//! debug assertions.

pub mod act;
pub mod attention;
pub mod conv;
pub mod diffusers;
pub mod edm;
pub mod embed;
pub mod fir;
pub mod gemm;
pub mod hash;
pub(crate) mod layout;
pub mod linear;
pub mod memory;
pub mod norm;
pub(crate) mod packed;
pub mod resample;
pub mod resblock;
pub mod safetensors;
pub mod simd;
pub mod song;
pub mod unet;

pub use act::{silu, silu_vjp};
pub use attention::{AttentionBlock, QkvAttentionLegacy};
pub use conv::{Conv2d, Conv2dGrads};
pub use embed::timestep_embedding;
pub use linear::{Linear, LinearGrads};
pub use memory::keep_freed_memory;
pub use norm::{GroupNorm, GroupNormGrads};
pub use resample::{avg_pool2x, avg_pool2x_vjp, upsample_nearest2x, upsample_nearest2x_vjp};
pub use resblock::{ResBlock, UpDown};
pub use simd::{active as simd_path, SimdPath};
pub use unet::{ParamSource, UNet, UNetConfig};

use crate::{Error, Result};

/// A shape error naming the layer, the expected and the found shape.
pub(crate) fn shape_err(layer: &str, expected: impl std::fmt::Display, found: &[usize]) -> Error {
    Error::Invalid(format!(
        "{layer}: expected input of shape {expected}, found {found:?}"
    ))
}

/// `a` in standard (row-major, contiguous) layout, without copying when it already is.
pub(crate) fn standard<D: ndarray::Dimension>(a: ndarray::Array<f32, D>) -> ndarray::Array<f32, D> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

/// Checks that `a` and `b` have the same shape (an output gradient against an output).
pub(crate) fn same_shape(layer: &str, what: &str, want: &[usize], found: &[usize]) -> Result<()> {
    if want == found {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{layer}: {what} has shape {found:?}, expected {want:?}"
        )))
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use rand::{Rng, SeedableRng};

    /// Deterministic uniform(-1, 1) values.
    pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Max |a-b| / max(max|b|, 1e-30) in f64.
    pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
        let diff = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - y).abs()));
        diff / scale
    }

    /// Gradient of `sum(dy * f(x))` with respect to x by central differences of an f64
    /// function (step 1e-4: truncation error ~1e-8 relative for these smooth maps, far
    /// below the f32 tolerances the tests use).
    pub fn fd_grad(f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], dy: &[f64]) -> Vec<f64> {
        let h = 1e-4;
        let mut xp = x.to_vec();
        (0..x.len())
            .map(|i| {
                xp[i] = x[i] + h;
                let fp: f64 = f(&xp).iter().zip(dy).map(|(a, b)| a * b).sum();
                xp[i] = x[i] - h;
                let fm: f64 = f(&xp).iter().zip(dy).map(|(a, b)| a * b).sum();
                xp[i] = x[i];
                (fp - fm) / (2.0 * h)
            })
            .collect()
    }

    pub fn to64(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| x as f64).collect()
    }
}
