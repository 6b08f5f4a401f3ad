//! Suite files (`problems/*.toml`): what they hold and how they are read.
//!
//! A suite names its images (one or more data sources, cut to one size and one intensity
//! range), the tasks (operator spec + noise spec), the methods (classical baselines and
//! posterior samplers with their settings), the seeds, and optionally a volume mode.
//! Unknown keys anywhere are errors. See `problems/README.md` for the full reference.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One benchmark suite, as written in its TOML file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Short name, used in tables and file names.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The prior of the sampler methods: a shipped prior's name or a prior directory
    /// (relative to the suite file). Needed only when the suite has sampler methods.
    #[serde(default)]
    pub prior: Option<String>,
    /// The image units `[lo, hi]`: operators and noise act on images in this range, the
    /// samplers map it onto the prior's range, PSNR/SSIM use `hi - lo` as data range, and
    /// PNGs show it. A dataset's model range `[-1, 1]` is mapped onto it.
    pub range: [f32; 2],
    /// Seeds; every (image, task, method) runs once per seed.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// Where the images come from, in order; the suite's images are their concatenation.
    pub data: Vec<DataSource>,
    /// Degradations: each image is measured by each task.
    pub tasks: Vec<Task>,
    /// Reconstruction methods, run on every task they apply to.
    pub methods: Vec<MethodSpec>,
    /// Volume mode: consecutive images form volumes of `slices` slices.
    #[serde(default)]
    pub volume: Option<VolumeSpec>,
    /// Equal-cost comparison: every sampler's steps are set so that it spends this much
    /// network work per image (evaluations of the network on one image, a VJP counted 2,
    /// particles and samples multiplied; see `posterior::sample::posterior::work_per_step`),
    /// overriding its `steps`.
    #[serde(default)]
    pub work: Option<f64>,
    /// Validation images for `posterior tune` (same form as `[[data]]`; never scored by
    /// `bench`). A dataset source may read the `validation` split or disjoint indices of
    /// the `test` split.
    #[serde(default)]
    pub validation: Vec<DataSource>,
    /// Set by `posterior tune` on the copy of the suite it scores: its `data` are the
    /// validation sources.
    #[serde(skip)]
    pub scoring_validation: bool,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// A source of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// Short name; image ids are `NAME-INDEX` (dataset) or `NAME-FILESTEM` (files).
    pub name: String,
    /// `dataset` (a directory written by `notebooks/data.py`: manifest.json + SPLIT.npy)
    /// or `files` (images read as `posterior degrade` reads them: DICOM, NIfTI, PNG, .npy).
    pub kind: String,
    /// The dataset directory, or the directory the `files` are in. `~` and `$VAR` are
    /// expanded; a relative path is taken from the suite file's directory.
    pub path: String,
    /// The command that makes the data, printed when `path` is missing.
    #[serde(default)]
    pub recipe: Option<String>,
    /// Dataset: the split to read (only `test` is allowed in a suite: hold-out discipline).
    #[serde(default)]
    pub split: Option<String>,
    /// Dataset: the indices of the images to use, in order.
    #[serde(default)]
    pub indices: Vec<usize>,
    /// Files: the file names, in order.
    #[serde(default)]
    pub files: Vec<String>,
    /// Resample every image to `size x size` (a non-square image is first centre-cropped
    /// to a square): area averaging by an integer factor, else bilinear.
    #[serde(default)]
    pub size: Option<usize>,
    /// Clip the values to `[lo, hi]` (image units) after resampling.
    #[serde(default)]
    pub clip: Option<[f32; 2]>,
}

/// A degradation: an operator spec and a noise spec (`posterior ops` lists both).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub name: String,
    pub op: String,
    #[serde(default = "default_noise")]
    pub noise: String,
    /// MRI only: reconstruct with coil maps estimated from each simulated measurement
    /// (`espirit` or `walsh`) instead of the true maps the measurement was simulated with.
    /// ESPIRiT needs a fully sampled centre larger than its 6 x 6 kernel.
    #[serde(default)]
    pub maps: Option<String>,
}

fn default_noise() -> String {
    "none".into()
}

/// A method: either a classical `method` or a posterior `sampler`, with its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSpec {
    /// The label in tables (unique in the suite).
    pub name: String,
    /// Classical: adjoint | cg | tv | fbp | gd | hio.
    #[serde(default)]
    pub method: Option<String>,
    /// Posterior sampler: dps | reddiff | flair | dds | smc | tds | fps, and in volume mode
    /// `dds-volume` (DDS with the slice-axis TV step, one joint run per volume).
    #[serde(default)]
    pub sampler: Option<String>,
    /// Only these tasks (default: all).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Classical: iterations; sampler: not allowed (use `steps`).
    #[serde(default)]
    pub iters: Option<usize>,
    /// Classical: Tikhonov (cg) or relative TV weight (tv).
    #[serde(default)]
    pub lambda: Option<f32>,
    /// Classical: FBP filter.
    #[serde(default)]
    pub filter: Option<String>,
    /// Classical: nonnegativity (tv, gd).
    #[serde(default)]
    pub nonneg: bool,
    /// Sampler: denoiser steps.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Sampler: SMC particles.
    #[serde(default)]
    pub particles: Option<usize>,
    /// Sampler: independent posterior samples averaged (default 1).
    #[serde(default)]
    pub samples: Option<usize>,
    /// dds-volume: ADMM penalty of the slice-axis TV step.
    #[serde(default)]
    pub rho: Option<f64>,
    /// dds-volume: slice-axis TV weight.
    #[serde(default)]
    pub tv_lambda: Option<f64>,
    /// Sampler: its other settings by name, e.g. `set = { zeta = 0.5 }` (the keys of
    /// `posterior reconstruct --set`; checked against the sampler before any work).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub set: crate::sample::SettingValues,
    /// Per-task settings of a tuned row (`posterior tune`'s `SUITE.tuned.toml`): sampler
    /// settings merged over `set`, and a classical `lambda`. Not part of the suite file.
    #[serde(skip)]
    pub per_task: std::collections::BTreeMap<String, (crate::sample::SettingValues, Option<f32>)>,
}

/// Volume mode settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// Slices per volume: images `k*slices .. (k+1)*slices` form volume `k`.
    pub slices: usize,
}

/// What a method is, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodKind {
    Classical(crate::recon::Method),
    Sampler,
    /// DDS on a whole volume.
    DdsVolume,
}

impl MethodSpec {
    /// Checks the method's fields and returns what it is.
    pub fn kind(&self) -> Result<MethodKind> {
        let who = format!("method `{}`", self.name);
        match (&self.method, &self.sampler) {
            (Some(m), None) => {
                for (given, key) in [
                    (self.steps.is_some(), "steps"),
                    (self.particles.is_some(), "particles"),
                    (self.samples.is_some(), "samples"),
                    (self.rho.is_some(), "rho"),
                    (self.tv_lambda.is_some(), "tv_lambda"),
                    (!self.set.is_empty(), "set"),
                ] {
                    if given {
                        return Err(Error::Invalid(format!(
                            "{who}: `{key}` is a sampler setting, but this is the classical method `{m}`"
                        )));
                    }
                }
                Ok(MethodKind::Classical(
                    m.parse()
                        .map_err(|e| Error::Invalid(format!("{who}: {e}")))?,
                ))
            }
            (None, Some(s)) => {
                for (given, key) in [
                    (self.iters.is_some(), "iters"),
                    (self.lambda.is_some(), "lambda"),
                    (self.filter.is_some(), "filter"),
                    (self.nonneg, "nonneg"),
                ] {
                    if given {
                        return Err(Error::Invalid(format!(
                            "{who}: `{key}` is a classical-method setting, but this is the sampler `{s}`"
                        )));
                    }
                }
                crate::sample::settings::settings_of(s)
                    .and_then(|_| crate::sample::settings::check(s, &self.set))
                    .map_err(|e| Error::Invalid(format!("{who}: {e}")))?;
                if s == "dds-volume" {
                    if self.particles.is_some() || self.samples.is_some() {
                        return Err(Error::Invalid(format!(
                            "{who}: dds-volume takes steps, rho and tv_lambda, not particles or samples"
                        )));
                    }
                    return Ok(MethodKind::DdsVolume);
                }
                if self.rho.is_some() || self.tv_lambda.is_some() {
                    return Err(Error::Invalid(format!(
                        "{who}: rho and tv_lambda belong to the sampler dds-volume, not `{s}`"
                    )));
                }
                let known = crate::sample::posterior::POSTERIOR_SAMPLERS;
                if !known.contains(&s.as_str()) {
                    return Err(Error::Invalid(format!(
                        "{who}: unknown sampler `{s}`: expected one of {}, dds-volume",
                        known.join(", ")
                    )));
                }
                Ok(MethodKind::Sampler)
            }
            (Some(_), Some(_)) => Err(Error::Invalid(format!(
                "{who}: give either `method` (classical) or `sampler`, not both"
            ))),
            (None, None) => Err(Error::Invalid(format!(
                "{who}: give `method = \"tv\"` (classical) or `sampler = \"dps\"`"
            ))),
        }
    }

    /// Whether the method runs on task `task`.
    pub fn applies_to(&self, task: &str) -> bool {
        self.tasks.is_empty() || self.tasks.iter().any(|t| t == task)
    }
}

/// A suite read from a file, with the directory its relative paths start from.
#[derive(Clone, Debug)]
pub struct SuiteFile {
    pub suite: Suite,
    /// The file it was read from.
    pub path: PathBuf,
    /// The file's text (recorded in the output directory to detect a changed suite).
    pub text: String,
}

impl SuiteFile {
    /// Reads and parses a suite file (syntax and field names; the plan checks the
    /// rest before any work).
    pub fn read(path: &Path) -> Result<SuiteFile> {
        let text = crate::io::read_text(path)?;
        let suite = Self::parse(&text).map_err(|e| Error::file(path, e))?;
        Ok(SuiteFile {
            suite,
            path: path.to_path_buf(),
            text,
        })
    }

    /// Parses a suite from TOML text; the error is the parser's message (with line and
    /// column) or the first inconsistency found.
    pub fn parse(text: &str) -> std::result::Result<Suite, String> {
        let suite: Suite =
            toml::from_str(text).map_err(|e| format!("not a valid suite file: {e}"))?;
        suite.check_shape().map_err(|e| e.to_string())?;
        Ok(suite)
    }

    /// The directory relative paths in the suite start from.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

impl Suite {
    /// Checks what can be checked without touching files: names, uniqueness, ranges,
    /// method kinds, task references, volume settings.
    pub fn check_shape(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.name.trim().is_empty() || !is_label(&self.name) {
            return bad(format!(
                "suite name `{}`: expected letters, digits, `-`, `_` or `.`",
                self.name
            ));
        }
        let [lo, hi] = self.range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return bad(format!(
                "range {:?}: expected [lo, hi] with lo < hi",
                self.range
            ));
        }
        if self.seeds.is_empty() {
            return bad("seeds is empty: give at least one seed".into());
        }
        if self.data.is_empty() || self.tasks.is_empty() || self.methods.is_empty() {
            return bad(
                "a suite needs at least one [[data]], one [[tasks]] and one [[methods]]".into(),
            );
        }
        unique("data source", self.data.iter().map(|d| d.name.as_str()))?;
        unique("task", self.tasks.iter().map(|t| t.name.as_str()))?;
        unique("method", self.methods.iter().map(|m| m.name.as_str()))?;
        unique(
            "seed",
            self.seeds
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        )?;
        for d in &self.data {
            match d.kind.as_str() {
                "dataset" => {
                    if d.indices.is_empty() || !d.files.is_empty() {
                        return bad(format!(
                            "data `{}`: a dataset source takes `indices` (and no `files`)",
                            d.name
                        ));
                    }
                    let split = d.split.as_deref().unwrap_or("test");
                    if split != "test" && !(self.scoring_validation && split == "validation") {
                        return bad(format!(
                            "data `{}`: split `{split}`: suites score held-out images only; use split = \"test\"",
                            d.name
                        ));
                    }
                }
                "files" => {
                    if d.files.is_empty() || !d.indices.is_empty() || d.split.is_some() {
                        return bad(format!(
                            "data `{}`: a files source takes `files` (and no `indices` or `split`)",
                            d.name
                        ));
                    }
                }
                other => {
                    return bad(format!(
                        "data `{}`: kind `{other}`: expected `dataset` or `files`",
                        d.name
                    ))
                }
            }
            if d.size == Some(0) {
                return bad(format!("data `{}`: size must be at least 1", d.name));
            }
            if let Some(n) = d.size {
                crate::limits::check_elements(
                    &format!("data `{}`: size {n} x {n}", d.name),
                    &[n, n],
                )?;
            }
            if let Some([a, b]) = d.clip {
                if !(a.is_finite() && b.is_finite() && a < b) {
                    return bad(format!(
                        "data `{}`: clip [{a}, {b}]: expected lo < hi",
                        d.name
                    ));
                }
            }
        }
        self.check_validation()?;
        if let Some(w) = self.work {
            if !(w.is_finite() && w >= 1.0) {
                return bad(format!(
                    "work = {w}: expected the network work per image, a number >= 1"
                ));
            }
        }
        for m in &self.methods {
            let kind = m.kind()?;
            for (key, v) in [
                ("iters", m.iters),
                ("steps", m.steps),
                ("particles", m.particles),
                ("samples", m.samples),
            ] {
                if let Some(n) = v {
                    crate::limits::check_steps(&format!("method `{}`: {key}", m.name), n)?;
                }
            }
            if m.particles.is_some_and(|p| p < 2) {
                return bad(format!(
                    "method `{}`: particles must be at least 2 (an SMC ensemble resamples)",
                    m.name
                ));
            }
            for t in &m.tasks {
                if !self.tasks.iter().any(|x| &x.name == t) {
                    return bad(format!(
                        "method `{}`: unknown task `{t}`: the suite's tasks are {}",
                        m.name,
                        self.tasks
                            .iter()
                            .map(|x| x.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            if kind == MethodKind::DdsVolume && self.volume.is_none() {
                return bad(format!(
                    "method `{}`: dds-volume reconstructs volumes; add a [volume] section (slices = N)",
                    m.name
                ));
            }
        }
        if let Some(v) = &self.volume {
            if v.slices < 2 {
                return bad(format!(
                    "volume: slices = {}: expected at least 2",
                    v.slices
                ));
            }
        }
        if self.prior.is_none()
            && self
                .methods
                .iter()
                .any(|m| !matches!(m.kind(), Ok(MethodKind::Classical(_))))
        {
            return bad("the suite has sampler methods but names no `prior`".into());
        }
        Ok(())
    }
}

impl Suite {
    /// Checks the `[[validation]]` sources: datasets (split `test` or `validation`) or files,
    /// named apart from the data sources, and no image that the suite scores.
    fn check_validation(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        for v in &self.validation {
            if self.data.iter().any(|d| d.name == v.name) {
                return bad(format!(
                    "validation `{}`: a data source has the same name; give it its own",
                    v.name
                ));
            }
            let split = v.split.as_deref().unwrap_or("test");
            match v.kind.as_str() {
                "dataset" if v.indices.is_empty() => {
                    return bad(format!("validation `{}`: give `indices`", v.name))
                }
                "dataset" if !matches!(split, "test" | "validation") => {
                    return bad(format!(
                        "validation `{}`: split `{split}`: expected `validation` or `test`",
                        v.name
                    ))
                }
                "dataset" | "files" => {}
                other => {
                    return bad(format!(
                        "validation `{}`: kind `{other}`: expected `dataset` or `files`",
                        v.name
                    ))
                }
            }
            for d in &self.data {
                let same_source = d.path == v.path
                    && d.kind == v.kind
                    && d.split.as_deref().unwrap_or("test") == split;
                if !same_source {
                    continue;
                }
                if let Some(i) = d.indices.iter().find(|i| v.indices.contains(i)) {
                    return bad(format!(
                        "validation `{}`: index {i} is also scored by data `{}`: validation images must never be test images",
                        v.name, d.name
                    ));
                }
                if let Some(f) = d.files.iter().find(|f| v.files.contains(f)) {
                    return bad(format!(
                        "validation `{}`: file `{f}` is also scored by data `{}`",
                        v.name, d.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Whether `s` is usable in a file name: letters, digits, `-`, `_`, `.`.
pub fn is_label(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for n in names {
        if !is_label(n) {
            return Err(Error::Invalid(format!(
                "{what} name `{n}`: expected letters, digits, `-`, `_` or `.`"
            )));
        }
        if !seen.insert(n) {
            return Err(Error::Invalid(format!("{what} `{n}` is given twice")));
        }
    }
    Ok(())
}

/// Expands `~` at the start and `$VAR` / `${VAR}` anywhere; a relative result is joined to
/// `base`. An unset variable is an error naming it.
pub fn expand_path(text: &str, base: &Path) -> Result<PathBuf> {
    let mut out = String::new();
    let mut rest = text;
    if let Some(r) = rest.strip_prefix('~') {
        if r.is_empty() || r.starts_with('/') {
            let home = std::env::var("HOME").map_err(|_| {
                Error::Invalid(format!("path `{text}` starts with ~ but HOME is not set"))
            })?;
            out.push_str(&home);
            rest = r;
        }
    }
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(b) = after.strip_prefix('{') {
            let end = b.find('}').ok_or_else(|| {
                Error::Invalid(format!("path `{text}`: `${{` without a closing `}}`"))
            })?;
            (&b[..end], &b[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        let value = std::env::var(name).map_err(|_| {
            Error::Invalid(format!(
                "path `{text}` uses ${name}, which is not set in the environment"
            ))
        })?;
        out.push_str(&value);
        rest = tail;
    }
    out.push_str(rest);
    let p = PathBuf::from(out);
    Ok(if p.is_absolute() { p } else { base.join(p) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
range = [0.0, 1.0]
[[data]]
name = "a"
kind = "files"
path = "."
files = ["x.png"]
[[tasks]]
name = "blur"
op = "blur:sigma=1"
[[methods]]
name = "cg"
method = "cg"
"#;

    #[test]
    fn minimal_suite_parses_with_defaults() {
        let s = SuiteFile::parse(MINIMAL).unwrap();
        assert_eq!(s.seeds, vec![0]);
        assert_eq!(s.tasks[0].noise, "none");
        assert_eq!(
            s.methods[0].kind().unwrap(),
            MethodKind::Classical(crate::recon::Method::Cg)
        );
    }

    #[test]
    fn bad_suites_name_the_problem() {
        let cases = [
            (
                MINIMAL.replace("method = \"cg\"", "method = \"magic\""),
                "unknown method `magic`",
            ),
            (
                MINIMAL.replace("method = \"cg\"", "sampler = \"magic\""),
                "unknown sampler `magic`",
            ),
            (
                MINIMAL.replace("method = \"cg\"", "sampler = \"dps\""),
                "names no `prior`",
            ),
            (
                MINIMAL.replace("kind = \"files\"", "kind = \"web\""),
                "kind `web`",
            ),
            (
                MINIMAL.replace("range = [0.0, 1.0]", "range = [1.0, 0.0]"),
                "lo < hi",
            ),
            (
                MINIMAL.replace("op = ", "bogus = 1\nop = "),
                "unknown field `bogus`",
            ),
            (
                MINIMAL.replace("method = \"cg\"", "method = \"cg\"\nsteps = 5"),
                "`steps` is a sampler setting",
            ),
            (
                MINIMAL.replace("method = \"cg\"", "method = \"cg\"\ntasks = [\"nope\"]"),
                "unknown task `nope`",
            ),
            (
                MINIMAL
                    .replace("name = \"t\"", "name = \"t\"\nprior = \"p\"")
                    .replace("method = \"cg\"", "sampler = \"dds-volume\""),
                "add a [volume] section",
            ),
            (
                MINIMAL.replace("method = \"cg\"", "method = \"cg\"\nset = { zeta = 1 }"),
                "`set` is a sampler setting",
            ),
            (
                MINIMAL
                    .replace("name = \"t\"", "name = \"t\"\nprior = \"p\"")
                    .replace("method = \"cg\"", "sampler = \"dps\"\nset = { gamma = 1 }"),
                "dps has no setting `gamma`",
            ),
            (
                MINIMAL
                    .replace("name = \"t\"", "name = \"t\"\nprior = \"p\"")
                    .replace("method = \"cg\"", "sampler = \"dds\"\nset = { cg_iters = 2.5 }"),
                "expected an integer",
            ),
            (
                MINIMAL.replace("range = [0.0, 1.0]", "range = [0.0, 1.0]\nwork = 0"),
                "work = 0",
            ),
            (
                format!(
                    "{MINIMAL}[[validation]]\nname = \"v\"\nkind = \"files\"\npath = \".\"\nfiles = [\"x.png\"]\n"
                ),
                "file `x.png` is also scored",
            ),
            (
                format!(
                    "{MINIMAL}[[validation]]\nname = \"a\"\nkind = \"files\"\npath = \".\"\nfiles = [\"y.png\"]\n"
                ),
                "a data source has the same name",
            ),
        ];
        for (text, want) in &cases {
            let e = SuiteFile::parse(text).unwrap_err();
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
    }

    #[test]
    fn paths_expand_home_variables_and_relative_bases() {
        std::env::set_var("POSTERIOR_BENCH_TEST_DIR", "/data/x");
        let base = Path::new("/suites");
        assert_eq!(
            expand_path("${POSTERIOR_BENCH_TEST_DIR}/sets", base).unwrap(),
            PathBuf::from("/data/x/sets")
        );
        assert_eq!(
            expand_path("$POSTERIOR_BENCH_TEST_DIR/a", base).unwrap(),
            PathBuf::from("/data/x/a")
        );
        assert_eq!(
            expand_path("rel/p", base).unwrap(),
            PathBuf::from("/suites/rel/p")
        );
        let e = expand_path("$POSTERIOR_BENCH_SURELY_UNSET/a", base).unwrap_err();
        assert!(
            e.to_string().contains("POSTERIOR_BENCH_SURELY_UNSET"),
            "{e}"
        );
    }
}
