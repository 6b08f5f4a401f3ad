//! `posterior sample`: unconditional generation from a prior.
//!
//! Priors (`--prior`): `gmm:demo2d` (a built-in 2-D mixture of four components),
//! `gmm:components=K,dim=D,seed=S[,cov=full|diag]` (a random mixture), each with an optional
//! `path=vp|cosine|ve|flow` (the path its denoiser is declared on; default vp), or a JSON
//! file `{"weights": [...], "means": [[...], ...], "covariances": [[D*D row-major], ...]}`.
//! Any other `--prior` is a network prior: a prior directory (`model.json` + weights) or a
//! shipped prior's name; its samples are written as a grid of images (`.png`, the prior's
//! intensity range mapped to black..white) or as `(N, C, H, W)` (`.npy`, prior units).
//!
//! `--path` runs the sampler on another path than the prior's by signal-to-noise matching
//! (e.g. a VP denoiser driven by a rectified-flow sampler). Output by extension: `.png` is a
//! scatter plot of the samples over the exact density's contours (2-D priors only), `.npy`
//! the samples `(N, D)`. For mixtures the command also prints how far the samples are from
//! the exact distribution.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ndarray::Array3;

use crate::error::{Error, Result};
use crate::prior::{Clipped, Covariance, Denoiser, Gmm, NetworkPrior, OnPath, Schedule};
use crate::sample::{self, stats, Executor};
use crate::spec::{ParamInfo, Spec};

use super::{Progress, SampleArgs};

/// The keys of a `gmm:` prior spec.
pub const GMM_PARAMS: &[ParamInfo] = &[
    ParamInfo {
        key: "preset",
        default: "demo2d",
        help: "demo2d (built-in 2-D mixture) or random",
    },
    ParamInfo {
        key: "components",
        default: "3",
        help: "random mixture: number of components",
    },
    ParamInfo {
        key: "dim",
        default: "2",
        help: "random mixture: dimension",
    },
    ParamInfo {
        key: "seed",
        default: "0",
        help: "random mixture: seed of its parameters",
    },
    ParamInfo {
        key: "cov",
        default: "full",
        help: "random mixture: full or diag covariances",
    },
    ParamInfo {
        key: "path",
        default: "vp",
        help: "the path the denoiser is declared on: vp, cosine, ve, flow",
    },
];

/// Parses a `gmm:` spec (`gmm:demo2d` is short for `gmm:preset=demo2d`; giving
/// `components` or `dim` implies `preset=random`).
pub fn parse_gmm_spec(text: &str) -> Result<Gmm> {
    let text = text.trim();
    let (family, rest) = text.split_once(':').unwrap_or((text, ""));
    if family.trim() != "gmm" {
        return Err(Error::Spec(format!(
            "unknown prior `{text}`: expected gmm:demo2d, gmm:components=K,dim=D,seed=S, or a .json mixture file"
        )));
    }
    let items: Vec<String> = rest
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains('=') {
                s.to_string()
            } else {
                format!("preset={s}")
            }
        })
        .collect();
    let spec = Spec::parse(&format!("gmm:{}", items.join(",")))?;
    let random_keys = ["components", "dim", "seed", "cov"]
        .iter()
        .any(|k| items.iter().any(|i| i.starts_with(&format!("{k}="))));
    let preset = spec.choice(
        "preset",
        &["demo2d", "random"],
        if random_keys { "random" } else { "demo2d" },
    )?;
    let components: usize = spec.get("components", 3)?;
    let dim: usize = spec.get("dim", 2)?;
    let seed: u64 = spec.get("seed", 0)?;
    let cov = spec.choice("cov", &["full", "diag"], "full")?;
    let path = spec.choice("path", &["vp", "cosine", "ve", "flow"], "vp")?;
    spec.finish(GMM_PARAMS)?;
    let gmm = match preset.as_str() {
        "demo2d" => {
            if random_keys {
                return Err(Error::Spec(
                    "gmm: components, dim, seed and cov apply to preset=random, not demo2d".into(),
                ));
            }
            Gmm::demo2d()
        }
        _ => {
            crate::limits::check_elements(
                "gmm: the covariances (components, dim, dim)",
                &[components, dim, dim],
            )?;
            Gmm::random(components, dim, seed, cov == "diag")?
        }
    };
    Ok(gmm.with_schedule(Schedule::from_name(&path)?))
}

/// Reads a mixture from JSON: `weights`, `means` (lists of D numbers), `covariances` (lists of
/// D*D numbers row-major, or of D numbers for diagonal ones), optional `path`.
pub fn read_gmm_json(path: &Path) -> Result<Gmm> {
    let text = crate::io::read_text(path)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(path, format!("not valid JSON: {e}")))?;
    let nums = |v: &serde_json::Value, what: &str| -> Result<Vec<f64>> {
        v.as_array()
            .and_then(|a| a.iter().map(|x| x.as_f64()).collect::<Option<Vec<f64>>>())
            .ok_or_else(|| Error::file(path, format!("`{what}` must be a list of numbers")))
    };
    let lists = |key: &str| -> Result<Vec<Vec<f64>>> {
        v.get(key)
            .and_then(|a| a.as_array())
            .ok_or_else(|| {
                Error::file(
                    path,
                    format!("missing `{key}`: expected a list of lists of numbers"),
                )
            })?
            .iter()
            .map(|x| nums(x, key))
            .collect()
    };
    let weights = v
        .get("weights")
        .ok_or_else(|| Error::file(path, "missing `weights`: expected a list of numbers"))
        .and_then(|w| nums(w, "weights"))?;
    let means = lists("means")?;
    let dim = means.first().map(|m| m.len()).unwrap_or(0);
    let covs = lists("covariances")?
        .into_iter()
        .map(|c| {
            if c.len() == dim && dim > 1 {
                Covariance::Diagonal(c)
            } else {
                Covariance::Full(c)
            }
        })
        .collect();
    let gmm = Gmm::new(weights, means, covs).map_err(|e| Error::file(path, e))?;
    let sched = match v.get("path").and_then(|p| p.as_str()) {
        Some(p) => Schedule::from_name(p)?,
        None => Schedule::vp_linear(),
    };
    Ok(gmm.with_schedule(sched))
}

/// A prior given by `--prior`: an exact mixture or a network.
pub enum LoadedPrior {
    Mixture(Gmm),
    Network(Box<NetworkPrior>),
}

impl LoadedPrior {
    /// The prior as a denoiser.
    pub fn denoiser(self) -> Arc<dyn Denoiser> {
        match self {
            LoadedPrior::Mixture(g) => Arc::new(g),
            LoadedPrior::Network(n) => Arc::new(*n),
        }
    }
}

/// Loads `--prior`: a `gmm:` spec, a mixture `.json` file, or a network prior (a prior
/// directory or a shipped prior's name).
pub fn load_prior(text: &str) -> Result<LoadedPrior> {
    if text.trim_start().starts_with("gmm") {
        return parse_gmm_spec(text).map(LoadedPrior::Mixture);
    }
    let p = Path::new(text);
    if crate::io::extension(p) == "json" {
        return read_gmm_json(p).map(LoadedPrior::Mixture);
    }
    NetworkPrior::open(text).map(|n| LoadedPrior::Network(Box::new(n)))
}

/// Runs `posterior sample`.
pub fn run(a: &SampleArgs) -> Result<()> {
    let ext = crate::io::extension(&a.out);
    if ext != "png" && ext != "npy" {
        return Err(Error::file(
            &a.out,
            format!("cannot write samples as `.{ext}`: expected .png (image grid or 2-D scatter plot) or .npy"),
        ));
    }
    crate::limits::check_steps("--steps", a.steps)?;
    let prior = load_prior(&a.prior)?;
    let gmm = match &prior {
        LoadedPrior::Mixture(g) => Some(g.clone()),
        LoadedPrior::Network(_) => None,
    };
    let image_prior = gmm.is_none();
    if let (Some(g), "png") = (&gmm, ext.as_str()) {
        if g.dim() != 2 {
            return Err(Error::file(
                &a.out,
                format!(
                    "a scatter plot needs a 2-D prior, this one has dimension {}; write .npy instead",
                    g.dim()
                ),
            ));
        }
    }
    let max_n = if image_prior { 4096 } else { 1_000_000 };
    if a.n == 0 || a.n > max_n {
        return Err(Error::Invalid(format!(
            "--n must be between 1 and {max_n}, got {}",
            a.n
        )));
    }
    let native = prior.denoiser();
    let native: Arc<dyn Denoiser> = if a.clip {
        Arc::new(Clipped::new(native))
    } else {
        native
    };
    let denoiser: Arc<dyn Denoiser> = match &a.path {
        Some(p) => {
            let s = Schedule::from_name(p)?;
            if s.name() == native.schedule().name() {
                native
            } else {
                Arc::new(OnPath::new(native, s))
            }
        }
        None => native,
    };
    let mut sampler = sample::by_name(&a.sampler, a.steps, a.eta)?;
    let mut bar = Progress::new(&sampler.name(), a.steps);
    let mut exec = Executor::new(a.seed).observe(&mut bar);
    if let Some(limit) = a.time_limit {
        if !(limit.is_finite() && limit > 0.0) {
            return Err(Error::Invalid(format!(
                "--time-limit must be a positive number of seconds, got {limit}"
            )));
        }
        exec = exec.time_limit(Duration::from_secs_f64(limit));
    }
    let out = exec.run(sampler.as_mut(), denoiser.as_ref(), a.n);
    bar.finish();
    let out = out?;
    let samples = out.samples.view();
    let info = denoiser.info().clone();
    match (&gmm, ext.as_str()) {
        (_, "npy") => crate::io::write_npy(&a.out, samples.view())?,
        (Some(g), _) => {
            let img = scatter_plot(g, &out.samples, 512);
            crate::io::write_image(&a.out, img.view(), (0.0, 1.0))?;
        }
        (None, _) => {
            let (lo, hi) = info.range;
            let unit = out.samples.mapv(|v| ((v - lo) / (hi - lo)).clamp(0.0, 1.0));
            let unit = unit
                .into_dimensionality::<ndarray::Ix4>()
                .map_err(|e| Error::Invalid(e.to_string()))?;
            let cols = (a.n as f64).sqrt().ceil() as usize;
            let scale = (128 / info.sample_shape[1].max(1)).clamp(1, 4);
            let img = crate::figure::image_grid(unit.view(), cols, scale);
            crate::io::write_image(&a.out, img.view(), (0.0, 1.0))?;
        }
    }
    println!(
        "{}: {} samples of {} on the {} path, {} NFE, {:.2} s{}",
        sampler.name(),
        a.n,
        info.name,
        denoiser.schedule().name(),
        out.nfe,
        out.elapsed.as_secs_f64(),
        if out.stopped_early {
            format!(" (stopped by the time limit after {} steps)", out.steps)
        } else {
            String::new()
        }
    );
    if let (Some(g), true) = (&gmm, a.n >= 2) {
        println!(
            "against the exact mixture: {}",
            stats::compare(samples, g, a.seed)
        );
    }
    println!("wrote {}", a.out.display());
    Ok(())
}

/// A `(3, size, size)` picture: the exact density as a light background with contour lines,
/// and the samples as dots. The view is the prior's bulk (means +- 3.5 sd per axis).
pub fn scatter_plot(gmm: &Gmm, samples: &ndarray::ArrayD<f32>, size: usize) -> Array3<f32> {
    let size = size.max(16);
    let means = gmm.means();
    let covs = gmm.covariances();
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for (m, c) in means.iter().zip(&covs) {
        for j in 0..2 {
            let sd = c[j * 2 + j].sqrt();
            lo[j] = lo[j].min(m[j] - 3.5 * sd);
            hi[j] = hi[j].max(m[j] + 3.5 * sd);
        }
    }
    // Square view centred on the bulk.
    let span = (hi[0] - lo[0]).max(hi[1] - lo[1]);
    let cx = 0.5 * (lo[0] + hi[0]);
    let cy = 0.5 * (lo[1] + hi[1]);
    let (x0, y1) = (cx - 0.5 * span, cy + 0.5 * span);
    let px = span / size as f64;
    let mut dens = ndarray::Array2::<f64>::zeros((size, size));
    for i in 0..size {
        for j in 0..size {
            let p = [x0 + (j as f64 + 0.5) * px, y1 - (i as f64 + 0.5) * px];
            dens[[i, j]] = gmm.log_density(&p).exp();
        }
    }
    let pmax = dens.iter().fold(0.0f64, |a, b| a.max(*b)).max(1e-300);
    let levels = [0.9, 0.7, 0.5, 0.3, 0.15, 0.05, 0.01];
    let band = |p: f64| levels.iter().filter(|l| p >= *l * pmax).count();
    let mut img = Array3::<f32>::zeros((3, size, size));
    for i in 0..size {
        for j in 0..size {
            let p = dens[[i, j]] / pmax;
            let b = band(dens[[i, j]]);
            let edge = (j + 1 < size && band(dens[[i, j + 1]]) != b)
                || (i + 1 < size && band(dens[[i + 1, j]]) != b);
            let (r, g, bl) = if edge {
                (0.35, 0.35, 0.45)
            } else {
                // white to light blue with density
                (1.0 - 0.35 * p, 1.0 - 0.2 * p, 1.0)
            };
            img[[0, i, j]] = r as f32;
            img[[1, i, j]] = g as f32;
            img[[2, i, j]] = bl as f32;
        }
    }
    let n = samples.shape()[0];
    let alpha = if n > 2000 { 0.35 } else { 0.7 };
    for k in 0..n {
        let (sx, sy) = (samples[[k, 0]] as f64, samples[[k, 1]] as f64);
        let j = ((sx - x0) / px).floor();
        let i = ((y1 - sy) / px).floor();
        if !(j >= 0.0 && i >= 0.0 && j < size as f64 && i < size as f64) {
            continue;
        }
        let (i, j) = (i as usize, j as usize);
        for di in 0..3usize {
            for dj in 0..3usize {
                let (ii, jj) = ((i + di).saturating_sub(1), (j + dj).saturating_sub(1));
                if ii < size && jj < size {
                    let c = [0.85f32, 0.25, 0.1];
                    for ch in 0..3 {
                        let v = &mut img[[ch, ii, jj]];
                        *v = (1.0 - alpha) * *v + alpha * c[ch];
                    }
                }
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmm_specs() {
        assert_eq!(parse_gmm_spec("gmm:demo2d").unwrap().dim(), 2);
        assert_eq!(parse_gmm_spec("gmm").unwrap().components(), 4);
        let g = parse_gmm_spec("gmm:components=5,dim=7,seed=3,cov=diag,path=flow").unwrap();
        assert_eq!(
            (g.components(), g.dim(), g.schedule().name()),
            (5, 7, "flow")
        );
        let e = parse_gmm_spec("gmm:dim=3,colour=red")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `colour`"), "{e}");
        assert!(parse_gmm_spec("gmm:demo2d,dim=3").is_err());
        assert!(parse_gmm_spec("gmm:path=sideways").is_err());
        assert!(parse_gmm_spec("gmm:dim=0").is_err());
        assert!(load_prior("unet.safetensors").is_err());
    }

    #[test]
    fn scatter_plot_marks_samples_and_contours() {
        let g = Gmm::demo2d();
        let mut rng = posterior_operators::rng::seeded(0, "t");
        let (x, _) = g.sample(200, &mut rng);
        let img = scatter_plot(&g, &x, 128);
        assert_eq!(img.shape(), &[3, 128, 128]);
        // Some pixels are sample-coloured (red channel well above blue).
        let red = (0..128 * 128)
            .filter(|k| img[[0, k / 128, k % 128]] > img[[2, k / 128, k % 128]] + 0.2)
            .count();
        assert!(red > 100, "{red}");
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}
