//! `posterior reconstruct`: reconstruction of a measurement, by a classical method
//! (`--method`) or by a posterior sampler with a diffusion prior (`--sampler`).
//!
//! The sampler path restates the measurement in the prior's units
//! ([`crate::sample::units`]): the measured image's display range (recorded by `degrade`)
//! maps onto the prior's intensity range. The image must have the prior's resolution and
//! channels; otherwise the error says both and how to resample.

use std::time::{Duration, Instant};

use ndarray::{Array3, ArrayD, Ix3};

use crate::error::{Error, Result};
use crate::io;
use crate::measurement::{self, Sidecar};
use crate::prior::{default_prior_for, Denoiser, NetworkPrior};
use crate::recon::{self, Method, ReconOptions};
use crate::sample::posterior::{reconstruct_with_prior, Overrides, PriorReconstruction};
use crate::sample::{Executor, Snapshots};
use crate::spec::noise::parse_noise;

use super::{Progress, ReconstructArgs};

pub fn run(a: &ReconstructArgs) -> Result<()> {
    if a.sampler.is_some() {
        return run_sampler(a);
    }
    for (given, flag) in [
        (a.prior.is_some(), "--prior"),
        (a.steps.is_some(), "--steps"),
        (a.particles.is_some(), "--particles"),
        (a.std.is_some(), "--std"),
        (a.samples != 1, "--samples"),
        (a.time_limit.is_some(), "--time-limit"),
        (a.snapshots.is_some(), "--snapshots"),
    ] {
        if given {
            return Err(Error::Invalid(format!(
                "{flag} applies to posterior sampling: add --sampler dps|reddiff|dds|smc|fps"
            )));
        }
    }
    let method: Method = a.method.as_deref().unwrap_or("cg").parse()?;
    check_image_ext(&a.out, "--out")?;
    let out_ext = io::extension(&a.out);
    if a.complex && out_ext != "npy" {
        return Err(Error::Invalid(
            "--complex keeps (re, im) channels and needs a .npy output".into(),
        ));
    }
    let (y, side) = measurement::read(&a.measurement)?;
    let physics = side.physics()?;
    let opts = ReconOptions {
        method,
        iters: a.iters,
        lambda: a.lambda,
        filter: a.filter.clone(),
        nonnegative: a.nonneg,
        seed: a.seed,
        allow_nonfinite: a.allow_nonfinite,
    };
    let truth = match &a.truth {
        Some(p) => Some(measurement::read_truth(p, &side)?),
        None => None,
    };
    let progress = Progress::new(method.name(), opts.iters());
    let start = Instant::now();
    let x = recon::reconstruct(&physics, y.view(), &opts, &mut |i, f| progress.update(i, f))?;
    progress.finish();
    let seconds = start.elapsed().as_secs_f64();
    let image = physics.extract(x.view(), a.complex);
    write_output(&a.out, &image, &side)?;
    println!(
        "{}: {} reconstruction of {} in {:.2} s",
        a.out.display(),
        method,
        physics.operator.name(),
        seconds
    );
    if let Some(truth) = truth {
        let image = to_chw(image)?;
        let r = recon::Quality::compare(image.view(), truth.view(), side.data_range as f64)?;
        println!(
            "PSNR {:.2} dB  SSIM {:.4}  NRMSE {:.4}",
            r.psnr, r.ssim, r.nrmse
        );
    }
    Ok(())
}

fn to_chw(image: ArrayD<f32>) -> Result<Array3<f32>> {
    image
        .into_dimensionality::<Ix3>()
        .map_err(|e| Error::Invalid(format!("reconstruction is not an image (C, H, W): {e}")))
}

/// Writes a reconstruction: PNG in the measured image's display range, or `.npy` in the
/// measured image's file units (a complex pair is scaled but not offset).
fn write_output(path: &std::path::Path, image: &ArrayD<f32>, side: &Sidecar) -> Result<()> {
    if io::extension(path) == "png" {
        let chw = to_chw(image.clone())?;
        io::write_image(
            path,
            chw.view(),
            (side.display_range[0], side.display_range[1]),
        )
    } else {
        let s = &side.intensity;
        let offset = if image.shape()[0] == 2 && side.image_shape[0] == 1 {
            0.0
        } else {
            s.offset
        };
        let file_units = image.mapv(|v| v * s.scale + offset);
        io::write_npy(path, file_units.view())
    }
}

fn check_image_ext(path: &std::path::Path, what: &str) -> Result<()> {
    let ext = io::extension(path);
    if ext != "png" && ext != "npy" {
        return Err(Error::file(
            path,
            format!("{what} must name a .png or .npy file"),
        ));
    }
    Ok(())
}

/// `reconstruct --sampler`: posterior sampling with a diffusion prior.
fn run_sampler(a: &ReconstructArgs) -> Result<()> {
    let name = a.sampler.as_deref().unwrap_or_default();
    check_image_ext(&a.out, "--out")?;
    if let Some(p) = &a.std {
        check_image_ext(p, "--std")?;
    }
    if a.complex || a.nonneg || a.iters.is_some() || a.lambda.is_some() {
        return Err(Error::Invalid(
            "--complex, --nonneg, --iters and --lambda apply to the classical methods, not to --sampler".into(),
        ));
    }
    // Resolved before any work: `cuda` without a usable GPU fails here with the reason;
    // `auto` falls back to the CPU with a one-line notice.
    let backend = crate::gpu::select(a.device.parse()?).map_err(|e| {
        Error::Invalid(format!(
            "--device {}: no GPU backend available: {e}",
            a.device
        ))
    })?;
    if let Some(steps) = a.steps {
        if steps == 0 {
            return Err(Error::Invalid(
                "--steps 0: a sampler needs at least 1 step".into(),
            ));
        }
        crate::limits::check_steps("--steps", steps)?;
    }
    if let Some(p) = a.particles {
        if p < 2 {
            return Err(Error::Invalid(format!(
                "--particles {p}: an SMC ensemble needs at least 2 particles to resample"
            )));
        }
        crate::limits::check_steps("--particles", p)?;
    }
    if a.samples == 0 || a.samples > 256 {
        return Err(Error::Invalid(format!(
            "--samples must be between 1 and 256, got {}",
            a.samples
        )));
    }
    if let Some(limit) = a.time_limit {
        if !(limit.is_finite() && limit > 0.0) {
            return Err(Error::Invalid(format!(
                "--time-limit must be a positive number of seconds, got {limit}"
            )));
        }
    }
    if let Some(p) = &a.snapshots {
        if io::extension(p) != "png" {
            return Err(Error::file(
                p,
                "--snapshots writes a PNG strip: give a .png path",
            ));
        }
    }
    let ensemble = matches!(name, "smc" | "tds" | "fps");
    if a.std.is_some() && !ensemble && a.samples < 2 {
        return Err(Error::Invalid(
            "--std needs an ensemble: use --sampler smc|fps, or --samples 2 or more".into(),
        ));
    }
    let (y, side) = measurement::read(&a.measurement)?;
    let physics = side.physics()?;
    let family = physics.family.name;
    let truth = match &a.truth {
        Some(p) => Some(measurement::read_truth(p, &side)?),
        None => None,
    };
    let prior_name = a
        .prior
        .clone()
        .unwrap_or_else(|| default_prior_for(family).to_string());
    let mut prior = NetworkPrior::open(&prior_name)?;
    match prior.use_backend(&backend) {
        // `auto` keeps a prior the GPU path does not compute on the CPU.
        Err(Error::Unsupported(_)) if a.device == "auto" => {}
        other => other?,
    }
    let prior_label = prior.info().name.clone();
    let prior_range = prior.info().range;
    let noise = parse_noise(&side.noise)?;
    let overrides = Overrides {
        steps: a.steps,
        particles: a.particles,
        calibration: None,
    };
    let mut bar = Progress::new(name, 1);
    let mut snaps = Snapshots::new(a.snapshot_every.unwrap_or(0));
    let start = Instant::now();
    let result = {
        let mut exec = Executor::new(a.seed).observe(&mut bar);
        if a.snapshots.is_some() {
            exec = exec.observe(&mut snaps);
        }
        if let Some(limit) = a.time_limit {
            exec = exec.time_limit(Duration::from_secs_f64(limit));
        }
        reconstruct_with_prior(
            physics,
            y,
            &noise,
            (side.display_range[0], side.display_range[1]),
            prior,
            name,
            &overrides,
            exec,
            a.samples,
        )
    };
    bar.finish();
    let PriorReconstruction {
        image,
        spread,
        label,
        outcome,
    } = result?;
    let seconds = start.elapsed().as_secs_f64();
    recon::check_output(&label, image.view(), a.allow_nonfinite)?;
    if let Some(s) = &spread {
        recon::check_output(&format!("{label} (spread)"), s.view(), a.allow_nonfinite)?;
    }
    // The estimate, its uncertainty map and the snapshots are committed together.
    io::write_together(|| {
        write_output(&a.out, &image, &side)?;
        if let Some(path) = &a.snapshots {
            write_snapshots(path, &snaps, prior_range)?;
        }
        if let Some(p) = &a.std {
            let spread = spread.clone().ok_or_else(|| {
                Error::Invalid(
                    "--std needs an ensemble: use --sampler smc|fps, or --samples 2 or more".into(),
                )
            })?;
            if io::extension(p) == "png" {
                let chw = to_chw(spread)?;
                let hi = chw.iter().fold(0f32, |m, v| m.max(*v)).max(1e-12);
                io::write_image(p, chw.view(), (0.0, hi))?;
            } else {
                io::write_npy(p, spread.view())?;
            }
        }
        Ok(())
    })?;
    println!(
        "{}: {label} with prior {} ({} sample(s)) in {:.2} s, {} NFE, {} VJP",
        a.out.display(),
        prior_label,
        a.samples,
        seconds,
        outcome.nfe,
        outcome.vjps
    );
    if let Some(truth) = truth {
        let r =
            recon::Quality::compare(to_chw(image)?.view(), truth.view(), side.data_range as f64)?;
        println!(
            "PSNR {:.2} dB  SSIM {:.4}  NRMSE {:.4}",
            r.psnr, r.ssim, r.nrmse
        );
    }
    Ok(())
}

/// The denoised estimate of the first sample at every snapshot, left to right, in the
/// prior's range (a PNG strip).
fn write_snapshots(path: &std::path::Path, snaps: &Snapshots, range: (f32, f32)) -> Result<()> {
    let frames: Vec<ArrayD<f32>> = snaps
        .frames
        .iter()
        .map(|(_, batch)| batch.index_axis(ndarray::Axis(0), 0).to_owned())
        .collect();
    if frames.is_empty() {
        return Err(Error::Invalid("no snapshots were taken".into()));
    }
    let views: Vec<_> = frames.iter().map(|f| f.view()).collect();
    let stack = ndarray::stack(ndarray::Axis(0), &views)
        .map_err(|e| Error::Invalid(e.to_string()))?
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|e| Error::Invalid(format!("snapshots are not images: {e}")))?;
    let (lo, hi) = range;
    let unit = stack.mapv(|v| ((v - lo) / (hi - lo)).clamp(0.0, 1.0));
    let strip = crate::figure::image_grid(unit.view(), frames.len(), 2);
    io::write_image(path, strip.view(), (0.0, 1.0))
}
