//! `posterior calibrate`: measure a prior's velocity error per time on held-out images and
//! write FLAIR's regulariser table (`calibration.json`, read from the prior's directory by
//! `reconstruct --sampler flair`).
//!
//! Held-out data: an `.npy` of shape `(N, C, H, W)` or `(C, H, W)` in the prior's units, or a
//! directory of `.npy` files (prior units) and PNG images (their `[0, 1]` range mapped onto
//! the prior's intensity range). Every image must have the prior's shape.

use std::path::Path;
use std::sync::Arc;

use ndarray::{ArrayD, Axis};

use crate::error::{Error, Result};
use crate::prior::{Denoiser, NetworkPrior, OnPath, Schedule};
use crate::sample::calibrate::calibrate;

use super::CalibrateArgs;

/// Reads held-out images as one batch in the prior's units.
fn held_out(path: &Path, shape: &[usize], range: (f32, f32)) -> Result<ArrayD<f32>> {
    let one = |p: &Path| -> Result<Vec<ArrayD<f32>>> {
        let a = match crate::io::extension(p).as_str() {
            "npy" => crate::io::read_npy(p)?,
            "png" => {
                let img = crate::io::read_image(p, &crate::io::ReadOptions::default())?;
                let (lo, hi) = range;
                img.data.mapv(|v| lo + v * (hi - lo)).into_dyn()
            }
            other => {
                return Err(Error::file(
                    p,
                    format!("cannot read held-out images from `.{other}`: expected .npy or .png"),
                ))
            }
        };
        let a = if a.ndim() == shape.len() {
            a.insert_axis(Axis(0))
        } else {
            a
        };
        if a.ndim() != shape.len() + 1 || a.shape()[1..] != *shape {
            return Err(Error::file(
                p,
                format!(
                    "shape {:?} does not fit the prior: expected (N, {shape:?}) or {shape:?}",
                    a.shape()
                ),
            ));
        }
        Ok(a.axis_iter(Axis(0)).map(|v| v.to_owned()).collect())
    };
    let mut images = Vec::new();
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| Error::file(path, format!("cannot list: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(crate::io::extension(p).as_str(), "npy" | "png"))
            .collect();
        files.sort();
        for f in files {
            images.extend(one(&f)?);
        }
    } else {
        images = one(path)?;
    }
    if images.is_empty() {
        return Err(Error::file(path, "no held-out images (.npy or .png) found"));
    }
    let views: Vec<_> = images.iter().map(|a| a.view()).collect();
    ndarray::stack(Axis(0), &views).map_err(|e| Error::Invalid(e.to_string()))
}

/// Runs `posterior calibrate`.
pub fn run(a: &CalibrateArgs) -> Result<()> {
    if crate::io::extension(&a.out) != "json" {
        return Err(Error::file(
            &a.out,
            "the calibration table is JSON: give a .json path",
        ));
    }
    if a.times < 2 || a.times > 200 {
        return Err(Error::Invalid(format!(
            "--times must be between 2 and 200, got {}",
            a.times
        )));
    }
    let prior = NetworkPrior::open(&a.prior)?;
    let info = prior.info().clone();
    let mut data = held_out(&a.data, &info.sample_shape, info.range)?;
    if let Some(limit) = a.limit {
        let n = data.shape()[0].min(limit.max(1));
        data = data
            .slice_axis(Axis(0), ndarray::Slice::from(0..n))
            .to_owned();
    }
    let flow = OnPath::new(Arc::new(prior), Schedule::rectified_flow());
    let ts: Vec<f64> = (1..=a.times).map(|i| i as f64 / a.times as f64).collect();
    let start = std::time::Instant::now();
    let mut table = calibrate(&flow, data.view(), &ts, a.seed)?;
    table.prior = info.name.clone();
    let text = table.to_json()?;
    crate::io::write_atomic(&a.out, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| Error::file(&a.out, format!("cannot write: {e}")))
    })?;
    println!(
        "{}: calibrated on {} held-out image(s) at {} times in {:.1} s; lambda(t) from {:.3} to {:.3}; wrote {}",
        info.name,
        data.shape()[0],
        ts.len(),
        start.elapsed().as_secs_f64(),
        table.weights.iter().cloned().fold(f64::INFINITY, f64::min),
        table.weights.iter().cloned().fold(0.0, f64::max),
        a.out.display()
    );
    Ok(())
}
