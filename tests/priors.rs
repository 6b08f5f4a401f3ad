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
//! draws washed-out white fields). Of 32 deterministic DDIM samples (clipped), under 5%
//! (at most one) may have a mean intensity outside the training set's range of per-image means
//! (recorded in the card's `sanity.samples.train.mean_range` by `notebooks/sample_check.py`).
//! An exact Gaussian-mixture prior passes and the same prior with white fields added fails
//! (the check's own pass / fail test); fmnist-32 passes; a shipped prior listed in
//! [`KNOWN_BROKEN`] (brain-mri, ct-ellipses) must FAIL the check, so the test says when a
//! retrained prior fixes it.

use std::path::PathBuf;
use std::sync::Arc;

use ndarray::{ArrayD, Axis};
use posterior::prior::{shipped_priors, Clipped, Covariance, Denoiser, Gmm, NetworkPrior};
use posterior::sample::{Ddim, Executor};
use posterior_operators::rng::seeded;

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

/// Shipped priors whose samples fail the sample check today (see the module docs). With
/// PyTorch's clipped DDIM (20 steps, seed 0): brain-mri 22/32 outside (white fields), fmnist-32
/// 0/32 (passes); unclipped, ct-ellipses 22/32 (its Rust run is the heavy test). This test
/// agrees: brain-mri fails, fmnist-32 passes. Remove a name when a retrained prior passes.
const KNOWN_BROKEN: &[&str] = &["brain-mri", "ct-ellipses"];

/// Fraction of samples allowed outside the training mean range (notebooks/sample_check.py).
const MAX_OUTSIDE: f64 = 0.05;
/// Samples and DDIM steps of the check (the 32 samples; 20 steps keep brain-mri near a
/// minute at the test profile).
const CHECK_SAMPLES: usize = 32;
const CHECK_STEPS: usize = 20;

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
    assert!(
        v.len() == 2 && v[0] < v[1],
        "{name}: bad mean_range {range:?}"
    );
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

/// `[min, max]` of per-sample means.
fn mean_range(means: &[f64]) -> (f64, f64) {
    means
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), m| {
            (lo.min(*m), hi.max(*m))
        })
}

/// The check: the per-sample means of `CHECK_SAMPLES` deterministic DDIM samples (seed 0) of
/// `prior`, and how many lie outside `train` (the training set's range of per-image means).
/// Shipped priors are sampled through [`Clipped`] (every Tweedie estimate clipped to the range,
/// guided-diffusion's `clip_denoised`, what `posterior sample --clip` does).
fn samples_outside(prior: &dyn Denoiser, train: (f64, f64)) -> (usize, Vec<f64>) {
    let mut ddim = Ddim::new(CHECK_STEPS, 0.0).unwrap();
    let out = Executor::new(0)
        .run(&mut ddim, prior, CHECK_SAMPLES)
        .unwrap();
    let means = sample_means(&out.samples, prior.info().range);
    let outside = means
        .iter()
        .filter(|m| **m < train.0 || **m > train.1)
        .count();
    (outside, means)
}

fn passes(outside: usize) -> bool {
    (outside as f64) < MAX_OUTSIDE * CHECK_SAMPLES as f64
}

fn shipped_sample_check(name: &str) {
    let started = std::time::Instant::now();
    let prior = NetworkPrior::open(name).unwrap();
    let (lo, hi) = train_mean_range(&prior, name);
    let clipped = Clipped::new(Arc::new(prior));
    let (outside, means) = samples_outside(&clipped, (lo, hi));
    eprintln!(
        "{name}: {outside}/{CHECK_SAMPLES} clipped DDIM samples ({CHECK_STEPS} steps) outside the training \
         mean range [{lo:.3}, {hi:.3}] in {:.1} s; means {:?}",
        started.elapsed().as_secs_f64(),
        means.iter().map(|m| (m * 100.0).round() / 100.0).collect::<Vec<_>>()
    );
    if KNOWN_BROKEN.contains(&name) {
        assert!(
            !passes(outside),
            "{name} now passes the sample check ({outside}/{CHECK_SAMPLES} outside): remove it from KNOWN_BROKEN"
        );
    } else {
        assert!(
            passes(outside),
            "{name}: {outside}/{CHECK_SAMPLES} samples outside the training mean range [{lo:.3}, {hi:.3}]"
        );
    }
}

/// Two "images" of 16 pixels (a darker and a brighter gray level, per-pixel sd 0.15), and the
/// same mixture with a white-field component of weight `white` added.
fn gray_images(white: f64) -> Gmm {
    let mut weights = vec![0.5, 0.5];
    let mut means = vec![vec![-0.6; 16], vec![-0.2; 16]];
    if white > 0.0 {
        weights.push(white);
        means.push(vec![0.8; 16]);
    }
    let covs = vec![Covariance::Isotropic(0.15 * 0.15); weights.len()];
    Gmm::new(weights, means, covs)
        .unwrap()
        .with_sample_shape(&[1, 4, 4])
        .unwrap()
}

/// The check on an exact prior: its own DDIM samples pass against its training range (20,000
/// exact draws), and a prior that puts a third of its mass on white fields fails it. This is
/// the check's pass / fail demonstration that does not depend on trained weights.
#[test]
fn sample_check_passes_an_exact_prior_and_flags_white_fields() {
    let healthy = gray_images(0.0);
    let (train, _) = healthy.sample(20_000, &mut seeded(5, "train"));
    let range = mean_range(&sample_means(&train, healthy.info().range));
    let (outside, means) = samples_outside(&healthy, range);
    assert!(
        passes(outside),
        "exact prior: {outside} outside {range:?}: {means:?}"
    );
    let broken = gray_images(0.5);
    let (outside, means) = samples_outside(&broken, range);
    // P(no white sample among 32) = (2/3)^32 < 1e-5; white means sit near 0.8, far outside.
    assert!(!passes(outside), "white fields not flagged: {means:?}");
    assert!(outside >= 4, "{outside}");
}

#[test]
fn every_shipped_prior_records_its_training_mean_range() {
    for (name, _) in project_priors() {
        let prior = NetworkPrior::open(&name).unwrap();
        let (lo, hi) = train_mean_range(&prior, &name);
        let r = prior.info().range;
        assert!(
            lo >= r.0 as f64 && hi <= r.1 as f64,
            "{name}: [{lo}, {hi}] outside {r:?}"
        );
    }
}

#[test]
fn fmnist_passes_the_sample_check() {
    shipped_sample_check("fmnist-32");
}

#[test]
fn brain_mri_sample_check_flags_white_fields_until_retrained() {
    shipped_sample_check("brain-mri");
}

/// 128x128: about four times the brain check's cost (minutes at the test profile).
#[test]
#[ignore = "ct-ellipses at 128x128 takes minutes at the test profile; run with POSTERIOR_HEAVY_TESTS=1 cargo test --release --test priors -- --ignored"]
fn ct_ellipses_sample_check_matches_its_record() {
    if std::env::var("POSTERIOR_HEAVY_TESTS").ok().as_deref() != Some("1") {
        eprintln!("skipped: set POSTERIOR_HEAVY_TESTS=1");
        return;
    }
    shipped_sample_check("ct-ellipses");
}
