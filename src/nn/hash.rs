//! Deterministic synthetic network weights, reproducible in PyTorch: the hash weights of
//! `notebooks/make_golden.py` (the FFHQ-256 fixtures' and the GPU benchmarks' weights).

use crate::nn::unet::ParamSource;
use crate::Result;

/// Deterministic synthetic weights, notebooks/make_golden.py's hash weights (FNV-1a of the
/// key, splitmix64 of hash ^ index, uniform in [-1, 1) scaled by `sqrt(3 / fan_in)` for
/// weights of rank >= 2, `0.1 sqrt(3)` otherwise, norm weights around 1): the FFHQ-256
/// fixtures' and the GPU benchmarks' weights, reproducible in PyTorch.
#[derive(Debug, Default, Clone, Copy)]
pub struct HashWeights;

/// FNV-1a 64 of a key.
fn fnv1a64(key: &str) -> u64 {
    key.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// splitmix64 (Steele et al.), as make_golden.py computes it.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// `n` values uniform in [-1, 1) from a key (make_golden.py's `hash_unit`).
pub fn hash_unit(key: &str, n: usize) -> Vec<f32> {
    let h = fnv1a64(key);
    (0..n)
        .map(|i| ((splitmix64(h ^ i as u64) >> 40) as f64 / 8388608.0 - 1.0) as f32)
        .collect()
}

impl ParamSource for HashWeights {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let u = hash_unit(key, n);
        let c = if shape.len() >= 2 {
            (3.0f64 / (n / shape[0].max(1)).max(1) as f64).sqrt() as f32
        } else {
            (0.1 * 3.0f64.sqrt()) as f32
        };
        let one = if shape.len() == 1 && key.ends_with("weight") {
            1.0
        } else {
            0.0
        };
        Ok(u.into_iter().map(|v| one + v * c).collect())
    }
}
