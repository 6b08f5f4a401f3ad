//! Operator and noise specs: short strings such as `blur:kernel=gaussian,sigma=3` or
//! `mri:coils=8,accel=4,mask=uniform1d,acs=0.08`, parsed into operators.
//!
//! A spec is `FAMILY[:key=value,key=value,...]`. Each family module here declares its
//! parameters ([`FamilyInfo`], listed by `posterior ops`) and builds its operator from a
//! [`Spec`] and a [`BuildContext`]. Unknown keys are errors, never silently ignored.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::{Array3, ArrayD, ArrayViewD, Axis, IxDyn};
use posterior_operators::Operator;

use crate::error::{Error, Result};

pub mod blur;
pub mod ct;
pub mod inpaint;
pub mod mri;
pub mod noise;
pub mod phase;
pub mod sr;

/// One parameter of an operator family, as `posterior ops` lists it.
#[derive(Debug)]
pub struct ParamInfo {
    pub key: &'static str,
    /// The default as written in a spec, or "" where the parameter is required / optional
    /// without default.
    pub default: &'static str,
    pub help: &'static str,
}

/// An operator family: its name, what it does and its parameters.
#[derive(Debug)]
pub struct FamilyInfo {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: &'static [ParamInfo],
    /// Example specs, shown by `posterior ops`.
    pub examples: &'static [&'static str],
    /// Whether the family needs a single-channel image (the CLI converts colour images to
    /// grayscale for it, with a notice).
    pub grayscale_only: bool,
}

/// Every operator family, in the order `posterior ops` lists them.
pub fn families() -> Vec<&'static FamilyInfo> {
    vec![
        &blur::INFO,
        &inpaint::INFO,
        &sr::INFO,
        &mri::INFO,
        &ct::INFO,
        &phase::INFO,
    ]
}

/// The family called `name`, or an error that lists the families.
pub fn family(name: &str) -> Result<&'static FamilyInfo> {
    families()
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            let names: Vec<_> = families().iter().map(|f| f.name).collect();
            Error::Spec(format!(
                "unknown operator `{name}`: expected one of {}",
                names.join(", ")
            ))
        })
}

/// What a family builder needs beyond the spec itself.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The shape `(C, H, W)` of the image that will be measured.
    pub image_shape: Vec<usize>,
    /// The seed for everything random in the operator (masks, kernels, coil maps).
    pub seed: u64,
    /// Relative file paths in the spec (kernels, masks, coil maps) are resolved from here.
    pub base_dir: PathBuf,
    /// Measured k-space the operator is built for (raw data from a scanner or another
    /// tool): the `mri` family then takes the coils, size and sampling mask from it and
    /// estimates coil maps from its calibration region (see [`mri`]).
    pub kspace: Option<std::sync::Arc<crate::io::kspace::KSpace>>,
}

impl BuildContext {
    /// A context for an image of `image_shape` `(C, H, W)`, a seed, and the directory that
    /// relative paths in specs are resolved from.
    pub fn new(image_shape: &[usize], seed: u64, base_dir: impl Into<PathBuf>) -> Self {
        BuildContext {
            image_shape: image_shape.to_vec(),
            seed,
            base_dir: base_dir.into(),
            kspace: None,
        }
    }

    /// The same context for an operator built around measured k-space.
    pub fn with_kspace(mut self, kspace: std::sync::Arc<crate::io::kspace::KSpace>) -> Self {
        self.kspace = Some(kspace);
        self
    }

    /// `(C, H, W)` of the image, or an error if the image is not 3-D.
    pub fn chw(&self) -> Result<(usize, usize, usize)> {
        match self.image_shape[..] {
            [c, h, w] => Ok((c, h, w)),
            _ => Err(Error::Invalid(format!(
                "operators act on images of shape (C, H, W); got {:?}",
                self.image_shape
            ))),
        }
    }
    /// Resolves a path given in a spec.
    pub fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// How an image of shape `(C, H, W)` enters the operator's domain and comes back out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Embedding {
    /// The domain is the image itself.
    Identity,
    /// The domain is a complex image `(2, H, W)`; a real `(1, H, W)` image enters with zero
    /// imaginary part, and comes back as the magnitude (or the (re, im) pair on request).
    RealToComplex,
    /// The image is the complex `(2, H, W)` domain itself (re, im), as measured k-space
    /// gives it; it comes back as the magnitude `(1, H, W)` (or the pair on request).
    Complex,
}

/// A built forward model: the operator, how images enter its domain, and the spec it came from.
pub struct Physics {
    pub operator: Operator,
    pub embedding: Embedding,
    /// The family that built it.
    pub family: &'static FamilyInfo,
    /// The spec text it was built from.
    pub spec: String,
    /// The context it was built in.
    pub context: BuildContext,
}

impl Physics {
    /// Maps an image `(C, H, W)` into the operator's domain.
    pub fn embed(&self, image: ArrayViewD<f32>) -> Result<ArrayD<f32>> {
        match self.embedding {
            Embedding::Identity | Embedding::Complex => Ok(image.to_owned()),
            Embedding::RealToComplex => {
                if image.ndim() != 3 || image.shape()[0] != 1 {
                    return Err(Error::Invalid(format!(
                        "{} needs a single-channel image (1, H, W); got {:?}",
                        self.operator.name(),
                        image.shape()
                    )));
                }
                let (h, w) = (image.shape()[1], image.shape()[2]);
                let mut out = ArrayD::zeros(IxDyn(&[2, h, w]));
                out.index_axis_mut(Axis(0), 0)
                    .assign(&image.index_axis(Axis(0), 0));
                Ok(out)
            }
        }
    }

    /// Simulates a measurement of `image` (`(C, H, W)`, working units): `A(embed(image))`,
    /// plus noise drawn from `seed`, restricted to the entries the operator measures.
    pub fn measure(
        &self,
        image: ArrayViewD<f32>,
        noise: &posterior_operators::noise::NoiseModel,
        seed: u64,
    ) -> Result<ArrayD<f32>> {
        crate::limits::check_magnitude("the image", image.iter().copied())?;
        let x = self.embed(image)?;
        let mut y = self.operator.forward(x.view())?;
        noise.check_layout(y.shape())?;
        noise.apply(&mut y, seed);
        self.operator.restrict_to_measured(y.view_mut());
        crate::limits::check_magnitude(
            &format!(
                "the simulated measurement ({} of the image)",
                self.operator.name()
            ),
            y.iter().copied(),
        )?;
        Ok(y)
    }

    /// Maps a domain array back to an image: the magnitude of a complex image, unless
    /// `keep_complex`, which returns the `(2, H, W)` pair.
    pub fn extract(&self, x: ArrayViewD<f32>, keep_complex: bool) -> ArrayD<f32> {
        self.embedding.extract(x, keep_complex)
    }
}

impl Embedding {
    /// An image from the domain: the magnitude `(1, H, W)` of a complex `(2, H, W)` array
    /// unless `keep_complex`; anything else (a real image, such as the posterior samplers
    /// return for a real-to-complex model, which sample the real image) as it is.
    pub fn extract(self, x: ArrayViewD<f32>, keep_complex: bool) -> ArrayD<f32> {
        let complex = matches!(self, Embedding::RealToComplex | Embedding::Complex);
        if !complex || keep_complex || x.ndim() != 3 || x.shape()[0] != 2 {
            return x.to_owned();
        }
        let re = x.index_axis(Axis(0), 0);
        let im = x.index_axis(Axis(0), 1);
        let mag = ndarray::Zip::from(&re)
            .and(&im)
            .map_collect(|a, b| (a * a + b * b).sqrt());
        mag.insert_axis(Axis(0)).into_dyn()
    }
}

/// The image shape `(C, H, W)` a measurement of shape `measured` implies for the spec
/// `text`, where the operator determines it (blur, inpainting, super-resolution: a 2-D
/// measurement is one channel); `None` where it does not (CT, phase retrieval: give the
/// shape). Relative paths in the spec are resolved from `base_dir`.
pub fn image_shape_for(
    text: &str,
    measured: &[usize],
    base_dir: &Path,
    seed: u64,
) -> Result<Option<Vec<usize>>> {
    let parsed = Spec::parse(text)?;
    let chw = match *measured {
        [h, w] => vec![1, h, w],
        [c, h, w] => vec![c, h, w],
        _ => return Ok(None),
    };
    let ctx = BuildContext::new(&chw, seed, base_dir);
    match parsed.family.as_str() {
        "blur" => blur::image_shape(&parsed, &chw, &ctx).map(Some),
        "inpaint" => Ok(Some(chw)),
        "sr" => {
            let f: usize = parsed.get("factor", 4)?;
            Ok(Some(vec![chw[0], chw[1] * f, chw[2] * f]))
        }
        _ => Ok(None),
    }
}

/// Parses `spec` and builds its operator for the image described by `ctx`.
pub fn build(spec: &str, ctx: &BuildContext) -> Result<Physics> {
    let parsed = Spec::parse(spec)?;
    let family = family(&parsed.family)?;
    crate::limits::check_elements("the image (C, H, W)", &ctx.image_shape)?;
    let (operator, embedding) = match family.name {
        "blur" => blur::build(&parsed, ctx)?,
        "inpaint" => inpaint::build(&parsed, ctx)?,
        "sr" => sr::build(&parsed, ctx)?,
        "mri" => mri::build(&parsed, ctx)?,
        "ct" => ct::build(&parsed, ctx)?,
        "phase" => phase::build(&parsed, ctx)?,
        other => return Err(Error::Spec(format!("operator `{other}` has no builder"))),
    };
    parsed.finish(family.params)?;
    crate::limits::check_elements(
        &format!("the measurement of {}", operator.name()),
        operator.range_shape(),
    )?;
    Ok(Physics {
        operator,
        embedding,
        family,
        spec: spec.trim().to_string(),
        context: ctx.clone(),
    })
}

/// A parsed spec: a family name and `key=value` pairs, read through typed getters that
/// remember which keys were used, so [`Spec::finish`] can reject the rest.
#[derive(Debug)]
pub struct Spec {
    pub family: String,
    params: Vec<(String, String)>,
    used: RefCell<BTreeSet<String>>,
}

impl Spec {
    /// Parses `FAMILY[:key=value,...]`.
    pub fn parse(text: &str) -> Result<Spec> {
        let text = text.trim();
        let (family, rest) = match text.split_once(':') {
            Some((f, r)) => (f.trim(), r.trim()),
            None => (text, ""),
        };
        if family.is_empty() {
            return Err(Error::Spec(format!(
                "spec `{text}` has no name: expected NAME[:key=value,...], e.g. blur:kernel=gaussian,sigma=3"
            )));
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for item in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                Error::Spec(format!(
                    "{family}: `{item}` is not key=value (spec `{text}`)"
                ))
            })?;
            let (k, v) = (k.trim().to_string(), v.trim().to_string());
            if params.iter().any(|(pk, _)| *pk == k) {
                return Err(Error::Spec(format!("{family}: key `{k}` is given twice")));
            }
            params.push((k, v));
        }
        Ok(Spec {
            family: family.to_string(),
            params,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    /// The raw value of `key`, if given (marks the key as used).
    pub fn raw(&self, key: &str) -> Option<&str> {
        self.used.borrow_mut().insert(key.to_string());
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` parsed as `T`, or `None` when absent. Numbers (f32, f64) must be
    /// finite and within [`crate::limits::MAX_MAGNITUDE`]; counts are capped where they
    /// size something (each family checks the arrays they imply).
    pub fn opt<T: FromStr>(&self, key: &str) -> Result<Option<T>> {
        let Some(v) = self.raw(key) else {
            return Ok(None);
        };
        let parsed = v.parse::<T>().map_err(|_| {
            Error::Spec(format!(
                "{}: `{key}={v}` is not a valid {}",
                self.family,
                type_label::<T>()
            ))
        })?;
        if type_label::<T>() == "number" {
            let x: f64 = v.parse().unwrap_or(f64::NAN);
            crate::limits::check_number(&format!("{}: `{key}={v}`", self.family), x)
                .map_err(|e| Error::Spec(e.to_string()))?;
        }
        Ok(Some(parsed))
    }

    /// The value of `key` parsed as `T`, or `default` when absent.
    pub fn get<T: FromStr>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.opt(key)?.unwrap_or(default))
    }

    /// The value of `key`, required.
    pub fn require<T: FromStr>(&self, key: &str) -> Result<T> {
        self.opt(key)?
            .ok_or_else(|| Error::Spec(format!("{}: key `{key}` is required", self.family)))
    }

    /// The value of `key`, which must be one of `allowed`; `default` when absent.
    pub fn choice(&self, key: &str, allowed: &[&str], default: &str) -> Result<String> {
        let v = self.raw(key).unwrap_or(default);
        if allowed.contains(&v) {
            Ok(v.to_string())
        } else {
            Err(Error::Spec(format!(
                "{}: `{key}={v}` is not allowed: expected one of {}",
                self.family,
                allowed.join(", ")
            )))
        }
    }

    /// Rejects keys that no getter asked for, listing the family's keys.
    pub fn finish(&self, params: &[ParamInfo]) -> Result<()> {
        let used = self.used.borrow();
        for (k, _) in &self.params {
            if !used.contains(k) {
                let keys: Vec<_> = params.iter().map(|p| p.key).collect();
                return Err(Error::Spec(format!(
                    "{}: unknown key `{k}`: expected one of {}",
                    self.family,
                    keys.join(", ")
                )));
            }
        }
        Ok(())
    }
}

fn type_label<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    match name {
        "f32" | "f64" => "number",
        "usize" | "u32" | "u64" | "i32" | "i64" => "integer",
        "bool" => "boolean (true/false)",
        _ => "value",
    }
}

/// A picture of a measurement for `--preview`: a `(C, H, W)` image in [0, 1].
///
/// Image-shaped measurements (blur, inpainting, super-resolution) are shown as they are,
/// clipped to `display` range; k-space `(coils, 2, H, W)` or `(2, H, W)` as the log of the
/// root-sum-of-squares magnitude; 2-D arrays (CT sinograms, views x detectors) rescaled to
/// their own range.
pub fn preview(y: ArrayViewD<f32>, display: (f32, f32)) -> Array3<f32> {
    fn rescale(a: ndarray::Array2<f32>) -> Array3<f32> {
        let (lo, hi) = a
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        let span = if hi > lo { hi - lo } else { 1.0 };
        a.mapv(|v| (v - lo) / span).insert_axis(Axis(0))
    }
    let sh = y.shape().to_vec();
    match sh.len() {
        2 => rescale(y.to_owned().into_dimensionality().unwrap_or_default()),
        3 if sh[0] == 1 || sh[0] == 3 => {
            let (lo, hi) = display;
            let span = if hi > lo { hi - lo } else { 1.0 };
            y.mapv(|v| ((v - lo) / span).clamp(0.0, 1.0))
                .into_dimensionality()
                .unwrap_or_default()
        }
        3 | 4 => {
            // (2, H, W) or (coils, 2, H, W): log RSS magnitude.
            let y4 = if sh.len() == 3 {
                y.view().insert_axis(Axis(0))
            } else {
                y.view()
            };
            let (h, w) = (y4.shape()[2], y4.shape()[3]);
            let mut rss = ndarray::Array2::<f32>::zeros((h, w));
            for coil in y4.axis_iter(Axis(0)) {
                let coil = coil.into_dimensionality::<ndarray::Ix3>().ok();
                if let Some(c) = coil {
                    for c_ch in c.axis_iter(Axis(0)) {
                        rss.zip_mut_with(&c_ch, |r, &v| *r += v * v);
                    }
                }
            }
            rescale(rss.mapv(|v| (1.0 + v.sqrt() * 1e3).ln()))
        }
        _ => Array3::zeros((1, 1, 1)),
    }
}
