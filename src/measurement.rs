//! A measurement on disk: the array (`Y.npy`) and its JSON sidecar (`Y.json`), which holds
//! everything needed to rebuild the forward model and to map a reconstruction back to the
//! units of the image that was measured.

use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{self, Intensity, SliceAxis};
use crate::spec::{self, BuildContext, Physics};

/// The sidecar format tag; bumped when fields change meaning.
pub const FORMAT: &str = "posterior-measurement/1";

/// What `posterior degrade` records beside a measurement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Sidecar {
    pub format: String,
    /// The operator spec, e.g. `mri:coils=8,accel=4`.
    pub operator: String,
    /// The noise spec, e.g. `gaussian:sigma=0.01` or `none`.
    pub noise: String,
    /// The seed of the operator's randomness and of the noise.
    pub seed: u64,
    /// Directory that relative paths in the operator spec are resolved from.
    pub base_dir: PathBuf,
    /// Shape `(C, H, W)` of the measured image in working units.
    pub image_shape: Vec<usize>,
    /// Shape of the measurement array.
    pub measurement_shape: Vec<usize>,
    /// How working units map to the file's units (`file = data * scale + offset`).
    pub intensity: Intensity,
    /// The range shown when writing PNGs, in working units.
    pub display_range: [f32; 2],
    /// The data range used for PSNR/SSIM, in working units.
    pub data_range: f32,
    /// The image that was measured, and how it was read.
    pub source: Source,
}

/// The measured image, and how it was read, so `--truth` can be read the same way.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    pub slice: Option<usize>,
    pub axis: SliceAxis,
    /// Whether a colour image was converted to grayscale for the operator.
    pub to_grayscale: bool,
}

impl Sidecar {
    /// The sidecar path of a measurement: the same name with the extension `.json`.
    pub fn path_for(measurement: &Path) -> PathBuf {
        measurement.with_extension("json")
    }

    /// Rebuilds the forward model.
    pub fn physics(&self) -> Result<Physics> {
        spec::build(&self.operator, &self.context())
    }

    /// The build context recorded at degrade time.
    pub fn context(&self) -> BuildContext {
        BuildContext::new(&self.image_shape, self.seed, self.base_dir.clone())
    }
}

/// Reads a measurement and its sidecar, checking that they agree.
pub fn read(path: &Path) -> Result<(ArrayD<f32>, Sidecar)> {
    if io::extension(path) != "npy" {
        return Err(Error::file(
            path,
            "a measurement is a .npy file written by `posterior degrade`",
        ));
    }
    let side_path = Sidecar::path_for(path);
    let y = io::read_npy(path)?;
    let text = io::read_text(&side_path).map_err(|e| {
        Error::file(
            &side_path,
            format!(
                "cannot read the measurement's sidecar ({e}); `posterior degrade` writes it beside {}",
                path.display()
            ),
        )
    })?;
    let side: Sidecar = serde_json::from_str(&text)
        .map_err(|e| Error::file(&side_path, format!("malformed sidecar JSON: {e}")))?;
    if side.format != FORMAT {
        return Err(Error::file(
            &side_path,
            format!("sidecar format `{}`, expected `{FORMAT}`", side.format),
        ));
    }
    if y.shape() != side.measurement_shape.as_slice() {
        return Err(Error::file(
            path,
            format!(
                "measurement has shape {:?} but its sidecar {} says {:?}",
                y.shape(),
                side_path.display(),
                side.measurement_shape
            ),
        ));
    }
    let i = &side.intensity;
    let numbers = [
        ("intensity.scale", i.scale),
        ("intensity.offset", i.offset),
        ("display_range[0]", side.display_range[0]),
        ("display_range[1]", side.display_range[1]),
        ("data_range", side.data_range),
    ];
    for (name, v) in numbers
        .into_iter()
        .chain(i.clip_min.map(|c| ("intensity.clip_min", c)))
    {
        crate::limits::check_number(name, v as f64)
            .map_err(|e| Error::file(&side_path, format!("sidecar field {e}")))?;
    }
    if i.scale == 0.0 || side.display_range[1] <= side.display_range[0] || side.data_range <= 0.0 {
        return Err(Error::file(
            &side_path,
            format!(
                "sidecar has intensity scale {}, display range {:?} and data range {}: expected \
                 a nonzero scale, lo < hi and a positive data range",
                i.scale, side.display_range, side.data_range
            ),
        ));
    }
    crate::limits::check_magnitude(
        &format!("measurement {}", path.display()),
        y.iter().copied(),
    )?;
    Ok((y, side))
}

/// Writes a measurement and its sidecar together ([`io::write_together`]): if either write
/// fails, neither file is touched (an existing measurement is never deleted).
pub fn write(path: &Path, y: &ArrayD<f32>, side: &Sidecar) -> Result<()> {
    if io::extension(path) != "npy" {
        return Err(Error::file(
            path,
            "the measurement must be written to a .npy file",
        ));
    }
    io::write_together(|| {
        io::write_npy(path, y.view())?;
        io::write_json(&Sidecar::path_for(path), side)
    })
}

/// Prepares an image read from a file for an operator family: a colour image becomes
/// grayscale (Rec. 601 luma) for families that need one channel. Returns the image and
/// whether it was converted.
pub fn prepare_image(
    image: ndarray::Array3<f32>,
    family: &spec::FamilyInfo,
) -> (ndarray::Array3<f32>, bool) {
    if family.grayscale_only && image.shape()[0] == 3 {
        let luma = &image.index_axis(ndarray::Axis(0), 0) * 0.299
            + &image.index_axis(ndarray::Axis(0), 1) * 0.587
            + &image.index_axis(ndarray::Axis(0), 2) * 0.114;
        (luma.insert_axis(ndarray::Axis(0)), true)
    } else {
        (image, false)
    }
}

/// The display range of an image in working units: `[min(0, lo), max(1, hi)]`, so images
/// read from 8/16-bit files show as they were stored.
pub fn display_range(image: ndarray::ArrayView3<f32>) -> [f32; 2] {
    let (lo, hi) = image
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
    [lo.min(0.0), hi.max(1.0)]
}

/// Parses `axial`, `coronal` or `sagittal`.
pub fn parse_axis(text: &str) -> Result<SliceAxis> {
    match text {
        "axial" => Ok(SliceAxis::Axial),
        "coronal" => Ok(SliceAxis::Coronal),
        "sagittal" => Ok(SliceAxis::Sagittal),
        other => Err(Error::Invalid(format!(
            "unknown slice axis `{other}`: expected axial, coronal or sagittal"
        ))),
    }
}

/// Reads the image a sidecar describes (the ground truth of `reconstruct --truth`), the
/// same way `degrade` read it.
pub fn read_truth(path: &Path, side: &Sidecar) -> Result<ndarray::Array3<f32>> {
    let opts = io::ReadOptions {
        slice: side.source.slice,
        axis: side.source.axis,
    };
    let loaded = io::read_image(path, &opts)?;
    let mut image = loaded.data;
    if side.source.to_grayscale && image.shape()[0] == 3 {
        let family = spec::family(spec::Spec::parse(&side.operator)?.family.as_str())?;
        image = prepare_image(image, family).0;
    }
    if image.shape() != side.image_shape.as_slice() {
        return Err(Error::file(
            path,
            format!(
                "truth image has shape {:?}, but the measurement was made of an image of shape {:?}",
                image.shape(),
                side.image_shape
            ),
        ));
    }
    Ok(image)
}
