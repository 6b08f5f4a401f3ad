//! `posterior tune`: each method's key settings chosen on a suite's validation images (its
//! `[[validation]]` sources, never its test images) by maximising the mean PSNR, with argmin:
//! Brent's method for one real setting and Nelder-Mead for several, both on a log10 scale
//! within the setting's search range ([`crate::sample::settings::SettingSpec::search`]), and
//! a small grid for integer settings. This is how InverseBench compares methods: every
//! method gets the same tuning budget on held-out validation data, then is scored once on
//! the test set.
//!
//! The budget counts evaluations per (method, task): one evaluation reconstructs every
//! validation image once with one setting. The first evaluation is the defaults (so a
//! budget of 1 only scores them); the optimiser gets the rest. The result, with the date,
//! the split and the scores, goes to `SUITE.tuned.toml` beside the suite (the suite file
//! itself stays untouched: editing it would make resumed bench runs refuse it), where
//! `posterior bench` finds it and adds a tuned row per method.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use argmin::core::observers::{Observe, ObserverMode};
use argmin::core::{CostFunction, Executor, State, KV};
use argmin::solver::brent::BrentOpt;
use argmin::solver::neldermead::NelderMead;
use serde::{Deserialize, Serialize};

use super::run::{self, Plan, RunOptions};
use super::suite::{MethodKind, MethodSpec, SuiteFile};
use crate::error::{Error, Result};
use crate::recon::Method;
use crate::sample::settings::{self, Kind, SettingValue, SettingValues};

/// What to tune.
#[derive(Clone, Debug)]
pub struct TuneRequest {
    /// Method labels from the suite.
    pub methods: Vec<String>,
    /// `method:key` pairs to tune; `None`: each method's default keys ([`default_keys`]).
    pub params: Option<Vec<(String, String)>>,
    /// Only these tasks (all when `None`).
    pub tasks: Option<Vec<String>>,
    /// Evaluations per (method, task), at least 1.
    pub budget: usize,
}

/// The tuned settings of a suite, as written to `SUITE.tuned.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunedFile {
    pub suite: String,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    /// The validation images, by id.
    pub split: Vec<String>,
    /// Evaluations per (method, task).
    pub budget: usize,
    pub tuned: Vec<Tuned>,
}

/// One method's tuned settings for one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuned {
    pub method: String,
    pub task: String,
    /// Sampler settings (as `set = {...}` in a suite).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: SettingValues,
    /// Classical methods: the tuned `lambda`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f32>,
    /// Mean validation PSNR (dB) with the tuned and with the default settings.
    pub score: f64,
    pub default_score: f64,
    pub evaluations: usize,
}

/// A tunable setting of a method: its key, whether it is an integer, its search range and
/// its default.
#[derive(Clone, Debug, PartialEq)]
struct Param {
    key: String,
    integer: bool,
    range: (f64, f64),
}

/// The path of the tuned-settings file of a suite: `DIR/NAME.tuned.toml` beside `NAME.toml`.
pub fn tuned_path(suite_path: &Path) -> PathBuf {
    let stem = suite_path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "suite".into());
    suite_path.with_file_name(format!("{stem}.tuned.toml"))
}

/// Reads a tuned-settings file (absent: `None`).
pub fn read_tuned(path: &Path) -> Result<Option<(TunedFile, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::file(path, format!("cannot read: {e}"))),
    };
    let f: TunedFile = toml::from_str(&text)
        .map_err(|e| Error::file(path, format!("not a tuned-settings file: {e}")))?;
    Ok(Some((f, text)))
}

/// The keys tuned by default: TV's and CG's `lambda`, DPS's `zeta`, DDS's `gamma` and
/// `cg_iters`, RED-diff's `lambda` and `lr`, FLAIR's `weight`, SMC's `twist_scale`.
pub fn default_keys(m: &MethodSpec) -> Vec<&'static str> {
    match (m.method.as_deref(), m.sampler.as_deref()) {
        (Some("tv") | Some("cg"), _) => vec!["lambda"],
        (_, Some("dps")) => vec!["zeta"],
        (_, Some("dds")) => vec!["gamma", "cg_iters"],
        (_, Some("reddiff")) => vec!["lambda", "lr"],
        (_, Some("flair")) => vec!["weight"],
        (_, Some("smc" | "tds" | "fps")) => vec!["twist_scale"],
        _ => vec![],
    }
}

/// The search parameter `key` of method `m`, or an error naming what the method has.
fn param_of(m: &MethodSpec, key: &str) -> Result<Param> {
    let who = &m.name;
    match (m.kind()?, m.sampler.as_deref()) {
        (MethodKind::Classical(c @ (Method::Tv | Method::Cg)), _) => {
            if key != "lambda" {
                return Err(Error::Invalid(format!(
                    "tune: method `{who}` ({c}) has no setting `{key}`: it tunes lambda"
                )));
            }
            let range = if c == Method::Tv {
                (1e-5, 1e-1)
            } else {
                (1e-4, 1e2)
            };
            Ok(Param {
                key: key.into(),
                integer: false,
                range,
            })
        }
        (MethodKind::Classical(c), _) => Err(Error::Invalid(format!(
            "tune: method `{who}` ({c}) has no tunable setting: tune tv, cg or a sampler"
        ))),
        (_, Some(s)) => {
            let spec = settings::spec(s, key)
                .map_err(|e| Error::Invalid(format!("tune: method `{who}`: {e}")))?;
            let range = spec.search.ok_or_else(|| {
                Error::Invalid(format!(
                    "tune: method `{who}`: `{key}` is not a tunable setting of {s} (it has no search range)"
                ))
            })?;
            Ok(Param {
                key: key.into(),
                integer: matches!(spec.kind, Kind::Integer { .. }),
                range,
            })
        }
        (_, None) => Err(Error::Invalid(format!(
            "tune: method `{who}` has no sampler"
        ))),
    }
}

/// The checked work of a request: per method, its parameters.
struct Checked {
    methods: Vec<(usize, Vec<Param>)>,
    tasks: Vec<usize>,
}

fn check_request(file: &SuiteFile, req: &TuneRequest) -> Result<Checked> {
    let suite = &file.suite;
    if req.budget == 0 {
        return Err(Error::Invalid(
            "tune: --budget must be at least 1 (evaluations per method and task)".into(),
        ));
    }
    if req.methods.is_empty() {
        return Err(Error::Invalid("tune: give --methods".into()));
    }
    if suite.validation.is_empty() {
        return Err(Error::Invalid(format!(
            "tune: suite `{}` has no [[validation]] images (an empty validation split): add a [[validation]] source (see problems/README.md); tuning never uses test images",
            suite.name
        )));
    }
    if let Some(p) = &req.params {
        for (m, k) in p {
            if !req.methods.contains(m) {
                return Err(Error::Invalid(format!(
                    "tune: --params names `{m}:{k}`, but `{m}` is not in --methods"
                )));
            }
        }
    }
    let mut methods = Vec::new();
    for name in &req.methods {
        let mi = suite
            .methods
            .iter()
            .position(|m| &m.name == name)
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "tune: unknown method `{name}`: the suite's methods are {}",
                    suite
                        .methods
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        let m = &suite.methods[mi];
        let keys: Vec<String> = match &req.params {
            Some(p) => p
                .iter()
                .filter(|(mm, _)| mm == name)
                .map(|(_, k)| k.clone())
                .collect(),
            None => default_keys(m).iter().map(|k| k.to_string()).collect(),
        };
        if keys.is_empty() {
            return Err(Error::Invalid(format!(
                "tune: method `{name}` has no setting to tune{}",
                if req.params.is_some() {
                    " in --params"
                } else {
                    ""
                }
            )));
        }
        let params = keys
            .iter()
            .map(|k| param_of(m, k))
            .collect::<Result<Vec<_>>>()?;
        methods.push((mi, params));
    }
    let tasks = match &req.tasks {
        None => (0..suite.tasks.len()).collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                suite
                    .tasks
                    .iter()
                    .position(|t| &t.name == n)
                    .ok_or_else(|| Error::Invalid(format!("tune: unknown task `{n}`")))
            })
            .collect::<Result<Vec<_>>>()?,
    };
    Ok(Checked { methods, tasks })
}

/// The suite with its validation sources as the scored data (a plan over them scores only
/// validation images).
fn validation_suite(file: &SuiteFile) -> SuiteFile {
    let mut v = file.clone();
    v.suite.data = std::mem::take(&mut v.suite.validation);
    v.suite.scoring_validation = true;
    v.suite.volume = None;
    v.suite.work = file.suite.work;
    v
}

/// Progress of one (method, task) search on stderr, through argmin's observer interface.
struct Progress {
    label: String,
}

impl<I: State<Float = f64>> Observe<I> for Progress {
    fn observe_iter(
        &mut self,
        state: &I,
        _kv: &KV,
    ) -> std::result::Result<(), argmin::core::Error> {
        eprintln!(
            "tune {}: iteration {}, best mean PSNR {:.2} dB",
            self.label,
            state.get_iter(),
            -state.get_best_cost()
        );
        Ok(())
    }
}

/// Scores settings on the validation images: minus the mean PSNR; counts evaluations and
/// refuses more than the budget (argmin then stops with an error the search handles).
struct Score<'a> {
    plan: std::cell::RefCell<Plan>,
    mi: usize,
    task: usize,
    params: &'a [Param],
    base: MethodSpec,
    /// Evaluations allowed so far (raised grid point by grid point up to the budget).
    cap: std::cell::Cell<usize>,
    /// The integer parameters' current grid point.
    ints: std::cell::RefCell<Vec<f64>>,
    log: std::cell::RefCell<Vec<(Vec<f64>, f64)>>,
}

impl Score<'_> {
    fn spent(&self) -> usize {
        self.log.borrow().len()
    }

    fn fixed_ints(&self) -> Vec<f64> {
        self.ints.borrow().clone()
    }

    /// `-mean PSNR` at the parameter values `v` (natural units).
    fn eval(&self, v: &[f64]) -> Result<f64> {
        if self.spent() >= self.cap.get() {
            return Err(Error::Interrupted("the tuning budget is spent".into()));
        }
        let mut m = self.base.clone();
        for (p, &x) in self.params.iter().zip(v) {
            apply(&mut m, &p.key, if p.integer { x.round() } else { x });
        }
        let mut plan = self.plan.borrow_mut();
        plan.file.suite.methods[self.mi] = m;
        let psnr = run::mean_psnr(&plan, self.task, self.mi)?;
        drop(plan);
        let cost = if psnr.is_finite() { -psnr } else { 1e6 };
        self.log.borrow_mut().push((v.to_vec(), cost));
        Ok(cost)
    }

    fn best(&self) -> Option<(Vec<f64>, f64)> {
        self.log
            .borrow()
            .iter()
            .cloned()
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }
}

/// Sets `key` of a method spec to `x`.
fn apply(m: &mut MethodSpec, key: &str, x: f64) {
    if m.method.is_some() {
        m.lambda = Some(x as f32);
    } else {
        m.set.insert(key.to_string(), SettingValue::Number(x));
    }
}

/// The current value of `key` of a method (its default when unset).
fn current(m: &MethodSpec, p: &Param, family: &str) -> f64 {
    if m.method.is_some() {
        return m.lambda.map_or(
            if m.method.as_deref() == Some("tv") {
                crate::solve::TvOptions::default().lambda as f64
            } else {
                1e-2
            },
            |l| l as f64,
        );
    }
    if let Some(SettingValue::Number(v)) = m.set.get(&p.key) {
        return *v;
    }
    let s = m.sampler.as_deref().unwrap_or_default();
    match (s, p.key.as_str()) {
        ("dps", "zeta") => crate::sample::default_zeta(family),
        ("dds", "gamma") => crate::sample::DdsSettings::default().gamma,
        ("dds", "cg_iters") => crate::sample::DdsSettings::default().cg_iters as f64,
        ("reddiff", "lambda") => crate::sample::RedDiffSettings::default().lambda,
        ("reddiff", "lr") => crate::sample::RedDiffSettings::default().lr,
        ("flair", "weight") => crate::sample::FlairSettings::default().lambda_scale,
        _ => 1.0,
    }
    .clamp(p.range.0, p.range.1)
}

/// Brent's view: one real parameter in log10.
struct Line<'a, 'b>(&'a Score<'b>);

impl CostFunction for Line<'_, '_> {
    type Param = f64;
    type Output = f64;
    fn cost(&self, x: &f64) -> std::result::Result<f64, argmin::core::Error> {
        let mut v = vec![10f64.powf(*x)];
        v.extend(self.0.fixed_ints());
        self.0
            .eval(&v)
            .map_err(|e| argmin::core::Error::msg(e.to_string()))
    }
}

/// Nelder-Mead's view: several real parameters in log10.
struct Simplex<'a, 'b>(&'a Score<'b>);

impl CostFunction for Simplex<'_, '_> {
    type Param = Vec<f64>;
    type Output = f64;
    fn cost(&self, x: &Vec<f64>) -> std::result::Result<f64, argmin::core::Error> {
        let mut v: Vec<f64> = x.iter().map(|l| 10f64.powf(*l)).collect();
        v.extend(self.0.fixed_ints());
        self.0
            .eval(&v)
            .map_err(|e| argmin::core::Error::msg(e.to_string()))
    }
}

/// A small grid for an integer setting within `range`: 1, 2, 5, 10, 20, 50, ... clipped.
fn int_grid(range: (f64, f64)) -> Vec<f64> {
    let mut out = Vec::new();
    let mut base = 1.0;
    while base <= range.1 {
        for m in [1.0, 2.0, 5.0] {
            let v = base * m;
            if v >= range.0 && v <= range.1 {
                out.push(v);
            }
        }
        base *= 10.0;
    }
    if out.is_empty() {
        out.push(range.0.round());
    }
    out
}

/// Tunes the request on the suite's validation images and returns the tuned file (the
/// caller writes it). Fails before any work on a bad request: unknown method, a setting the
/// method does not have, an empty validation split, a budget of zero.
pub fn tune(file: &SuiteFile, req: &TuneRequest) -> Result<TunedFile> {
    let checked = check_request(file, req)?;
    let vfile = validation_suite(file);
    let plan = Plan::new(
        vfile,
        &RunOptions {
            methods: Some(req.methods.clone()),
            ..RunOptions::default()
        },
    )?;
    if plan.images.is_empty() {
        return Err(Error::Invalid(
            "tune: the validation split holds no image".into(),
        ));
    }
    let split: Vec<String> = plan.images.iter().map(|i| i.id.clone()).collect();
    let mut slot = Some(plan);
    let mut tuned = Vec::new();
    for (mi, params) in &checked.methods {
        for &ti in &checked.tasks {
            let plan = slot
                .take()
                .ok_or_else(|| Error::Invalid("tune: internal".into()))?;
            let base = plan.file.suite.methods[*mi].clone();
            let task = plan.file.suite.tasks[ti].clone();
            if !base.applies_to(&task.name) {
                slot = Some(plan);
                continue;
            }
            let family = crate::spec::Spec::parse(&task.op)
                .map(|s| s.family.clone())
                .unwrap_or_default();
            let label = format!("{} / {}", base.name, task.name);
            let (reals, ints): (Vec<Param>, Vec<Param>) =
                params.iter().cloned().partition(|p| !p.integer);
            let ordered: Vec<Param> = reals.iter().chain(ints.iter()).cloned().collect();
            let score = Score {
                plan: std::cell::RefCell::new(plan),
                mi: *mi,
                task: ti,
                params: &ordered,
                base: base.clone(),
                cap: std::cell::Cell::new(1),
                ints: std::cell::RefCell::new(Vec::new()),
                log: std::cell::RefCell::new(Vec::new()),
            };
            let defaults: Vec<f64> = ordered.iter().map(|p| current(&base, p, &family)).collect();
            let default_score = -score.eval(&defaults)?;
            eprintln!("tune {label}: defaults {default_score:.2} dB");
            // The integer parameters' grid (Cartesian product), each point with an equal
            // share of the remaining budget for the real ones.
            let mut grid: Vec<Vec<f64>> = vec![Vec::new()];
            for p in &ints {
                grid = grid
                    .into_iter()
                    .flat_map(|prefix| {
                        int_grid(p.range).into_iter().map(move |v| {
                            let mut q = prefix.clone();
                            q.push(v);
                            q
                        })
                    })
                    .collect();
            }
            // At least 3 evaluations per grid point when there are real settings to
            // search there: a longer grid is thinned evenly (ends kept).
            let room = req.budget.saturating_sub(1);
            let keep = if reals.is_empty() {
                room.max(1)
            } else {
                (room / 3).max(1)
            };
            if grid.len() > keep {
                let n = grid.len();
                grid = (0..keep)
                    .map(|i| {
                        grid[if keep == 1 {
                            0
                        } else {
                            i * (n - 1) / (keep - 1)
                        }]
                        .clone()
                    })
                    .collect();
            }
            let real_defaults = &defaults[..reals.len()];
            let points = grid.len();
            for (i, point) in grid.into_iter().enumerate() {
                if score.spent() >= req.budget {
                    break;
                }
                // An equal share of what is left.
                let left = req.budget - score.spent();
                let share = left.div_ceil(points - i);
                *score.ints.borrow_mut() = point;
                score.cap.set(score.spent() + share);
                let refs: Vec<&Param> = reals.iter().collect();
                search(&score, &refs, real_defaults, &label)?;
            }
            let (best, cost) = score.best().unwrap_or((defaults.clone(), -default_score));
            let evaluations = score.spent();
            let mut entry = Tuned {
                method: base.name.clone(),
                task: task.name.clone(),
                set: SettingValues::new(),
                lambda: None,
                score: -cost,
                default_score,
                evaluations,
            };
            for (p, v) in ordered.iter().zip(&best) {
                let v = if p.integer { v.round() } else { *v };
                if base.method.is_some() {
                    entry.lambda = Some(v as f32);
                } else {
                    entry.set.insert(p.key.clone(), SettingValue::Number(v));
                }
            }
            eprintln!(
                "tune {label}: best {:.2} dB ({} evaluations) with {}",
                entry.score,
                evaluations,
                describe(&entry)
            );
            let mut plan = score.plan.into_inner();
            plan.file.suite.methods[*mi] = base;
            slot = Some(plan);
            tuned.push(entry);
        }
    }
    Ok(TunedFile {
        suite: file.suite.name.clone(),
        date: format!("{} UTC", run::utc_now()),
        split,
        budget: req.budget,
        tuned,
    })
}

/// `key=value, ...` of a tuned entry.
pub fn describe(t: &Tuned) -> String {
    let mut parts: Vec<String> = t.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(l) = t.lambda {
        parts.push(format!("lambda={l}"));
    }
    parts.join(", ")
}

/// Searches the real parameters (log10 scale) with the score's remaining budget.
fn search(score: &Score, reals: &[&Param], defaults: &[f64], label: &str) -> Result<()> {
    let observer = Progress {
        label: label.to_string(),
    };
    match reals.len() {
        0 => score
            .eval(&score.fixed_ints())
            .map(|_| ())
            .or_else(budget_ok),
        1 => {
            let (lo, hi) = (reals[0].range.0.log10(), reals[0].range.1.log10());
            let x0 = defaults[0].max(reals[0].range.0).log10().clamp(lo, hi);
            let solver = BrentOpt::new(lo, hi).set_tolerance(1e-3, 1e-2);
            Executor::new(Line(score), solver)
                .configure(|s| s.param(x0).max_iters(score.cap.get() as u64))
                .add_observer(observer, ObserverMode::Always)
                .timer(false)
                .run()
                .map(|_| ())
                .or_else(argmin_budget_ok)
        }
        _ => {
            // A simplex around the defaults: half a decade along each parameter.
            let start: Vec<f64> = reals
                .iter()
                .zip(defaults)
                .map(|(p, d)| {
                    d.max(p.range.0)
                        .log10()
                        .clamp(p.range.0.log10(), p.range.1.log10())
                })
                .collect();
            let mut simplex = vec![start.clone()];
            for (i, p) in reals.iter().enumerate() {
                let mut v = start.clone();
                let hi = p.range.1.log10();
                v[i] = if v[i] + 0.5 <= hi {
                    v[i] + 0.5
                } else {
                    v[i] - 0.5
                };
                simplex.push(v);
            }
            let solver = NelderMead::new(simplex)
                .with_sd_tolerance(1e-3)
                .map_err(|e| Error::Invalid(format!("tune: {e}")))?;
            Executor::new(Simplex(score), solver)
                .configure(|s| s.max_iters(score.cap.get() as u64))
                .add_observer(observer, ObserverMode::Always)
                .timer(false)
                .run()
                .map(|_| ())
                .or_else(argmin_budget_ok)
        }
    }
}

/// A spent budget ends a search normally.
fn budget_ok(e: Error) -> Result<()> {
    match e {
        Error::Interrupted(_) => Ok(()),
        e => Err(e),
    }
}

fn argmin_budget_ok(e: argmin::core::Error) -> Result<()> {
    let msg = e.to_string();
    if msg.contains("the tuning budget is spent") {
        Ok(())
    } else {
        Err(Error::Invalid(format!("tune: {msg}")))
    }
}

/// The method specs a bench run adds for a tuned file: `NAME-tuned` for every tuned
/// method, with its settings per task (tasks it was not tuned for keep the defaults).
pub fn tuned_methods(file: &SuiteFile, tuned: &TunedFile) -> Vec<MethodSpec> {
    let mut out: Vec<MethodSpec> = Vec::new();
    for m in &file.suite.methods {
        let entries: Vec<&Tuned> = tuned.tuned.iter().filter(|t| t.method == m.name).collect();
        if entries.is_empty() {
            continue;
        }
        let mut spec = m.clone();
        spec.name = format!("{}-tuned", m.name);
        spec.tasks = entries.iter().map(|t| t.task.clone()).collect();
        spec.per_task = entries
            .iter()
            .map(|t| (t.task.clone(), (t.set.clone(), t.lambda)))
            .collect();
        out.push(spec);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUITE: &str = r#"
name = "t"
prior = "fmnist-32"
range = [0.0, 1.0]
[[data]]
name = "a"
kind = "dataset"
path = "/nonexistent"
indices = [0, 1]
[[validation]]
name = "v"
kind = "dataset"
path = "/nonexistent"
indices = [5]
[[tasks]]
name = "blur"
op = "blur:sigma=1"
[[methods]]
name = "adjoint"
method = "adjoint"
[[methods]]
name = "tv"
method = "tv"
[[methods]]
name = "dps"
sampler = "dps"
"#;

    fn file(text: &str) -> SuiteFile {
        SuiteFile {
            suite: SuiteFile::parse(text).unwrap(),
            path: PathBuf::from("/p/t.toml"),
            text: text.into(),
        }
    }

    fn req(methods: &[&str], params: Option<&[(&str, &str)]>, budget: usize) -> TuneRequest {
        TuneRequest {
            methods: methods.iter().map(|s| s.to_string()).collect(),
            params: params.map(|p| {
                p.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect()
            }),
            tasks: None,
            budget,
        }
    }

    #[test]
    fn bad_requests_fail_before_any_work_naming_the_problem() {
        // The data path does not exist: each of these must fail on the request itself,
        // before any image is read.
        let f = file(SUITE);
        for (r, want) in [
            (req(&["magic"], None, 3), "unknown method `magic`"),
            (
                req(&["dps"], Some(&[("dps", "gamma")]), 3),
                "dps has no setting `gamma`",
            ),
            (
                req(&["dps"], Some(&[("dps", "eta")]), 3),
                "not a tunable setting",
            ),
            (
                req(&["tv"], Some(&[("tv", "iters")]), 3),
                "no setting `iters`",
            ),
            (req(&["adjoint"], None, 3), "no setting to tune"),
            (req(&["dps"], None, 0), "--budget must be at least 1"),
            (
                req(&["dps"], Some(&[("tv", "lambda")]), 3),
                "not in --methods",
            ),
        ] {
            let e = tune(&f, &r).unwrap_err().to_string();
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
        let no_val = SUITE.replace(
            "[[validation]]\nname = \"v\"\nkind = \"dataset\"\npath = \"/nonexistent\"\nindices = [5]\n",
            "",
        );
        let e = tune(&file(&no_val), &req(&["dps"], None, 3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no [[validation]] images"), "{e}");
        // A well-formed request gets as far as the data (then fails on the missing path).
        let e = tune(&f, &req(&["dps", "tv"], None, 3))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent"), "{e}");
    }

    #[test]
    fn integer_grids_and_tuned_paths() {
        assert_eq!(int_grid((1.0, 20.0)), vec![1.0, 2.0, 5.0, 10.0, 20.0]);
        assert_eq!(int_grid((3.0, 4.0)), vec![3.0]);
        assert_eq!(
            tuned_path(Path::new("/p/mri-brain-4x.toml")),
            PathBuf::from("/p/mri-brain-4x.tuned.toml")
        );
    }
}
