//! `posterior denoise`: one pass of a network prior on a noisy input.
//!
//! `--step N` feeds guided-diffusion's discrete timestep `N` (in `[0, T)`, fractional
//! allowed) exactly as `model(x, N)` does, and the noise level is that of step `N`
//! (`t = (N + 1) / T`); `--t T` takes a continuous time in `[0, 1]` on the prior's path.
//! Without `--raw` the output is Tweedie's estimate `x0 = (x_t - s eps) / a` in the prior's
//! units; with `--raw` it is the network's own output (eps, then the variance channels of a
//! learned-sigma model; for an EDM network its `F` at the noise label `c_noise`, input
//! unscaled), for comparison with the reference implementation directly. The computation is
//! deterministic: the same call gives identical results run to run.

use ndarray::{ArrayD, Ix4};

use crate::error::{Error, Result};
use crate::prior::{Denoiser, NetworkPrior};

use super::DenoiseArgs;

/// Runs `posterior denoise`.
pub fn run(a: &DenoiseArgs) -> Result<()> {
    if crate::io::extension(&a.out) != "npy" {
        return Err(Error::file(
            &a.out,
            "the output of denoise is an array: give an .npy path",
        ));
    }
    let prior = NetworkPrior::open(&a.prior)?;
    let x = crate::io::read_npy(&a.input)?;
    let info = prior.info().clone();
    let (batched, single) = match x.ndim() {
        3 => (x.clone().insert_axis(ndarray::Axis(0)), true),
        4 => (x.clone(), false),
        _ => {
            return Err(Error::file(
                &a.input,
                format!(
                    "expected an array of shape (C, H, W) or (N, C, H, W) = (N, {}, {}, {}), found {:?}",
                    info.sample_shape[0],
                    info.sample_shape[1],
                    info.sample_shape[2],
                    x.shape()
                ),
            ))
        }
    };
    if batched.shape()[1..] != info.sample_shape[..] {
        return Err(Error::file(
            &a.input,
            format!(
                "shape {:?} does not fit the prior {}: expected (N, {}, {}, {}) or one image (C, H, W)",
                x.shape(),
                info.name,
                info.sample_shape[0],
                info.sample_shape[1],
                info.sample_shape[2]
            ),
        ));
    }
    if let Some(i) = batched.iter().position(|v| !v.is_finite()) {
        return Err(Error::file(
            &a.input,
            format!("holds a non-finite value at flat index {i}"),
        ));
    }
    let t = match (a.step, a.t) {
        (Some(n), None) => {
            let big_t = prior.diffusion_steps().ok_or_else(|| {
                Error::Invalid(format!(
                    "--step: {} takes continuous noise levels, not discrete steps; give --t",
                    info.name
                ))
            })? as f64;
            if !(n.is_finite() && n >= 0.0 && n <= big_t - 1.0) {
                return Err(Error::Invalid(format!(
                    "--step must lie in [0, {}], got {n}",
                    big_t - 1.0
                )));
            }
            (n + 1.0) / big_t
        }
        (None, Some(t)) => {
            if !(t.is_finite() && (0.0..=1.0).contains(&t)) {
                return Err(Error::Invalid(format!("--t must lie in [0, 1], got {t}")));
            }
            t
        }
        _ => {
            return Err(Error::Invalid(
                "give exactly one of --step N (discrete timestep) or --t T (continuous time)"
                    .into(),
            ))
        }
    };
    let n = batched.shape()[0];
    let ts = vec![t as f32; n];
    let start = std::time::Instant::now();
    let out: ArrayD<f32> = if a.raw {
        let steps = match a.step {
            Some(s) => vec![s as f32; n],
            None => vec![prior.noise_label(t as f32); n],
        };
        let x4 = batched
            .view()
            .into_dimensionality::<Ix4>()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        prior.raw(x4, &steps)?.into_dyn()
    } else {
        prior.x0(batched.view(), &ts)?
    };
    let out = if single {
        out.index_axis_move(ndarray::Axis(0), 0)
    } else {
        out
    };
    crate::io::write_npy(&a.out, out.view())?;
    let (alpha, sigma) = prior.schedule().coeffs(t);
    println!(
        "{}: {} of {n} image(s) at t = {t:.4} (network label {:.4}, a = {alpha:.4}, s = {sigma:.4}) in {:.2} s; wrote {}",
        info.name,
        if a.raw { "raw network output" } else { "Tweedie estimate x0" },
        prior.noise_label(t as f32),
        start.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
