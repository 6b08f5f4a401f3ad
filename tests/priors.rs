//! The shipped priors under `priors/`: each loads by name, generates finite samples of its
//! shape with a short DDIM run, and denoises held-out images (never used in training: the
//! card's split; fixtures under `tests/data/heldout/<name>.npy`, in the prior's units) far
//! better than the noisy input.
//!
//! Margin: at `t = 0.25` (guided-diffusion step 249, noise sd ~0.95 in x0 units) the noisy
//! input `x_t / a` sits near 6 dB PSNR and a prior that learned its data reaches ~20 dB
//! (the cards' sanity checks at t = 250 on 64 held-out images: fmnist-32 22.1 dB,
//! brain-mri 19.3 dB, ct-ellipses 29.4 dB); we require a gain of at least 8 dB, which an
//! untrained network (or one trained on other data) misses.

use std::path::PathBuf;

use ndarray::{ArrayD, Axis};
use posterior::prior::{shipped_priors, Denoiser, NetworkPrior};
use posterior::sample::{Ddim, Executor};

fn psnr(a: &ArrayD<f32>, b: &ArrayD<f32>, peak_to_peak: f64) -> f64 {
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (peak_to_peak * peak_to_peak / mse).log10()
}

fn project_priors() -> Vec<(String, PathBuf)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("priors");
    shipped_priors()
        .into_iter()
        .filter(|(_, d)| d.starts_with(&root))
        .collect()
}

#[test]
fn the_three_priors_are_shipped() {
    let names: Vec<String> = project_priors().into_iter().map(|(n, _)| n).collect();
    for want in ["fmnist-32", "brain-mri", "ct-ellipses"] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
}

#[test]
fn every_shipped_prior_generates_and_denoises_held_out_images() {
    for (name, _) in project_priors() {
        let prior = NetworkPrior::open(&name).unwrap();
        let info = prior.info().clone();
        // A short generation: finite samples of the prior's shape.
        let mut ddim = Ddim::new(4, 0.0).unwrap();
        let out = Executor::new(0).run(&mut ddim, &prior, 2).unwrap();
        assert_eq!(
            out.samples.shape(),
            info.batch_shape(2).as_slice(),
            "{name}"
        );
        // Denoising held-out images.
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/heldout")
            .join(format!("{name}.npy"));
        let clean = posterior::io::read_npy(&fixture)
            .unwrap_or_else(|e| panic!("{name}: held-out fixture missing: {e}"));
        let n = clean.shape()[0];
        let t = 0.25f32;
        let (a, s) = prior.schedule().coeffs(t as f64);
        let noise = posterior_operators::linear::random_array(clean.shape(), 7, "heldout-noise");
        let mut xt = clean.mapv(|v| a as f32 * v);
        xt.zip_mut_with(&noise, |x, &e| *x += s as f32 * e);
        let x0 = prior.x0(xt.view(), &vec![t; n]).unwrap();
        let ptp = (info.range.1 - info.range.0) as f64;
        let noisy = psnr(&xt.mapv(|v| v / a as f32), &clean, ptp);
        let clipped = x0.mapv(|v| v.clamp(info.range.0, info.range.1));
        let denoised = psnr(&clipped, &clean, ptp);
        eprintln!(
            "{name}: held-out PSNR at t = {t}: noisy {noisy:.1} dB, denoised {denoised:.1} dB"
        );
        assert!(
            denoised > noisy + 8.0,
            "{name}: {noisy:.1} -> {denoised:.1} dB"
        );
        assert_eq!(
            x0.index_axis(Axis(0), 0).shape(),
            info.sample_shape.as_slice()
        );
    }
}
