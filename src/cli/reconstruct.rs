//! `posterior reconstruct`: reconstruction of a measurement, by a classical method
//! (`--method`) or by a posterior sampler with a diffusion prior (`--sampler`).
//!
//! The measurement is a `degrade` output with its sidecar, or anything else with the
//! operator given by `--op` ([`crate::measurement::Measurement::open`]): a blurred photo, a
//! sinogram, raw k-space (fastMRI `.h5`, BART `.cfl`, `.npy`). A multi-slice k-space file
//! is reconstructed slice by slice into a volume unless `--slice` picks one.
//!
//! The sampler path restates the measurement in the prior's units
//! ([`crate::sample::units`]): the measurement's image range (from `--image-range`, else
//! the measurement itself, else the file's bit depth) maps onto the prior's intensity
//! range. For raw k-space and a one-channel (magnitude) prior, the image phase is estimated
//! from the calibration region ([`crate::spec::mri`]); a two-channel prior takes the
//! complex image directly. The image must have the prior's resolution and channels;
//! otherwise the error says both (nothing is resampled silently).

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{Array3, ArrayD, Axis, Ix3};

use crate::error::{Error, Result};
use crate::io;
use crate::measurement::{Measurement, NoiseSource, OpenOptions};
use crate::prior::{default_prior_for, Denoiser, NetworkPrior};
use crate::recon::{self, Method, ReconOptions};
use crate::sample::posterior::{
    gaussian_level, reconstruct_with_prior, Overrides, PriorReconstruction,
};
use crate::sample::{Executor, Snapshots};

use super::{Progress, ReconstructArgs};

/// The extensions `--out` takes.
const OUT_EXTENSIONS: &str = "png, npy, cfl (BART), nii, nii.gz";

pub fn run(a: &ReconstructArgs) -> Result<()> {
    check_flags(a)?;
    let opts = open_options(a)?;
    let slices = slices_to_read(a)?;
    let mut prior = match &a.sampler {
        Some(_) => Some(open_prior(a, &opts)?),
        None => None,
    };
    let magnitude_prior = prior
        .as_ref()
        .is_some_and(|p| p.info().channels() == Some(1));
    let mut images = Vec::new();
    let mut spreads = Vec::new();
    let mut references = Vec::new();
    let mut last: Option<Measurement> = None;
    for slice in &slices {
        let o = OpenOptions {
            slice: *slice,
            magnitude_image: magnitude_prior,
            ..opts.clone()
        };
        let mut m = Measurement::open(&a.measurement, &o)?;
        report_measurement(&m, slice.is_some() && slices.len() > 1);
        let (image, spread) = match &a.sampler {
            Some(name) => {
                let p = match prior.take() {
                    Some(p) => p,
                    None => open_prior(a, &opts)?,
                };
                run_sampler(a, name, &mut m, p)?
            }
            None => (run_classical(a, &m)?, None),
        };
        let crop = m
            .kspace
            .as_ref()
            .and_then(|k| k.reference.as_ref().map(|r| r.dim()).or(k.recon_size));
        let crop_to = |x: ArrayD<f32>| match crop {
            Some((r, c)) => io::kspace::center_crop(&x, r, c),
            None => x,
        };
        images.push(crop_to(image));
        if let Some(s) = spread {
            spreads.push(crop_to(s));
        }
        if let Some(r) = m.kspace.as_ref().and_then(|k| k.reference.clone()) {
            references.push(r);
        }
        last = Some(m);
    }
    let m = last.ok_or_else(|| Error::Invalid("nothing was reconstructed".into()))?;
    let volume = slices.len() > 1;
    let image = stack(&images, volume)?;
    // Compared before anything is written, so a truth of the wrong shape leaves no output.
    let quality = quality(a, &m, &image, &references, volume)?;
    // The estimate, its uncertainty map and the sidecar are committed together: if one
    // write fails, none of the outputs is touched.
    io::write_together(|| {
        write_output(&a.out, &image, &m, a.complex)?;
        if let (Some(p), false) = (&a.std, spreads.is_empty()) {
            let spread = stack(&spreads, volume)?;
            if io::extension(p) == "png" {
                let chw = to_chw(spread)?;
                let hi = chw.iter().fold(0f32, |m, v| m.max(*v)).max(1e-12);
                io::write_image(p, chw.view(), (0.0, hi))?;
            } else {
                write_output(p, &spread, &m, false)?;
            }
        }
        if let Some(p) = &a.write_sidecar_path() {
            io::write_json(p, &m.to_sidecar(&a.measurement))?;
        }
        Ok(())
    })?;
    if let Some(p) = &a.write_sidecar_path() {
        println!(
            "{}: the operator and options, read back when reconstructing again",
            p.display()
        );
    }
    if let Some(line) = quality {
        println!("{line}");
    }
    Ok(())
}

fn check_flags(a: &ReconstructArgs) -> Result<()> {
    let ext = io::extension(&a.out);
    if !matches!(
        ext.as_str(),
        "png" | "npy" | "cfl" | "hdr" | "nii" | "nii.gz"
    ) {
        return Err(Error::file(
            &a.out,
            format!("--out must name a {OUT_EXTENSIONS} file"),
        ));
    }
    if a.complex && !matches!(ext.as_str(), "npy" | "cfl" | "hdr") {
        return Err(Error::Invalid(
            "--complex keeps (re, im) channels and needs a .npy or .cfl output".into(),
        ));
    }
    if a.sampler.is_some() {
        if a.complex || a.nonneg || a.iters.is_some() || a.lambda.is_some() {
            return Err(Error::Invalid(
                "--complex, --nonneg, --iters and --lambda apply to the classical methods, not to --sampler".into(),
            ));
        }
        if a.samples == 0 || a.samples > 256 {
            return Err(Error::Invalid(format!(
                "--samples must be between 1 and 256, got {}",
                a.samples
            )));
        }
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
        let ensemble = matches!(a.sampler.as_deref(), Some("smc" | "tds" | "fps"));
        if a.std.is_some() && !ensemble && a.samples < 2 {
            return Err(Error::Invalid(
                "--std needs an ensemble: use --sampler smc|fps, or --samples 2 or more".into(),
            ));
        }
    } else {
        for (given, flag) in [
            (a.prior.is_some(), "--prior"),
            (a.steps.is_some(), "--steps"),
            (a.particles.is_some(), "--particles"),
            (!a.set.is_empty(), "--set"),
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
    }
    Ok(())
}

/// The options every slice is opened with (`--op` with `--maps` folded in, and the rest).
fn open_options(a: &ReconstructArgs) -> Result<OpenOptions> {
    let op = match (&a.op, &a.maps) {
        (Some(op), Some(maps)) => {
            let spec = crate::spec::Spec::parse(op)?;
            if spec.family != "mri" {
                return Err(Error::Invalid(format!(
                    "--maps gives MRI coil maps; the operator is `{}`",
                    spec.family
                )));
            }
            if spec.raw("maps").is_some() || spec.raw("sens").is_some() {
                return Err(Error::Invalid(
                    "give the coil maps once: --maps, or `maps=` in --op".into(),
                ));
            }
            let sep = if op.contains(':') { "," } else { ":" };
            Some(format!("{op}{sep}maps={maps}"))
        }
        (None, Some(_)) => {
            return Err(Error::Invalid(
                "--maps needs --op mri (raw k-space without a sidecar)".into(),
            ))
        }
        (op, None) => op.clone(),
    };
    let image_range = match &a.image_range {
        Some(v) if v.len() == 2 => Some((v[0], v[1])),
        Some(v) => {
            return Err(Error::Invalid(format!(
                "--image-range takes LO,HI (two numbers), got {} value(s)",
                v.len()
            )))
        }
        None => None,
    };
    if let Some(s) = &a.image_shape {
        if s.len() != 3 || s.contains(&0) {
            return Err(Error::Invalid(format!(
                "--image-shape takes C,H,W (three positive integers), got {s:?}"
            )));
        }
    }
    Ok(OpenOptions {
        op,
        image_shape: a.image_shape.clone(),
        slice: None,
        noise: a.noise.clone(),
        image_range,
        seed: a.seed,
        magnitude_image: false,
    })
}

/// `--slice N`, `--slice all`, or (default) every slice of a multi-slice k-space file
/// (`[None]` for everything else).
fn slices_to_read(a: &ReconstructArgs) -> Result<Vec<Option<usize>>> {
    let count = || -> Result<usize> {
        Ok(match io::extension(&a.measurement).as_str() {
            "h5" | "hdf5" => io::fastmri::shape(&a.measurement)?.0,
            "cfl" | "hdr" => io::read_cfl(&a.measurement)?.shape()[2],
            _ => 1,
        })
    };
    match a.slice.as_deref() {
        Some("all") => Ok((0..count()?).map(Some).collect()),
        Some(s) => s.parse::<usize>().map(|n| vec![Some(n)]).map_err(|_| {
            Error::Invalid(format!("--slice takes a slice index or `all`, got `{s}`"))
        }),
        None if io::kspace::is_kspace_file(&a.measurement) && a.op.is_some() => {
            let n = count()?;
            Ok(if n > 1 {
                (0..n).map(Some).collect()
            } else {
                vec![None]
            })
        }
        None => Ok(vec![None]),
    }
}

fn open_prior(a: &ReconstructArgs, opts: &OpenOptions) -> Result<NetworkPrior> {
    // Resolved before any work: `cuda` without a usable GPU fails here with the reason;
    // `auto` falls back to the CPU with a one-line notice.
    let backend = crate::gpu::select(a.device.parse()?).map_err(|e| {
        Error::Device(format!(
            "--device {}: no GPU backend available: {e}",
            a.device
        ))
    })?;
    let family = match &opts.op {
        Some(op) => crate::spec::Spec::parse(op)?.family,
        None => match crate::measurement::read_sidecar(&crate::measurement::Sidecar::path_for(
            &a.measurement,
        )) {
            Ok(side) => crate::spec::Spec::parse(&side.operator)?.family,
            Err(_) => String::new(),
        },
    };
    let name = a
        .prior
        .clone()
        .unwrap_or_else(|| default_prior_for(&family).to_string());
    let mut prior = NetworkPrior::open(&name)?;
    match prior.use_backend(&backend) {
        // `auto` keeps a prior the GPU path does not compute on the CPU.
        Err(Error::Unsupported(_)) if a.device == "auto" => {}
        other => other?,
    }
    Ok(prior)
}

fn report_measurement(m: &Measurement, per_slice: bool) {
    let sigma = gaussian_level(&m.noise, m.y.view());
    let how = match m.noise_source {
        NoiseSource::Sidecar => "from the sidecar",
        NoiseSource::Given => "given",
        NoiseSource::Estimated => "estimated from the data (override with --noise)",
    };
    if let Some(k) = &m.kspace {
        let region = posterior_operators::mri::calibration_region(&k.mask, usize::MAX).ok();
        let sampled = k.mask.iter().filter(|&&v| v != 0.0).count() as f64 / k.mask.len() as f64;
        if per_slice {
            eprint!("slice {}/{}: ", k.slice, k.slices);
        }
        eprintln!(
            "k-space {} coil(s) x {} x {}, {:.1}% sampled (mask {}), calibration region {}; noise sigma {sigma:.4} per real entry, {how}",
            k.coils(),
            k.data.dim().1,
            k.data.dim().2,
            100.0 * sampled,
            if k.mask_from_file { "from the file" } else { "from the zero pattern" },
            region.map_or("none".into(), |r| format!("{} x {}", r.rows, r.cols)),
        );
    } else if m.noise_source != NoiseSource::Sidecar {
        eprintln!("noise sigma {sigma:.4} per entry, {how}");
    }
}

fn run_classical(a: &ReconstructArgs, m: &Measurement) -> Result<ArrayD<f32>> {
    let method: Method = a.method.as_deref().unwrap_or("cg").parse()?;
    let opts = ReconOptions {
        method,
        iters: a.iters,
        lambda: a.lambda,
        filter: a.filter.clone(),
        nonnegative: a.nonneg,
        seed: a.seed,
        likelihood: match m.noise {
            posterior_operators::noise::NoiseModel::Poisson { .. } => {
                crate::solve::Likelihood::Poisson
            }
            _ => crate::solve::Likelihood::Gaussian,
        },
        allow_nonfinite: a.allow_nonfinite,
    };
    let progress = Progress::new(method.name(), opts.iters());
    let start = Instant::now();
    let x = recon::reconstruct(&m.physics, m.y.view(), &opts, &mut |i, f| {
        progress.update(i, f)
    })?;
    progress.finish();
    println!(
        "{}: {} reconstruction of {} in {:.2} s",
        a.out.display(),
        method,
        m.physics.operator.name(),
        start.elapsed().as_secs_f64()
    );
    Ok(m.physics.extract(x.view(), a.complex))
}

/// `reconstruct --sampler`: posterior sampling with a diffusion prior.
fn run_sampler(
    a: &ReconstructArgs,
    name: &str,
    m: &mut Measurement,
    prior: NetworkPrior,
) -> Result<(ArrayD<f32>, Option<ArrayD<f32>>)> {
    let set = crate::sample::settings::parse_assignments(&a.set)?;
    crate::sample::settings::check(name, &set)?;
    let prior_label = prior.info().name.clone();
    let prior_range = prior.info().range;
    let overrides = Overrides {
        steps: a.steps,
        particles: a.particles,
        calibration: None,
        set,
    };
    // The sampler takes the operator; `m` keeps the rest of the model (embedding, spec,
    // context) for extracting the image and writing the sidecar.
    let stand_in = crate::spec::Physics {
        operator: posterior_operators::Operator::Linear(Box::new(
            posterior_operators::Identity::new(m.physics.operator.domain_shape()),
        )),
        embedding: m.physics.embedding,
        family: m.physics.family,
        spec: m.physics.spec.clone(),
        context: m.physics.context.clone(),
    };
    let physics = std::mem::replace(&mut m.physics, stand_in);
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
            m.y.clone(),
            &m.noise,
            m.image_range,
            std::sync::Arc::new(prior),
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
        ..
    } = result?;
    recon::check_output(&label, image.view(), a.allow_nonfinite)?;
    if let Some(s) = &spread {
        recon::check_output(&format!("{label} (spread)"), s.view(), a.allow_nonfinite)?;
    }
    if let Some(path) = &a.snapshots {
        write_snapshots(path, &snaps, prior_range)?;
    }
    println!(
        "{}: {label} with prior {} ({} sample(s)) in {:.2} s, {} NFE, {} VJP; image range {:.4}..{:.4} mapped onto the prior's",
        a.out.display(),
        prior_label,
        a.samples,
        start.elapsed().as_secs_f64(),
        outcome.nfe,
        outcome.vjps,
        m.image_range.0,
        m.image_range.1,
    );
    let image = m.physics.extract(image.view(), false);
    let spread = spread.map(|s| {
        if s.shape()[0] == 2 {
            m.physics.extract(s.view(), false)
        } else {
            s
        }
    });
    Ok((image, spread))
}

/// One image `(C, H, W)`, or slices stacked into a volume `(D, H, W)` (one channel each).
fn stack(images: &[ArrayD<f32>], volume: bool) -> Result<ArrayD<f32>> {
    if !volume {
        return images
            .first()
            .cloned()
            .ok_or_else(|| Error::Invalid("no image".into()));
    }
    let planes: Vec<_> = images.iter().map(|x| x.index_axis(Axis(0), 0)).collect();
    Ok(ndarray::stack(Axis(0), &planes)
        .map_err(|e| Error::Shape(format!("slices of different shapes: {e}")))?
        .into_dyn())
}

fn to_chw(image: ArrayD<f32>) -> Result<Array3<f32>> {
    image
        .into_dimensionality::<Ix3>()
        .map_err(|e| Error::Shape(format!("reconstruction is not an image (C, H, W): {e}")))
}

/// Writes a reconstruction by extension: PNG in the image range, `.npy` in the file's
/// units (a complex pair scaled, not offset), BART `.cfl` (a `(2, H, W)` pair as one complex
/// image `[H, W]`, otherwise each channel / slice a real one `[H, W, D]`), NIfTI (a volume
/// `(D, H, W)`, or one slice).
fn write_output(path: &Path, image: &ArrayD<f32>, m: &Measurement, complex: bool) -> Result<()> {
    let s = &m.intensity;
    let offset = if complex || image.shape()[0] == 2 {
        0.0
    } else {
        s.offset
    };
    let file_units = image.mapv(|v| v * s.scale + offset);
    match io::extension(path).as_str() {
        "png" => {
            if image.shape()[0] != 1 && image.shape()[0] != 3 {
                return Err(Error::file(
                    path,
                    format!(
                        "a PNG holds one image; this reconstruction has shape {:?} (a volume: write .nii or .npy)",
                        image.shape()
                    ),
                ));
            }
            let chw = to_chw(image.clone())?;
            io::write_image(path, chw.view(), m.image_range)
        }
        "cfl" | "hdr" => {
            let (n, h, w) = (image.shape()[0], image.shape()[1], image.shape()[2]);
            let z = if complex && n == 2 {
                ndarray::Array3::from_shape_fn((h, w, 1), |(i, j, _)| {
                    num_complex::Complex32::new(file_units[[0, i, j]], file_units[[1, i, j]])
                })
            } else {
                ndarray::Array3::from_shape_fn((h, w, n), |(i, j, k)| {
                    num_complex::Complex32::new(file_units[[k, i, j]], 0.0)
                })
            };
            io::write_cfl(path, z.into_dyn().view())
        }
        "nii" | "nii.gz" => {
            let vol = to_chw(file_units)?;
            io::write_nifti_volume(path, vol.view(), [1.0, 1.0, 1.0])
        }
        _ => io::write_npy(path, file_units.view()),
    }
}

/// PSNR / SSIM / NRMSE against `--truth` (read in the measurement's units), else against
/// the file's reference (fastMRI `reconstruction_rss`, data range its maximum).
fn quality(
    a: &ReconstructArgs,
    m: &Measurement,
    image: &ArrayD<f32>,
    references: &[ndarray::Array2<f32>],
    volume: bool,
) -> Result<Option<String>> {
    let (truth, range, what) = match (&a.truth, &m.sidecar) {
        (Some(p), Some(side)) if !side.from_data => {
            let t = crate::measurement::read_truth(p, side)?;
            (t.into_dyn(), side.data_range, "truth")
        }
        (Some(p), _) => {
            let t = if volume {
                io::read_npy(p)?
            } else {
                io::read_image(p, &io::ReadOptions::default())?
                    .data
                    .into_dyn()
            };
            let hi = t.iter().fold(f32::NEG_INFINITY, |h, &v| h.max(v));
            let lo = t.iter().fold(0f32, |l, &v| l.min(v));
            (t, hi - lo, "truth")
        }
        (None, _) if !references.is_empty() => {
            let planes: Vec<_> = references.iter().map(|r| r.view()).collect();
            let t = ndarray::stack(Axis(0), &planes)
                .map_err(|e| Error::Shape(e.to_string()))?
                .into_dyn();
            let hi = t.iter().fold(0f32, |h, &v| h.max(v));
            (t, hi, "the file's reference")
        }
        _ => return Ok(None),
    };
    let x = if image.shape()[0] == 2 && truth.shape()[0] == 1 {
        m.physics.extract(image.view(), false)
    } else {
        image.clone()
    };
    if x.shape() != truth.shape() {
        return Err(Error::Shape(format!(
            "the reconstruction has shape {:?} but the {what} has {:?}",
            x.shape(),
            truth.shape()
        )));
    }
    let r = recon::Quality::compare(to_chw(x)?.view(), to_chw(truth)?.view(), range as f64)?;
    Ok(Some(format!(
        "PSNR {:.2} dB  SSIM {:.4}  NRMSE {:.4} (against {what}, data range {range:.4})",
        r.psnr, r.ssim, r.nrmse
    )))
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
