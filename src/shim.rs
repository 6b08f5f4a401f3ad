//! TEMPORARY stand-ins while the noise/CT/phase spec modules are written (lead's file).
#![allow(dead_code, unused_variables)]
use crate::error::{Error, Result};
pub fn parse_noise(text: &str) -> Result<posterior_operators::noise::NoiseModel> {
    match text {
        "none" => Ok(posterior_operators::noise::NoiseModel::None),
        _ => Err(Error::Invalid("noise specs not wired yet".into())),
    }
}
pub struct NoiseInfo { pub name: &'static str, pub summary: &'static str, pub params: &'static [crate::spec::ParamInfo] }
pub static NOISE_MODELS: &[NoiseInfo] = &[];
pub fn fbp_unavailable() -> Result<ndarray::ArrayD<f32>> { Err(Error::Invalid("fbp not wired yet".into())) }
pub fn hio(p: &crate::spec::Physics, y: ndarray::ArrayViewD<f32>, iters: usize, seed: u64) -> Result<ndarray::ArrayD<f32>> { Err(Error::Invalid("hio not wired yet".into())) }
