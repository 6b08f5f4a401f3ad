//! Measurements: an array with the forward model that made it, from a `posterior degrade`
//! sidecar or from anywhere else with the operator given as a spec.
//!
//! - [`read()`] / [`write()`]: a measurement on disk as `degrade` writes it, the array
//!   (`Y.npy`) and its JSON sidecar (`Y.json`), which holds everything needed to rebuild the
//!   forward model and to map a reconstruction back to the units of the measured image.
//! - [`Measurement::open`]: any measurement, with or without a sidecar: a blurred or masked
//!   photo (PNG/JPEG/TIFF), a `.npy` array (image, sinogram, k-space), raw k-space
//!   (fastMRI `.h5`, BART `.cfl`); the operator comes from the spec (`--op`), the image
//!   shape from `--image-shape` or, where the operator determines it, from the data.
//! - [`Measurement::from_array`]: the same for research code holding the array already.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};
use posterior_operators::noise::NoiseModel;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::kspace::{self, KSpace};
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
    /// `true` when written by `reconstruct --write-sidecar` for a measurement from
    /// elsewhere: the file is read as data (image, sinogram, k-space) with the options this
    /// sidecar saves; `false` for `degrade`'s simulated `.npy`.
    #[serde(default)]
    pub from_data: bool,
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
    let side = read_sidecar_for(&side_path, path)?;
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
    crate::limits::check_magnitude(
        &format!("measurement {}", path.display()),
        y.iter().copied(),
    )?;
    Ok((y, side))
}

/// Reads and checks a sidecar file.
pub fn read_sidecar(side_path: &Path) -> Result<Sidecar> {
    let text = io::read_text(side_path)
        .map_err(|e| Error::file(side_path, format!("cannot read the sidecar: {e}")))?;
    parse_sidecar(side_path, &text)
}

fn read_sidecar_for(side_path: &Path, path: &Path) -> Result<Sidecar> {
    let text = io::read_text(side_path).map_err(|e| {
        Error::file(
            side_path,
            format!(
                "cannot read the measurement's sidecar ({e}); `posterior degrade` writes it beside {}",
                path.display()
            ),
        )
    })?;
    parse_sidecar(side_path, &text)
}

fn parse_sidecar(side_path: &Path, text: &str) -> Result<Sidecar> {
    let side: Sidecar = serde_json::from_str(text)
        .map_err(|e| Error::file(side_path, format!("malformed sidecar JSON: {e}")))?;
    if side.format != FORMAT {
        return Err(Error::file(
            side_path,
            format!("sidecar format `{}`, expected `{FORMAT}`", side.format),
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
            .map_err(|e| Error::file(side_path, format!("sidecar field {e}")))?;
    }
    if i.scale == 0.0 || side.display_range[1] <= side.display_range[0] || side.data_range <= 0.0 {
        return Err(Error::file(
            side_path,
            format!(
                "sidecar has intensity scale {}, display range {:?} and data range {}: expected \
                 a nonzero scale, lo < hi and a positive data range",
                i.scale, side.display_range, side.data_range
            ),
        ));
    }
    Ok(side)
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

/// Where a measurement's noise level came from (printed by `reconstruct`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseSource {
    /// The sidecar's noise spec.
    Sidecar,
    /// Given by the caller (`--noise`).
    Given,
    /// Estimated from the data ([`estimate_noise`]).
    Estimated,
}

/// A measurement with the forward model that made it: what a reconstruction needs.
pub struct Measurement {
    /// The measured array, in the operator's range shape.
    pub y: ArrayD<f32>,
    /// The forward model.
    pub physics: Physics,
    /// The noise model (its level is what samplers use as `sigma_y`).
    pub noise: NoiseModel,
    pub noise_source: NoiseSource,
    /// The image intensity range `(lo, hi)` in working units: mapped onto a prior's range by
    /// the samplers and used for PNG output. From `--image-range`, else the measurement
    /// ([`crate::sample::units::measured_range`]: MRI, CT), else the file's bit depth.
    pub image_range: (f32, f32),
    /// Working units to the file's units, for `.npy` output.
    pub intensity: Intensity,
    /// Measured k-space the operator was built around, if any (its reference image and
    /// reconstruction size).
    pub kspace: Option<Arc<KSpace>>,
    /// The sidecar, when one was read.
    pub sidecar: Option<Sidecar>,
}

/// How [`Measurement::open`] reads a measurement that may have no sidecar.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// The operator spec (`--op`); required without a sidecar, checked against one.
    pub op: Option<String>,
    /// The image shape `(C, H, W)` (`--image-shape`) where the data does not determine it.
    pub image_shape: Option<Vec<usize>>,
    /// The slice of a multi-slice k-space file (`None`: the middle one).
    pub slice: Option<usize>,
    /// The noise: a number (Gaussian sigma per real entry) or a noise spec; estimated when
    /// `None` and there is no sidecar.
    pub noise: Option<String>,
    /// `--image-range LO,HI`.
    pub image_range: Option<(f32, f32)>,
    /// The seed of any randomness in the operator (masks, motion kernels).
    pub seed: u64,
    /// For measured k-space: reconstruct a real `(1, H, W)` magnitude image (the phase
    /// estimated from the calibration region, for a magnitude prior) instead of the complex
    /// `(2, H, W)` image.
    pub magnitude_image: bool,
}

impl Measurement {
    /// Wraps an array measured by `physics` (checked against its range shape, finite); the
    /// image range is the measurement's own ([`crate::sample::units::measured_range`]), or
    /// `[min(0, lo), max(1, hi)]` of the array for image-like measurements; no noise.
    pub fn from_array(y: ArrayD<f32>, physics: Physics) -> Result<Measurement> {
        check_measurement(&y, &physics, "the measurement")?;
        let image_range = match crate::sample::units::measured_range(&physics, y.view())? {
            Some(r) => r,
            None => span_with_unit(y.view()),
        };
        Ok(Measurement {
            y,
            physics,
            noise: NoiseModel::None,
            noise_source: NoiseSource::Given,
            image_range,
            intensity: Intensity::scaled(1.0, "npy"),
            kspace: None,
            sidecar: None,
        })
    }

    /// Reads a measurement: with its `degrade` sidecar when there is one beside it (a spec
    /// in `opts.op` must then agree with the sidecar's), otherwise from `opts.op` and the
    /// data (module docs).
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Measurement> {
        let side_path = Sidecar::path_for(path);
        if side_path.is_file() && side_path != path {
            let side = read_sidecar(&side_path)?;
            if !side.from_data {
                return open_with_sidecar(path, opts);
            }
            if let Some(op) = &opts.op {
                if !specs_agree(op, &side.operator)? {
                    return Err(Error::Spec(format!(
                        "--op `{op}` disagrees with the operator `{}` saved in {}: leave --op out, \
                         or move that file away",
                        side.operator,
                        side_path.display()
                    )));
                }
            }
            let saved = OpenOptions {
                op: Some(side.operator.clone()),
                image_shape: Some(opts.image_shape.clone().unwrap_or(side.image_shape.clone())),
                slice: opts.slice.or(side.source.slice),
                noise: opts.noise.clone().or(Some(side.noise.clone())),
                image_range: opts
                    .image_range
                    .or(Some((side.display_range[0], side.display_range[1]))),
                seed: side.seed,
                magnitude_image: opts.magnitude_image,
            };
            let mut m = Self::open_data(path, &saved, Some(side.base_dir.clone()))?;
            m.sidecar = Some(side);
            return Ok(m);
        }
        Self::open_data(path, opts, None)
    }

    /// Reads a measurement without a sidecar (relative paths in the spec resolved from
    /// `base`, else from the measurement's directory).
    fn open_data(path: &Path, opts: &OpenOptions, base: Option<PathBuf>) -> Result<Measurement> {
        let op = opts.op.as_deref().ok_or_else(|| {
            Error::file(
                path,
                format!(
                    "has no sidecar ({} written by `posterior degrade`): give the operator that                      made it with --op SPEC (see `posterior ops`), e.g. --op blur:kernel=file,path=psf.png                      or --op mri for raw k-space",
                    Sidecar::path_for(path).display()
                ),
            )
        })?;
        let parsed = spec::Spec::parse(op)?;
        let family = spec::family(&parsed.family)?;
        let base = base.unwrap_or_else(|| match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        });
        let (y, physics, intensity, kspace, bit_depth) = if family.name == "mri" {
            let mut k = kspace::read(path, opts.slice)?;
            if let Some((rows, _)) = k.recon_size {
                k.crop_readout(rows)?;
            }
            let k = Arc::new(k);
            let (_, h, w) = k.data.dim();
            let c = if opts.magnitude_image { 1 } else { 2 };
            if let Some(shape) = &opts.image_shape {
                if shape[..] != [c, h, w] && shape[..] != [1, h, w] && shape[..] != [2, h, w] {
                    return Err(Error::Shape(format!(
                        "--image-shape {shape:?} does not fit the {h} x {w} k-space in {}: \
                         expected (2, {h}, {w}) (complex) or (1, {h}, {w}), or leave it out",
                        path.display()
                    )));
                }
            }
            let ctx = BuildContext::new(&[c, h, w], opts.seed, base).with_kspace(k.clone());
            let physics = spec::build(op, &ctx)?;
            (
                k.measurement(),
                physics,
                Intensity::scaled(1.0, "kspace"),
                Some(k),
                None,
            )
        } else {
            let (mut y, intensity, bit_depth) = read_measured_array(path)?;
            if y.ndim() == 2 && matches!(family.name, "blur" | "inpaint" | "sr") {
                y = y.insert_axis(ndarray::Axis(0));
            }
            let shape = match &opts.image_shape {
                Some(s) => s.clone(),
                None => {
                    spec::image_shape_for(op, y.shape(), &base, opts.seed)?.ok_or_else(|| {
                        Error::Invalid(format!(
                        "the image shape of a `{}` measurement of shape {:?} is not determined by \
                         the data: give --image-shape C,H,W",
                        family.name,
                        y.shape()
                    ))
                    })?
                }
            };
            let physics = spec::build(op, &BuildContext::new(&shape, opts.seed, base))?;
            (y, physics, intensity, None, bit_depth)
        };
        check_measurement(&y, &physics, &path.display().to_string())?;
        let (noise, noise_source) = match &opts.noise {
            Some(text) => (parse_noise_option(text)?, NoiseSource::Given),
            None => {
                let sigma = estimate_noise(&physics, y.view(), kspace.as_deref());
                let model = if family.name == "mri" {
                    NoiseModel::ComplexGaussian {
                        sigma: sigma * std::f32::consts::SQRT_2,
                    }
                } else {
                    NoiseModel::Gaussian { sigma }
                };
                (model, NoiseSource::Estimated)
            }
        };
        let image_range = match opts.image_range {
            Some(r) => check_range(r)?,
            None => match crate::sample::units::measured_range(&physics, y.view())? {
                Some(r) => r,
                None => bit_depth.unwrap_or_else(|| span_with_unit(y.view())),
            },
        };
        Ok(Measurement {
            y,
            physics,
            noise,
            noise_source,
            image_range,
            intensity,
            kspace,
            sidecar: None,
        })
    }

    /// The spec with every default filled in, for writing beside the data
    /// (`reconstruct --write-sidecar`).
    pub fn to_sidecar(&self, path: &Path) -> Sidecar {
        let shape = self.physics.context.image_shape.clone();
        Sidecar {
            format: FORMAT.into(),
            operator: self.physics.spec.clone(),
            noise: noise_spec(&self.noise),
            seed: self.physics.context.seed,
            base_dir: self.physics.context.base_dir.clone(),
            image_shape: shape,
            measurement_shape: self.y.shape().to_vec(),
            intensity: self.intensity.clone(),
            display_range: [self.image_range.0, self.image_range.1],
            data_range: self.image_range.1 - self.image_range.0,
            source: Source {
                path: path.to_path_buf(),
                slice: self.kspace.as_ref().map(|k| k.slice),
                axis: SliceAxis::Axial,
                to_grayscale: false,
            },
            from_data: true,
        }
    }
}

/// A noise model as a spec string.
pub fn noise_spec(noise: &NoiseModel) -> String {
    match *noise {
        NoiseModel::None => "none".into(),
        NoiseModel::Gaussian { sigma } => format!("gaussian:sigma={sigma}"),
        NoiseModel::ComplexGaussian { sigma } => format!("complex-gaussian:sigma={sigma}"),
        NoiseModel::Poisson { scale } => format!("poisson:scale={scale}"),
    }
}

fn open_with_sidecar(path: &Path, opts: &OpenOptions) -> Result<Measurement> {
    let (y, side) = read(path)?;
    if let Some(op) = &opts.op {
        if !specs_agree(op, &side.operator)? {
            return Err(Error::Spec(format!(
                "--op `{op}` disagrees with the sidecar's operator `{}` ({}): leave --op out, or \
                 move the sidecar away to reconstruct with another operator",
                side.operator,
                Sidecar::path_for(path).display()
            )));
        }
    }
    if opts
        .image_shape
        .as_ref()
        .is_some_and(|s| *s != side.image_shape)
    {
        return Err(Error::Shape(format!(
            "--image-shape {:?} disagrees with the sidecar's image shape {:?}",
            opts.image_shape, side.image_shape
        )));
    }
    let physics = side.physics()?;
    let (noise, noise_source) = match &opts.noise {
        Some(text) => (parse_noise_option(text)?, NoiseSource::Given),
        None => (spec::noise::parse_noise(&side.noise)?, NoiseSource::Sidecar),
    };
    let image_range = match opts.image_range {
        Some(r) => check_range(r)?,
        None => match crate::sample::units::measured_range(&physics, y.view())? {
            Some(r) => r,
            None => (side.display_range[0], side.display_range[1]),
        },
    };
    Ok(Measurement {
        y,
        physics,
        noise,
        noise_source,
        image_range,
        intensity: side.intensity.clone(),
        kspace: None,
        sidecar: Some(side),
    })
}

/// Whether two specs describe the same operator once every default is filled in (numbers
/// compared as numbers, so `sigma=3` equals `sigma=3.0`).
pub fn specs_agree(a: &str, b: &str) -> Result<bool> {
    let (pa, pb) = (spec::Spec::parse(a)?, spec::Spec::parse(b)?);
    if pa.family != pb.family {
        return Ok(false);
    }
    let family = spec::family(&pa.family)?;
    let filled = |s: &spec::Spec| -> Vec<(String, String)> {
        family
            .params
            .iter()
            .filter_map(|p| {
                let v = s.raw(p.key).map(str::to_string).or_else(|| {
                    (!p.default.is_empty() && !p.default.contains('|'))
                        .then(|| p.default.to_string())
                })?;
                Some((p.key.to_string(), v))
            })
            .collect()
    };
    let same = |x: &str, y: &str| match (x.parse::<f64>(), y.parse::<f64>()) {
        (Ok(u), Ok(v)) => u == v,
        _ => x == y,
    };
    let (fa, fb) = (filled(&pa), filled(&pb));
    Ok(fa.len() == fb.len()
        && fa
            .iter()
            .zip(&fb)
            .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb)))
}

/// `--noise`: a number (Gaussian sigma per real entry) or a noise spec.
pub fn parse_noise_option(text: &str) -> Result<NoiseModel> {
    match text.trim().parse::<f32>() {
        Ok(sigma) if sigma.is_finite() && sigma >= 0.0 => Ok(NoiseModel::Gaussian { sigma }),
        Ok(sigma) => Err(Error::Invalid(format!(
            "--noise {sigma}: expected a non-negative noise standard deviation"
        ))),
        Err(_) => spec::noise::parse_noise(text),
    }
}

fn check_range((lo, hi): (f32, f32)) -> Result<(f32, f32)> {
    if lo.is_finite() && hi.is_finite() && lo < hi {
        Ok((lo, hi))
    } else {
        Err(Error::Invalid(format!(
            "--image-range {lo},{hi}: expected finite LO < HI"
        )))
    }
}

/// `[min(0, lo), max(1, hi)]` of an array.
fn span_with_unit(y: ArrayViewD<f32>) -> (f32, f32) {
    let (lo, hi) = y
        .iter()
        .fold((0f32, 1f32), |(l, h), &v| (l.min(v), h.max(v)));
    (lo, hi)
}

fn check_measurement(y: &ArrayD<f32>, physics: &Physics, what: &str) -> Result<()> {
    let expected = physics.operator.range_shape();
    if y.shape() != expected {
        return Err(Error::Shape(format!(
            "{what} has shape {:?}, but `{}` on images of shape {:?} measures {:?}: check \
             --op and --image-shape",
            y.shape(),
            physics.spec,
            physics.context.image_shape,
            expected
        )));
    }
    posterior_operators::error::check_finite(what, y.iter())?;
    Ok(())
}

/// A measured array, how its units map back to the file's, and its bit depth's range.
type MeasuredArray = (ArrayD<f32>, Intensity, Option<(f32, f32)>);

/// A measured array that is not k-space: an image file in working units (with its bit
/// depth's range), or a `.npy` array as stored (an image, a sinogram).
fn read_measured_array(path: &Path) -> Result<MeasuredArray> {
    match io::extension(path).as_str() {
        "npy" => {
            let y = io::read_npy(path)?;
            posterior_operators::error::check_finite(&path.display().to_string(), y.iter())?;
            Ok((y, Intensity::scaled(1.0, "npy"), None))
        }
        _ => {
            let img = io::read_image(path, &io::ReadOptions::default())?;
            let depth =
                matches!(img.intensity.unit.as_str(), "8-bit" | "16-bit").then_some((0.0, 1.0));
            Ok((img.data.into_dyn(), img.intensity, depth))
        }
    }
}

/// An estimate of the noise standard deviation per real entry of `y`, in `y`'s units:
/// - k-space: the median absolute deviation (times 1.4826) of the real and imaginary parts
///   of the sampled entries in the periphery (outside the central 3/4 along both axes),
///   where the signal has decayed below the noise;
/// - image-like measurements and sinograms: Donoho's estimate from the finest diagonal
///   Haar wavelet coefficients, `median(|HH|) / 0.6745`, over the last two axes.
pub fn estimate_noise(physics: &Physics, y: ArrayViewD<f32>, kspace: Option<&KSpace>) -> f32 {
    let mad = |v: Vec<f32>| crate::sample::units::quantile(v, 0.5) * 1.4826;
    if let Some(k) = kspace {
        let (_, h, w) = k.data.dim();
        let outer = |i: usize, n: usize| {
            let d = (i as f64 - (n / 2) as f64).abs();
            d > 0.375 * n as f64
        };
        let mut parts = Vec::new();
        for ((_, i, j), v) in k.data.indexed_iter() {
            if k.mask[[i, j]] != 0.0 && outer(i, h) && outer(j, w) {
                parts.push(v.re.abs());
                parts.push(v.im.abs());
            }
        }
        if parts.is_empty() {
            for ((_, i, j), v) in k.data.indexed_iter() {
                if k.mask[[i, j]] != 0.0 && (outer(i, h) || outer(j, w)) {
                    parts.push(v.re.abs());
                    parts.push(v.im.abs());
                }
            }
        }
        return mad(parts);
    }
    let _ = physics;
    let n = y.ndim();
    if n < 2 {
        return 0.0;
    }
    let (h, w) = (y.shape()[n - 2], y.shape()[n - 1]);
    let mut hh = Vec::new();
    let Ok(planes) = y
        .view()
        .into_shape_with_order((y.len() / (h * w).max(1), h, w))
    else {
        return 0.0;
    };
    for p in planes.outer_iter() {
        for i in 0..h / 2 {
            for j in 0..w / 2 {
                let (a, b, c, d) = (
                    p[[2 * i, 2 * j]],
                    p[[2 * i, 2 * j + 1]],
                    p[[2 * i + 1, 2 * j]],
                    p[[2 * i + 1, 2 * j + 1]],
                );
                hh.push(((a - b - c + d) / 2.0).abs());
            }
        }
    }
    crate::sample::units::quantile(hh, 0.5) / 0.6745
}
