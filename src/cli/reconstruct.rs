//! `posterior reconstruct`: classical reconstruction of a measurement.

use std::time::Instant;

use ndarray::{Array3, ArrayD, Ix3};

use crate::error::{Error, Result};
use crate::io;
use crate::measurement::{self, Sidecar};
use crate::recon::{self, Method, ReconOptions};

use super::{Progress, ReconstructArgs};

pub fn run(a: &ReconstructArgs) -> Result<()> {
    let method: Method = a.method.parse()?;
    let out_ext = io::extension(&a.out);
    if out_ext != "png" && out_ext != "npy" {
        return Err(Error::file(&a.out, "--out must name a .png or .npy file"));
    }
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
