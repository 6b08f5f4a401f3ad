//! Sparse-view CT (60 parallel-beam views) of an ellipse phantom, reconstructed by DPS with
//! the shipped `ct-ellipses` prior, next to filtered back-projection.
//!
//! ```sh
//! cargo run --release --example ct_dps -- [STEPS] [OUT_DIR]    # default 1000 steps (DPS's), .
//! ```

use std::path::{Path, PathBuf};

use ndarray::{Array3, Axis, Ix3};
use posterior::metrics::psnr;
use posterior::prelude::*;

/// A held-out 128 x 128 phantom (the prior's size) as attenuation relative to water,
/// `mu / mu_water` in [0, 2].
fn phantom() -> Result<Array3<f32>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/heldout/ct-ellipses.npy");
    let images = posterior::io::read_npy(&path)?; // (6, 1, 128, 128) in [-1, 1]
    let x = images.index_axis(Axis(0), 0).mapv(|v| v + 1.0);
    x.into_dimensionality::<Ix3>()
        .map_err(|e| Error::Shape(e.to_string()))
}

/// Measures, reconstructs by FBP and DPS, writes `truth.png`, `fbp.png` and `dps.png` into
/// `out`; returns the reconstructions' PSNR and the DPS result.
fn run(steps: usize, out: &Path) -> Result<(f64, f64, Reconstructed)> {
    let truth = phantom()?.into_dyn();
    let mut physics = Ct::parallel(60).build(&[1, 128, 128])?;
    let noise = NoiseModel::Gaussian { sigma: 0.5 };
    let y = physics.measure(truth.view(), &noise, 0)?;

    let fbp = Reconstruction::new(physics.share(), y.clone())
        .method(Fbp::default())
        .run()?;
    // The image range mapped onto the prior's comes from the measurement (the FBP image's
    // 99.5th percentile), never from the truth.
    let r = Reconstruction::new(physics, y)
        .noise(noise)
        .sampler(Dps::default().steps(steps))
        .prior(NetworkPrior::open("ct-ellipses")?)
        .seed(0)
        .run()?;
    println!("{}: {} NFE, {} VJP in {:.1} s", r.label, r.nfe, r.vjps, r.seconds);

    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    for (name, image) in [("truth", &truth), ("fbp", &fbp.image), ("dps", &r.image)] {
        let chw = image.clone().into_dimensionality::<Ix3>().map_err(|e| Error::Shape(e.to_string()))?;
        posterior::io::write_image(&out.join(format!("{name}.png")), chw.view(), (0.0, 2.0))?;
    }
    let p_fbp = psnr(fbp.image.view(), truth.view(), 2.0)?;
    let p_dps = psnr(r.image.view(), truth.view(), 2.0)?;
    println!("PSNR: FBP {p_fbp:.2} dB, DPS {p_dps:.2} dB");
    Ok((p_fbp, p_dps, r))
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let steps = args.next().map_or(Ok(1000), |s| s.parse()).map_err(|e| Error::Invalid(format!("STEPS: {e}")))?;
    let out = args.next().map_or(PathBuf::from("."), PathBuf::from);
    run(steps, &out).map(|_| ())
}

#[test]
fn dps_runs_through_the_network_vjp() {
    // A handful of steps keeps CI fast (a VJP through the 128 x 128 U-Net per step): far
    // from DPS's 1000, so the check is that every step differentiated through the prior
    // and the result is a sane image, not that it beats FBP.
    let dir = tempfile::tempdir().unwrap();
    let (p_fbp, p_dps, r) = run(4, dir.path()).unwrap();
    assert_eq!((r.nfe, r.vjps), (4, 4));
    assert!(r.image.iter().all(|v| v.is_finite()));
    assert!(p_fbp > 20.0, "FBP {p_fbp:.2} dB");
    assert!(p_dps > 10.0, "DPS {p_dps:.2} dB");
}
