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
//!
//! Sample check: a prior can denoise well and still generate garbage (the shipped brain-mri
//! draws washed-out white and empty black fields). 32 deterministic DDIM samples must have
//! their mean intensity inside the training set's range of per-image means (recorded in the
//! card's `sanity.samples.train.mean_range` by `notebooks/sample_check.py`) for at least 95%
//! of samples. A prior listed in [`KNOWN_BROKEN`] must instead FAIL the check: that proves the
//! check catches a broken prior, and the test tells when a retrained prior fixes it.

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

/// Shipped priors whose samples are known to fail the sample check (see the module docs):
/// brain-mri draws 27 of 32 DDIM samples (50 steps, PyTorch) outside the training range.
/// Remove a name when a retrained prior passes.
const KNOWN_BROKEN: &[&str] = &["brain-mri"];

/// Fraction of samples allowed outside the training mean range (notebooks/sample_check.py).
const MAX_OUTSIDE: f64 = 0.05;

/// The training set's `[min, max]` of per-image mean intensity, as the card records it.
fn train_mean_range(prior: &NetworkPrior, name: &str) -> (f64, f64) {
    let range = prior
        .card()
        .extra
        .get("sanity")
        .and_then(|s| s.get("samples"))
        .and_then(|s| s.get("train"))
        .and_then(|t| t.get("mean_range"))
        .and_then(|r| r.as_array())
        .unwrap_or_else(|| {
            panic!("{name}: the card has no sanity.samples.train.mean_range (run notebooks/sample_check.py --write-card)")
        });
    let v: Vec<f64> = range.iter().filter_map(|x| x.as_f64()).collect();
    assert!(v.len() == 2 && v[0] < v[1], "{name}: bad mean_range {range:?}");
    (v[0], v[1])
}

/// Per-sample means of `samples` (N, ...) after clipping to `range`.
fn sample_means(samples: &ArrayD<f32>, range: (f32, f32)) -> Vec<f64> {
    samples
        .outer_iter()
        .map(|s| {
            s.iter()
                .map(|v| v.clamp(range.0, range.1) as f64)
                .sum::<f64>()
                / s.len() as f64
        })
        .collect()
}

/// How many of `n` deterministic DDIM samples (`steps` steps, seed 0) have their mean
/// intensity outside the training range.
fn samples_outside(name: &str, n: usize, steps: usize) -> (usize, Vec<f64>, (f64, f64)) {
    let prior = NetworkPrior::open(name).unwrap();
    let (lo, hi) = train_mean_range(&prior, name);
    let mut ddim = Ddim::new(steps, 0.0).unwrap();
    let out = Executor::new(0).run(&mut ddim, &prior, n).unwrap();
    let means = sample_means(&out.samples, prior.info().range);
    let outside = means.iter().filter(|m| **m < lo || **m > hi).count();
    (outside, means, (lo, hi))
}

fn sample_check(name: &str) {
    let (n, steps) = (32, 20);
    let started = std::time::Instant::now();
    let (outside, means, (lo, hi)) = samples_outside(name, n, steps);
    let frac = outside as f64 / n as f64;
    eprintln!(
        "{name}: {outside}/{n} DDIM samples ({steps} steps) outside the training mean range \
         [{lo:.3}, {hi:.3}] in {:.1} s; means {:?}",
        started.elapsed().as_secs_f64(),
        means.iter().map(|m| (m * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    if KNOWN_BROKEN.contains(&name) {
        assert!(
            frac >= MAX_OUTSIDE,
            "{name} now passes the sample check ({outside}/{n} outside): remove it from KNOWN_BROKEN"
        );
    } else {
        assert!(
            frac < MAX_OUTSIDE,
            "{name}: {outside}/{n} samples outside the training mean range [{lo:.3}, {hi:.3}]"
        );
    }
}

#[test]
fn every_shipped_prior_records_its_training_mean_range() {
    for (name, _) in project_priors() {
        let prior = NetworkPrior::open(&name).unwrap();
        let (lo, hi) = train_mean_range(&prior, &name);
        let r = prior.info().range;
        assert!(lo >= r.0 as f64 && hi <= r.1 as f64, "{name}: [{lo}, {hi}] outside {r:?}");
    }
}

#[test]
fn fmnist_samples_pass_the_sample_check() {
    sample_check("fmnist-32");
}

#[test]
fn brain_mri_samples_fail_the_sample_check_until_retrained() {
    sample_check("brain-mri");
}

/// 128x128: about four times the brain check's cost (minutes at the test profile).
#[test]
#[ignore = "ct-ellipses at 128x128 takes minutes at the test profile; run with POSTERIOR_HEAVY_TESTS=1 cargo test --release --test priors -- --ignored"]
fn ct_ellipses_samples_pass_the_sample_check() {
    if std::env::var("POSTERIOR_HEAVY_TESTS").ok().as_deref() != Some("1") {
        eprintln!("skipped: set POSTERIOR_HEAVY_TESTS=1");
        return;
    }
    sample_check("ct-ellipses");
}
