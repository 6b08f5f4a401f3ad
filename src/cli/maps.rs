//! `posterior maps`: coil sensitivity maps estimated from raw multi-coil k-space (ESPIRiT
//! or Walsh), written for other tools (`.npy` complex64 `(coils, H, W)`, BART `.cfl`
//! `[H, W, 1, coils]`) or for `reconstruct --maps FILE`.

use ndarray::{Array4, Axis};
use posterior_operators::mri::{espirit, walsh, EspiritSettings, WalshSettings};

use crate::error::{Error, Result};
use crate::io;

use super::MapsArgs;

pub fn run(a: &MapsArgs) -> Result<()> {
    let ext = io::extension(&a.out);
    if !matches!(ext.as_str(), "npy" | "cfl" | "hdr") {
        return Err(Error::file(&a.out, "--out must name a .npy or .cfl file"));
    }
    let mut k = io::kspace::read(&a.kspace, a.slice)?;
    if let Some((rows, _)) = k.recon_size {
        k.crop_readout(rows)?;
    }
    let d = EspiritSettings::default();
    let settings = EspiritSettings {
        kernel: a.kernel.unwrap_or(d.kernel),
        region: a.region.unwrap_or(d.region),
        threshold: a.threshold.unwrap_or(d.threshold),
        crop: a.crop.unwrap_or(d.crop),
    };
    let start = std::time::Instant::now();
    let est = match a.method.as_str() {
        "espirit" => espirit(k.data.view(), &settings)?,
        "walsh" => {
            if a.kernel.is_some() || a.threshold.is_some() || a.crop.is_some() {
                return Err(Error::Invalid(
                    "--kernel, --threshold and --crop are ESPIRiT settings; walsh takes --region"
                        .into(),
                ));
            }
            walsh(
                k.data.view(),
                &WalshSettings {
                    region: settings.region,
                    ..WalshSettings::default()
                },
            )?
        }
        other => {
            return Err(Error::Invalid(format!(
                "--method `{other}`: expected espirit or walsh"
            )))
        }
    };
    let (coils, h, w) = est.maps.dim();
    if ext == "npy" {
        io::write_npy_complex(&a.out, est.maps.view().into_dyn())?;
    } else {
        let bart = Array4::from_shape_fn((h, w, 1, coils), |(i, j, _, c)| est.maps[[c, i, j]]);
        io::write_cfl(&a.out, bart.into_dyn().view())?;
    }
    if let Some(p) = &a.eigenvalues {
        io::write_npy(p, est.eigenvalues.view().insert_axis(Axis(0)).into_dyn())?;
    }
    let kept = est
        .eigenvalues
        .iter()
        .filter(|&&v| v >= settings.crop as f32)
        .count();
    println!(
        "{}: {} maps of {coils} coil(s), {h} x {w}, from a {} x {} calibration region{} in {:.2} s",
        a.out.display(),
        a.method,
        est.region.rows,
        est.region.cols,
        if a.method == "espirit" {
            format!(
                ", {} kernels kept, {:.1}% of pixels above the {} crop",
                est.kernels,
                100.0 * kept as f64 / (h * w) as f64,
                settings.crop
            )
        } else {
            String::new()
        },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
