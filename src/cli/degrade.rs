//! `posterior degrade`: simulate a measurement.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::io::{self, ReadOptions};
use crate::measurement::{self, Sidecar, Source};
use crate::spec::{self, BuildContext};

use super::DegradeArgs;

pub fn run(a: &DegradeArgs) -> Result<()> {
    if io::extension(&a.out) != "npy" {
        return Err(Error::file(&a.out, "--out must name a .npy file"));
    }
    let axis = measurement::parse_axis(&a.axis)?;
    let family = spec::family(spec::Spec::parse(&a.op)?.family.as_str())?;
    let noise = spec::noise::parse_noise(&a.noise)?;
    let loaded = io::read_image(
        &a.input,
        &ReadOptions {
            slice: a.slice,
            axis,
        },
    )?;
    let (image, to_grayscale) = measurement::prepare_image(loaded.data, family);
    if to_grayscale {
        eprintln!(
            "note: {} needs one channel; the colour image was converted to grayscale",
            family.name
        );
    }
    let base_dir = std::env::current_dir()
        .map_err(|e| Error::Invalid(format!("cannot read the current directory: {e}")))?;
    let ctx = BuildContext::new(image.shape(), a.seed, base_dir.clone());
    let physics = spec::build(&a.op, &ctx)?;
    let y = physics.measure(image.view().into_dyn(), &noise, a.seed)?;
    let display = measurement::display_range(image.view());
    let side = Sidecar {
        format: measurement::FORMAT.into(),
        operator: physics.spec.clone(),
        noise: a.noise.clone(),
        seed: a.seed,
        base_dir,
        image_shape: image.shape().to_vec(),
        measurement_shape: y.shape().to_vec(),
        intensity: loaded.intensity,
        display_range: display,
        data_range: display[1] - display[0],
        source: Source {
            path: absolute(&a.input),
            slice: a.slice,
            axis,
            to_grayscale,
        },
        from_data: false,
    };
    measurement::write(&a.out, &y, &side)?;
    if let Some(p) = &a.preview {
        let pic = spec::preview(y.view(), (display[0], display[1]));
        io::write_image(p, pic.view(), (0.0, 1.0))?;
    }
    println!(
        "{}: {} of {:?} -> measurement {:?} ({}), noise {}",
        a.out.display(),
        physics.operator.name(),
        side.image_shape,
        side.measurement_shape,
        Sidecar::path_for(&a.out).display(),
        a.noise
    );
    Ok(())
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}
