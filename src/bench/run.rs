//! Planning (all checks before any work), running, resuming and merging a suite.
//!
//! The plan's units are the suite's images, or in volume mode its volumes (consecutive
//! groups of `slices` images). Its items are (unit, task, seed, method) in that nesting
//! order; an item's number (`Record::item`) is its position in the suite's full plan, so it
//! is the same whatever `--limit`, `--shard` or `--methods` selects. `--limit N` keeps the
//! first N units, `--shard K/N` the units whose position is `K - 1` modulo N.
//!
//! Seeds: the measurement of unit `u` (slice `s` in volume mode) for task `t` and suite
//! seed `seed` is simulated with seed `seed * 1_000_003 + 1_009 * image + t` (operator
//! randomness and noise), where `image` is the image's position in the suite; the sampler
//! runs with the suite seed. Nothing depends on which process runs the item.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array3, ArrayD, Axis};
use serde::{Deserialize, Serialize};

use super::coverage::EnsembleStats;
use super::data::{load_images, BenchImage};
use super::results::{self, Appender, Record, SliceMetrics};
use super::suite::{MethodKind, SuiteFile};
use crate::error::{Error, Result};
use crate::metrics;
use crate::prior::{resolve_prior, Denoiser, NetworkPrior, PriorInfo};
use crate::recon::{self, Method, Quality, ReconOptions};
use crate::sample::posterior::{self, gaussian_level, reconstruct_with_prior, Overrides};
use crate::sample::units::{problem_in_prior_units, PriorUnits};
use crate::sample::{DdsSettings, DdsVolume, Executor, Problem, SliceTv};
use crate::spec::{self, noise::parse_noise, BuildContext, Physics};
use posterior_operators::noise::NoiseModel;

/// What to run of a suite.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Only these methods (by name); all when `None`.
    pub methods: Option<Vec<String>>,
    /// Only the first N units (images, or volumes in volume mode).
    pub limit: Option<usize>,
    /// `(k, n)`, 1-based: only units whose position is `k - 1` modulo `n`.
    pub shard: Option<(usize, usize)>,
}

/// Parses `K/N` (1 <= K <= N).
pub fn parse_shard(text: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::Invalid(format!(
            "--shard `{text}`: expected K/N with 1 <= K <= N, e.g. 2/8"
        ))
    };
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (
        k.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// One unit of work: an image, or a volume of consecutive images.
#[derive(Clone, Debug)]
pub struct Unit {
    /// Its position in the suite.
    pub index: usize,
    /// The image id, or `VOLUME-FIRSTID` in volume mode.
    pub id: String,
    /// Positions of its images in the suite.
    pub images: Vec<usize>,
}

/// One item: (unit, task, seed, method), positions into the suite's lists.
#[derive(Clone, Copy, Debug)]
pub struct Item {
    pub number: usize,
    pub unit: usize,
    pub task: usize,
    pub seed: usize,
    pub method: usize,
}

/// A checked suite: images loaded, every task built, every method checked against every
/// task and the prior. Building a plan does no reconstruction.
pub struct Plan {
    pub file: SuiteFile,
    pub images: Vec<BenchImage>,
    /// The selected units (after --limit and --shard).
    pub units: Vec<Unit>,
    /// The selected items, in order.
    pub items: Vec<Item>,
    /// The prior's directory, when the suite has sampler methods.
    pub prior_dir: Option<PathBuf>,
    pub prior_info: Option<PriorInfo>,
    /// The text of the `SUITE.tuned.toml` whose rows were added (`NAME-tuned` methods).
    pub tuned_text: Option<String>,
    noises: Vec<NoiseModel>,
}

impl Plan {
    /// Checks the suite and selects the work. Fails, naming the problem, on a missing data
    /// path, an unknown method, an operator that cannot act on the images or does not fit
    /// the prior, a method that does not apply to a task, and bad options.
    pub fn new(mut file: SuiteFile, opts: &RunOptions) -> Result<Plan> {
        file.suite.check_shape()?;
        // Tuned rows: `NAME-tuned` methods from SUITE.tuned.toml beside the suite.
        let mut tuned_text = None;
        if !file.suite.scoring_validation {
            let path = super::tune::tuned_path(&file.path);
            if let Some((tuned, text)) = super::tune::read_tuned(&path)? {
                if tuned.suite != file.suite.name {
                    return Err(Error::file(
                        &path,
                        format!(
                            "holds tuned settings of suite `{}`, not `{}`",
                            tuned.suite, file.suite.name
                        ),
                    ));
                }
                let extra = super::tune::tuned_methods(&file, &tuned);
                file.suite.methods.extend(extra);
                tuned_text = Some(text);
            }
        }
        let suite = &file.suite;
        if let Some(names) = &opts.methods {
            for n in names {
                if !suite.methods.iter().any(|m| &m.name == n) {
                    return Err(Error::Invalid(format!(
                        "--methods: unknown method `{n}`: the suite's methods are {}",
                        suite
                            .methods
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        if opts.limit == Some(0) {
            return Err(Error::Invalid("--limit must be at least 1".into()));
        }
        let base = file.base_dir();
        let images = load_images(suite, &base)?;
        let shape = images
            .first()
            .map(|i| i.data.shape().to_vec())
            .unwrap_or_default();
        for im in &images {
            if im.data.shape() != shape.as_slice() {
                return Err(Error::Invalid(format!(
                    "image `{}` has shape {:?} but `{}` has {:?}: give the sources a common `size`",
                    im.id,
                    im.data.shape(),
                    images[0].id,
                    shape
                )));
            }
        }
        let all_units: Vec<Unit> = match &suite.volume {
            None => images
                .iter()
                .enumerate()
                .map(|(i, im)| Unit {
                    index: i,
                    id: im.id.clone(),
                    images: vec![i],
                })
                .collect(),
            Some(v) => {
                if images.len() % v.slices != 0 {
                    return Err(Error::Invalid(format!(
                        "volume mode: {} images do not split into volumes of {} slices",
                        images.len(),
                        v.slices
                    )));
                }
                (0..images.len() / v.slices)
                    .map(|k| Unit {
                        index: k,
                        id: format!("volume-{}", images[k * v.slices].id),
                        images: (k * v.slices..(k + 1) * v.slices).collect(),
                    })
                    .collect()
            }
        };
        let selected = |m: &str| {
            opts.methods
                .as_ref()
                .is_none_or(|v| v.iter().any(|x| x == m))
        };
        // Tasks: every operator builds for the images and every noise parses.
        let mut noises = Vec::new();
        for task in &suite.tasks {
            let ctx = |e: Error| Error::Invalid(format!("task `{}`: {e}", task.name));
            noises.push(parse_noise(&task.noise).map_err(ctx)?);
            let physics = build_physics(&task.op, &shape, 0, &base).map_err(ctx)?;
            if let (Some(_), Some(first)) = (&task.maps, images.first()) {
                // Estimated maps: try them on the first image's noise-free measurement.
                let y = physics
                    .measure(first.data.view().into_dyn(), &NoiseModel::None, 0)
                    .map_err(ctx)?;
                estimated_maps_physics(task, &shape, &base, y.view()).map_err(ctx)?;
            }
        }
        // The prior, when needed.
        let needs_prior = suite
            .methods
            .iter()
            .any(|m| selected(&m.name) && !matches!(m.kind(), Ok(MethodKind::Classical(_))));
        let (prior_dir, prior_info) = if needs_prior {
            let name = suite.prior.as_deref().unwrap_or_default();
            let local = base.join(name);
            let dir = if local.join("model.json").is_file() {
                local
            } else {
                resolve_prior(name).map_err(|e| Error::Invalid(format!("prior `{name}`: {e}")))?
            };
            let prior = NetworkPrior::open(&dir.to_string_lossy())?;
            (Some(dir), Some(prior.info().clone()))
        } else {
            (None, None)
        };
        // Methods against tasks (and the prior).
        for m in suite.methods.iter().filter(|m| selected(&m.name)) {
            let kind = m.kind()?;
            for (ti, task) in suite.tasks.iter().enumerate() {
                if !m.applies_to(&task.name) {
                    continue;
                }
                let ctx = |e: Error| {
                    Error::Invalid(format!("task `{}`, method `{}`: {e}", task.name, m.name))
                };
                let physics = build_physics(&task.op, &shape, 0, &base).map_err(ctx)?;
                match kind {
                    MethodKind::Classical(method) => {
                        check_classical(method, &physics).map_err(ctx)?
                    }
                    MethodKind::Sampler | MethodKind::DdsVolume => {
                        let info = prior_info
                            .as_ref()
                            .ok_or_else(|| ctx(Error::Invalid("no prior was loaded".into())))?;
                        check_sampler(m, kind, physics, &noises[ti], suite, &task.name, info)
                            .map_err(ctx)?;
                    }
                }
            }
        }
        // Selection.
        let mut units: Vec<Unit> = all_units;
        if let Some(l) = opts.limit {
            units.truncate(l);
        }
        if let Some((k, n)) = opts.shard {
            units.retain(|u| u.index % n == k - 1);
        }
        let (t, s, m) = (suite.tasks.len(), suite.seeds.len(), suite.methods.len());
        let mut items = Vec::new();
        for u in &units {
            for (ti, task) in suite.tasks.iter().enumerate() {
                for si in 0..s {
                    for (mi, meth) in suite.methods.iter().enumerate() {
                        if selected(&meth.name) && meth.applies_to(&task.name) {
                            items.push(Item {
                                number: ((u.index * t + ti) * s + si) * m + mi,
                                unit: u.index,
                                task: ti,
                                seed: si,
                                method: mi,
                            });
                        }
                    }
                }
            }
        }
        Ok(Plan {
            file,
            images,
            units,
            items,
            prior_dir,
            prior_info,
            tuned_text,
            noises,
        })
    }

    fn unit(&self, index: usize) -> Option<&Unit> {
        self.units.iter().find(|u| u.index == index)
    }

    /// The measurement seed of image `image` for task `task` and suite seed `seed`.
    pub fn measurement_seed(seed: u64, image: usize, task: usize) -> u64 {
        seed.wrapping_mul(1_000_003)
            .wrapping_add(1_009 * image as u64)
            .wrapping_add(task as u64)
    }
}

fn build_physics(op: &str, shape: &[usize], seed: u64, base: &Path) -> Result<Physics> {
    spec::build(op, &BuildContext::new(shape, seed, base))
}

/// The data objective of `gd` and `lbfgs` for a task's noise: Poisson counts are fitted by
/// their likelihood, everything else by least squares.
fn likelihood_for(noise: &NoiseModel) -> crate::solve::Likelihood {
    match noise {
        NoiseModel::Poisson { .. } => crate::solve::Likelihood::Poisson,
        _ => crate::solve::Likelihood::Gaussian,
    }
}

/// The model a task's methods reconstruct with: the simulation's own, or (a task with
/// `maps`) one with coil maps estimated from the measurement `y`, as for real data.
fn estimated_maps_physics(
    task: &super::suite::Task,
    shape: &[usize],
    base: &Path,
    y: ndarray::ArrayViewD<f32>,
) -> Result<Physics> {
    let maps = task.maps.as_deref().unwrap_or("espirit");
    if !matches!(maps, "espirit" | "walsh") {
        return Err(Error::Invalid(format!(
            "`maps = \"{maps}\"`: expected \"espirit\" or \"walsh\""
        )));
    }
    if spec::Spec::parse(&task.op)?.family != "mri" {
        return Err(Error::Invalid(format!(
            "`maps` applies to mri tasks, not `{}`",
            task.op
        )));
    }
    let k = crate::io::kspace::KSpace::from_measurement(y)?;
    let ctx = BuildContext::new(shape, 0, base).with_kspace(Arc::new(k));
    spec::build(&format!("mri:maps={maps}"), &ctx)
}

fn check_classical(method: Method, physics: &Physics) -> Result<()> {
    let family = physics.family.name;
    match method {
        Method::Fbp if family != "ct" => Err(Error::Invalid(format!(
            "fbp is filtered back-projection for CT, not `{}`",
            physics.spec
        ))),
        Method::Hio if family != "phase" => Err(Error::Invalid(format!(
            "hio is for phase retrieval, not `{}`",
            physics.spec
        ))),
        Method::Gd | Method::Hio | Method::Lbfgs => Ok(()),
        _ if family == "phase" => Err(Error::Invalid(format!(
            "`{method}` needs a linear model; phase retrieval takes gd or hio"
        ))),
        _ => Ok(()),
    }
}

fn overrides(m: &super::suite::MethodSpec, task: &str, work: Option<f64>) -> Overrides {
    let name = m.sampler.as_deref().unwrap_or_default();
    let steps = match work {
        Some(w) => Some(posterior::steps_for_work(
            name,
            m.particles,
            m.samples.unwrap_or(1),
            w,
        )),
        None => m.steps,
    };
    Overrides {
        steps,
        particles: m.particles,
        calibration: None,
        set: match m.per_task.get(task) {
            Some((set, _)) => {
                let mut all = m.set.clone();
                all.extend(set.iter().map(|(k, v)| (k.clone(), *v)));
                all
            }
            None => m.set.clone(),
        },
    }
}

fn dds_volume_settings(m: &super::suite::MethodSpec) -> Result<(DdsSettings, SliceTv)> {
    let d = DdsSettings::default();
    let t = SliceTv::default();
    let d = crate::sample::settings::apply_dds(
        DdsSettings {
            steps: m.steps.unwrap_or(d.steps),
            ..d
        },
        &m.set,
    )?;
    Ok((
        d,
        SliceTv {
            rho: m.rho.unwrap_or(t.rho),
            lambda: m.tv_lambda.unwrap_or(t.lambda),
            ..t
        },
    ))
}

/// Builds the sampler on a zero measurement: checks that the operator fits the prior
/// (shapes, channels) and that the sampler accepts the problem and settings.
fn check_sampler(
    m: &super::suite::MethodSpec,
    kind: MethodKind,
    physics: Physics,
    noise: &NoiseModel,
    suite: &super::suite::Suite,
    task: &str,
    info: &PriorInfo,
) -> Result<()> {
    let range = suite.range;
    let units = PriorUnits::new((range[0], range[1]), info.range)?;
    let family = physics.family.name;
    let y = ArrayD::zeros(physics.operator.range_shape());
    let sigma = gaussian_level(noise, y.view()).max(match noise {
        NoiseModel::Poisson { .. } => 1e-3,
        _ => 0.0,
    });
    let problem = problem_in_prior_units(physics.operator, physics.embedding, y, sigma, units)?;
    problem.check_prior(info)?;
    if m.samples == Some(0) {
        return Err(Error::Invalid("samples must be at least 1".into()));
    }
    match kind {
        MethodKind::DdsVolume => {
            let (s, tv) = dds_volume_settings(m)?;
            DdsVolume::new(vec![Arc::new(problem)], s, tv).map(|_| ())
        }
        _ => posterior::build(
            m.sampler.as_deref().unwrap_or_default(),
            Arc::new(problem),
            family,
            &overrides(m, task, suite.work),
        )
        .map(|_| ()),
    }
}

/// What the output directory records about the run that made it (`suite.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub format: String,
    /// The suite file's text.
    pub suite_text: String,
    /// Where it was read from (relative data paths are taken from its directory).
    pub suite_path: PathBuf,
    /// The text of `SUITE.tuned.toml` when the run added its tuned rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned_text: Option<String>,
}

const RUN_FORMAT: &str = "posterior-bench-run/1";

/// What happened during a run, for the caller's progress display.
pub enum Event<'a> {
    /// An item starts: (items done so far, items in the plan, description).
    Start(usize, usize, &'a str),
    /// An item was skipped because an earlier run finished it.
    Skipped(usize, usize),
    /// An item failed: (description, error). The run goes on.
    Failed(&'a str, &'a str),
}

/// Summary of a finished run.
pub struct RunSummary {
    pub ran: usize,
    pub skipped: usize,
    /// Items that ended in an error (recorded in `failures.jsonl`).
    pub failed: usize,
    pub records: Vec<Record>,
}

/// Runs the plan into `out`: appends to `out/results.jsonl` (items already there are not
/// redone), writes reconstructions under `out/recon/`, a grid per unit under `out/grids/`,
/// and `out/results.md` over every record in the directory.
pub fn run(plan: &Plan, out: &Path, on_event: &mut dyn FnMut(Event)) -> Result<RunSummary> {
    std::fs::create_dir_all(out)
        .map_err(|e| Error::file(out, format!("cannot create the output directory: {e}")))?;
    let _lock = results::DirLock::acquire(out)?;
    let info = RunInfo {
        format: RUN_FORMAT.into(),
        suite_text: plan.file.text.clone(),
        suite_path: std::fs::canonicalize(&plan.file.path).unwrap_or(plan.file.path.clone()),
        tuned_text: plan.tuned_text.clone(),
    };
    let info_path = out.join("suite.json");
    match read_run_info(out)? {
        Some(prev)
            if prev.suite_text != info.suite_text || prev.tuned_text != info.tuned_text =>
        {
            return Err(Error::file(
                out,
                "holds results of a different suite (or an edited suite file, or other tuned settings): use a fresh --out directory",
            ))
        }
        Some(_) => {}
        None => crate::io::write_json(&info_path, &info)?,
    }
    let jsonl = out.join("results.jsonl");
    let (existing, valid) = results::read_records(&jsonl)?;
    let done: std::collections::BTreeSet<usize> = existing.iter().map(|r| r.item).collect();
    let mut appender = Appender::open(&jsonl, valid)?;
    let failures_path = out.join("failures.jsonl");
    let mut failures = results::read_failures(&failures_path)?;
    let suite = &plan.file.suite;
    let total = plan.items.len();
    let (mut ran, mut skipped) = (0, 0);
    let mut pos = 0;
    while pos < plan.items.len() {
        // All items of one unit.
        let unit_index = plan.items[pos].unit;
        let end = plan.items[pos..]
            .iter()
            .position(|i| i.unit != unit_index)
            .map_or(plan.items.len(), |k| pos + k);
        let unit = plan
            .unit(unit_index)
            .ok_or_else(|| Error::Invalid(format!("internal: unit {unit_index} not planned")))?;
        let mut unit_ran = false;
        for item in &plan.items[pos..end] {
            let k = ran + skipped;
            if done.contains(&item.number) {
                skipped += 1;
                on_event(Event::Skipped(k + 1, total));
                continue;
            }
            let label = format!(
                "{} / {} / {} / seed {}",
                unit.id,
                suite.tasks[item.task].name,
                suite.methods[item.method].name,
                suite.seeds[item.seed]
            );
            on_event(Event::Start(k, total, &label));
            failures.remove(&item.number);
            match run_item(plan, unit, item, out) {
                Ok(rec) => appender.append(&rec)?,
                Err(e) => {
                    let msg = e.to_string();
                    on_event(Event::Failed(&label, &msg));
                    failures.insert(
                        item.number,
                        results::Failure {
                            item: item.number,
                            image: unit.id.clone(),
                            task: suite.tasks[item.task].name.clone(),
                            method: suite.methods[item.method].name.clone(),
                            seed: suite.seeds[item.seed],
                            error: msg,
                        },
                    );
                    results::write_failures(&failures_path, &failures)?;
                }
            }
            ran += 1;
            unit_ran = true;
        }
        let grid = out.join("grids").join(format!("{}.png", unit.id));
        if unit_ran || !grid.is_file() {
            write_grid(plan, unit, out)?;
        }
        pos = end;
    }
    let (records, _) = results::read_records(&jsonl)?;
    for r in &records {
        failures.remove(&r.item);
    }
    results::write_failures(&failures_path, &failures)?;
    let failed = plan
        .items
        .iter()
        .filter(|i| failures.contains_key(&i.number))
        .count();
    let notes = run_notes(
        &records,
        &format!("{ran} item(s) run now, {skipped} found done, {failed} failed"),
    );
    let md = results::summary(suite, &records, &failures, &notes);
    crate::io::write_atomic(&out.join("results.md"), |tmp| {
        std::fs::write(tmp, md.as_bytes()).map_err(|e| Error::file(tmp, e))
    })?;
    Ok(RunSummary {
        ran,
        skipped,
        failed,
        records,
    })
}

/// Reads `DIR/suite.json` if present.
pub fn read_run_info(dir: &Path) -> Result<Option<RunInfo>> {
    let p = dir.join("suite.json");
    match std::fs::read_to_string(&p) {
        Ok(t) => {
            let info: RunInfo = serde_json::from_str(&t)
                .map_err(|e| Error::file(&p, format!("not a bench run record: {e}")))?;
            if info.format != RUN_FORMAT {
                return Err(Error::file(
                    &p,
                    format!("format `{}`, expected `{RUN_FORMAT}`", info.format),
                ));
            }
            Ok(Some(info))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::file(&p, e)),
    }
}

/// Simulates the measurement of one image for a task and seed.
fn measure(
    plan: &Plan,
    image: usize,
    task: usize,
    seed: u64,
) -> Result<(Physics, ArrayD<f32>, u64)> {
    let suite = &plan.file.suite;
    let truth = &plan.images[image].data;
    let mseed = Plan::measurement_seed(seed, image, task);
    let physics = build_physics(
        &suite.tasks[task].op,
        truth.shape(),
        mseed,
        &plan.file.base_dir(),
    )?;
    let y = physics.measure(truth.view().into_dyn(), &plan.noises[task], mseed)?;
    let physics = match suite.tasks[task].maps {
        Some(_) => estimated_maps_physics(
            &suite.tasks[task],
            truth.shape(),
            &plan.file.base_dir(),
            y.view(),
        )?,
        None => physics,
    };
    Ok((physics, y, mseed))
}

/// The reconstruction of one image by one method.
struct Recon {
    image: Array3<f32>,
    /// The ensemble's pixelwise std, for methods that return one.
    spread: Option<Array3<f32>>,
    nfe: usize,
    vjps: usize,
    /// Network evaluations of one image, a VJP counted as 2.
    work: f64,
    detail: String,
    /// Members of the ensemble (SMC particles, or samples).
    members: usize,
    smc: Option<crate::sample::posterior::SmcReport>,
}

fn reconstruct_image(plan: &Plan, image: usize, item: &Item) -> Result<Recon> {
    let suite = &plan.file.suite;
    let m = &suite.methods[item.method];
    let seed = suite.seeds[item.seed];
    let (physics, y, _) = measure(plan, image, item.task, seed)?;
    let to3 = |a: ArrayD<f32>| {
        a.into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| Error::Invalid(format!("reconstruction is not an image (C, H, W): {e}")))
    };
    match m.kind()? {
        MethodKind::Classical(method) => {
            let tuned_lambda = m
                .per_task
                .get(&suite.tasks[item.task].name)
                .and_then(|(_, l)| *l);
            let opts = ReconOptions {
                method,
                iters: m.iters,
                lambda: tuned_lambda.or(m.lambda),
                filter: m.filter.clone().unwrap_or_else(|| "ramp".into()),
                nonnegative: m.nonneg,
                seed,
                likelihood: likelihood_for(&plan.noises[item.task]),
                allow_nonfinite: false,
            };
            let x = recon::reconstruct(&physics, y.view(), &opts, &mut |_, _| {})?;
            let detail = match method.default_iters() {
                0 => method.name().to_string(),
                _ => format!("{} ({} iterations)", method.name(), opts.iters()),
            };
            Ok(Recon {
                image: to3(physics.extract(x.view(), false))?,
                spread: None,
                nfe: 0,
                vjps: 0,
                work: 0.0,
                detail,
                members: 1,
                smc: None,
            })
        }
        MethodKind::Sampler => {
            let dir = plan
                .prior_dir
                .as_ref()
                .ok_or_else(|| Error::Invalid("no prior".into()))?;
            let prior = NetworkPrior::open(&dir.to_string_lossy())?;
            // The image range comes from the measurement (MRI, CT), never the truth; other
            // families keep the suite's range (the files' bit depth).
            let range = crate::sample::units::measured_range(&physics, y.view())?
                .unwrap_or((suite.range[0], suite.range[1]));
            let r = reconstruct_with_prior(
                physics,
                y,
                &plan.noises[item.task],
                range,
                std::sync::Arc::new(prior),
                m.sampler.as_deref().unwrap_or_default(),
                &overrides(m, &suite.tasks[item.task].name, suite.work),
                Executor::new(seed),
                m.samples.unwrap_or(1),
            )?;
            recon::check_output(&r.label, r.image.view(), false)?;
            let spread = r.spread.map(to3).transpose()?;
            let members = r
                .smc
                .as_ref()
                .map_or(m.samples.unwrap_or(1), |s| s.particles);
            Ok(Recon {
                image: to3(r.image)?,
                spread,
                nfe: r.outcome.nfe,
                vjps: r.outcome.vjps,
                work: ((r.outcome.nfe + 2 * r.outcome.vjps) * r.batch) as f64,
                detail: r.label,
                members,
                smc: r.smc,
            })
        }
        MethodKind::DdsVolume => Err(Error::Invalid(
            "dds-volume reconstructs whole volumes only".into(),
        )),
    }
}

/// The mean PSNR of method `mi` on task `task` over the plan's images (first seed; a PSNR
/// above 100 dB counts as 100): what `posterior tune` maximises.
pub fn mean_psnr(plan: &Plan, task: usize, mi: usize) -> Result<f64> {
    let suite = &plan.file.suite;
    let span = (suite.range[1] - suite.range[0]) as f64;
    let (mut total, mut n) = (0.0, 0usize);
    for u in &plan.units {
        for &img in &u.images {
            let item = Item {
                number: 0,
                unit: u.index,
                task,
                seed: 0,
                method: mi,
            };
            let r = reconstruct_image(plan, img, &item)?;
            let q = Quality::compare(r.image.view(), plan.images[img].data.view(), span)?;
            total += q.psnr.min(100.0);
            n += 1;
        }
    }
    if n == 0 {
        return Err(Error::Invalid("no image to score".into()));
    }
    Ok(total / n as f64)
}

/// DDS with the slice-axis TV step on a whole volume: (slices, nfe, vjps, detail).
fn reconstruct_volume(
    plan: &Plan,
    unit: &Unit,
    item: &Item,
) -> Result<(Vec<Array3<f32>>, usize, usize, String)> {
    let suite = &plan.file.suite;
    let m = &suite.methods[item.method];
    let seed = suite.seeds[item.seed];
    let dir = plan
        .prior_dir
        .as_ref()
        .ok_or_else(|| Error::Invalid("no prior".into()))?;
    let prior = NetworkPrior::open(&dir.to_string_lossy())?;
    let info = prior.info().clone();
    // One range for the volume, from its measurements (MRI, CT: the largest slice range),
    // never the truth.
    let measured: Vec<_> = unit
        .images
        .iter()
        .map(|&img| measure(plan, img, item.task, seed))
        .collect::<Result<_>>()?;
    let mut hi = None::<f32>;
    for (physics, y, _) in &measured {
        if let Some((_, h)) = crate::sample::units::measured_range(physics, y.view())? {
            hi = Some(hi.map_or(h, |m| m.max(h)));
        }
    }
    let range = hi.map_or((suite.range[0], suite.range[1]), |h| (0.0, h));
    let units = PriorUnits::new(range, info.range)?;
    let mut problems = Vec::new();
    for (physics, y, _) in measured {
        let sigma = gaussian_level(&plan.noises[item.task], y.view());
        let p: Problem =
            problem_in_prior_units(physics.operator, physics.embedding, y, sigma, units)?;
        problems.push(Arc::new(p));
    }
    let (settings, tv) = dds_volume_settings(m)?;
    let mut sampler = DdsVolume::new(problems, settings, tv)?;
    let label = crate::sample::Sampler::name(&sampler);
    let denoiser: &dyn Denoiser = &prior;
    let outcome = Executor::new(seed).run(&mut sampler, denoiser, unit.images.len())?;
    recon::check_output(&label, outcome.samples.view().into_dyn(), false)?;
    let slices = outcome
        .samples
        .axis_iter(Axis(0))
        .map(|s| {
            units
                .to_image(s)
                .into_dimensionality::<ndarray::Ix3>()
                .map_err(|e| Error::Invalid(format!("dds-volume slice is not an image: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((slices, outcome.nfe, outcome.vjps, label))
}

fn recon_path(out: &Path, unit: &str, task: &str, method: &str, seed: u64, std: bool) -> PathBuf {
    out.join("recon").join(unit).join(task).join(format!(
        "{method}-s{seed}{}.npy",
        if std { "-std" } else { "" }
    ))
}

fn run_item(plan: &Plan, unit: &Unit, item: &Item, out: &Path) -> Result<Record> {
    let suite = &plan.file.suite;
    let (task, m, seed) = (
        &suite.tasks[item.task],
        &suite.methods[item.method],
        suite.seeds[item.seed],
    );
    let span = (suite.range[1] - suite.range[0]) as f64;
    memory::reset_peak();
    let start = Instant::now();
    let mut members = 1;
    let mut smc = None;
    let (slices, spreads, nfe, vjps, work, detail) = if m.kind()? == MethodKind::DdsVolume {
        let (s, nfe, vjps, d) = reconstruct_volume(plan, unit, item)?;
        let work = (nfe * s.len()) as f64;
        (s, Vec::new(), nfe, vjps, work, d)
    } else {
        let (mut s, mut sp, mut nfe, mut vjps, mut work, mut detail) =
            (Vec::new(), Vec::new(), 0, 0, 0.0, String::new());
        for &img in &unit.images {
            let r = reconstruct_image(plan, img, item)?;
            s.push(r.image);
            if let Some(x) = r.spread {
                sp.push(x);
            }
            nfe += r.nfe;
            vjps += r.vjps;
            work += r.work;
            detail = r.detail;
            members = r.members;
            smc = r.smc;
        }
        (s, sp, nfe, vjps, work, detail)
    };
    let seconds = start.elapsed().as_secs_f64();
    let peak_mib = memory::peak_mib();
    let stack = |v: &[Array3<f32>]| -> Result<ArrayD<f32>> {
        let views: Vec<_> = v.iter().map(|a| a.view()).collect();
        Ok(ndarray::stack(Axis(0), &views)
            .map_err(|e| Error::Invalid(e.to_string()))?
            .into_dyn())
    };
    let truths: Vec<Array3<f32>> = unit
        .images
        .iter()
        .map(|&i| plan.images[i].data.clone())
        .collect();
    let (psnr, ssim, nrmse, per_slice) = if suite.volume.is_some() {
        let (x, t) = (stack(&slices)?, stack(&truths)?);
        let p = metrics::psnr_volume(x.view(), t.view(), span)?;
        let s = metrics::ssim_volume(x.view(), t.view(), span)?;
        let n = metrics::nrmse_volume(x.view(), t.view())?;
        let sm = SliceMetrics {
            psnr: p.per_slice,
            ssim: s.per_slice,
            nrmse: n.per_slice,
        };
        (p.mean, s.mean, n.mean, Some(sm))
    } else {
        let q = Quality::compare(slices[0].view(), truths[0].view(), span)?;
        (q.psnr, q.ssim, q.nrmse, None)
    };
    // Calibration of the ensemble's std map (the mean over slices in volume mode; the SMC
    // diagnostics of the last slice).
    let ensemble = (spreads.len() == slices.len() && !spreads.is_empty()).then(|| {
        let per: Vec<_> = slices
            .iter()
            .zip(&spreads)
            .zip(&truths)
            .map(|((x, sd), t)| EnsembleStats::new(members, x.view(), sd.view(), t.view()))
            .collect();
        let k = per.len() as f64;
        let corr: Vec<f64> = per.iter().filter_map(|e| e.std_error_corr).collect();
        let mut e = EnsembleStats {
            coverage90: per.iter().map(|e| e.coverage90).sum::<f64>() / k,
            std_error_corr: (corr.len() == per.len())
                .then(|| corr.iter().sum::<f64>() / corr.len() as f64),
            mean_std: per.iter().map(|e| e.mean_std).sum::<f64>() / k,
            ..per[0].clone()
        };
        if let Some(r) = &smc {
            e.ess_per_step = r.ess_per_step.clone();
            e.resamples = Some(r.resamples);
            e.nonfinite = Some(r.nonfinite);
        }
        e
    });
    // Reconstructions for the grids (and for anyone who wants to look).
    let x = if suite.volume.is_some() {
        stack(&slices)?
    } else {
        slices[0].clone().into_dyn()
    };
    let path = recon_path(out, &unit.id, &task.name, &m.name, seed, false);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    }
    crate::io::write_npy(&path, x.view())?;
    if !spreads.is_empty() {
        let sd = if suite.volume.is_some() {
            stack(&spreads)?
        } else {
            spreads[0].clone().into_dyn()
        };
        crate::io::write_npy(
            &recon_path(out, &unit.id, &task.name, &m.name, seed, true),
            sd.view(),
        )?;
    }
    Ok(Record {
        item: item.number,
        suite: suite.name.clone(),
        image: unit.id.clone(),
        task: task.name.clone(),
        method: m.name.clone(),
        seed,
        psnr,
        ssim,
        nrmse,
        nfe,
        vjps,
        seconds,
        peak_mib,
        detail,
        slices: per_slice,
        work: Some(work),
        ensemble,
    })
}

/// The grid of one unit (first seed): a row per task with the truth, a preview of the
/// measurement, each method's reconstruction (black where it did not run) and then each
/// ensemble method's uncertainty map (scaled to its own maximum). In volume mode the
/// middle slice is shown.
fn write_grid(plan: &Plan, unit: &Unit, out: &Path) -> Result<()> {
    let suite = &plan.file.suite;
    let seed = suite.seeds[0];
    let mid = unit.images.len() / 2;
    let image = unit.images[mid];
    let (lo, hi) = (suite.range[0], suite.range[1]);
    let unit01 = |a: &Array3<f32>| a.mapv(|v| ((v - lo) / (hi - lo)).clamp(0.0, 1.0));
    let truth = &plan.images[image].data;
    let tile = truth.shape()[1].max(truth.shape()[2]).max(96);
    let methods: Vec<usize> = (0..suite.methods.len()).collect();
    let mut tiles = Vec::new();
    let mut cols = 0;
    for (ti, task) in suite.tasks.iter().enumerate() {
        let mut row = vec![crate::figure::tile(unit01(truth).view(), tile)];
        let (_, y, _) = measure(plan, image, ti, seed)?;
        row.push(crate::figure::tile(
            spec::preview(y.view(), (lo, hi)).view(),
            tile,
        ));
        let load = |std: bool, mi: usize| -> Option<Array3<f32>> {
            let p = recon_path(
                out,
                &unit.id,
                &task.name,
                &suite.methods[mi].name,
                seed,
                std,
            );
            let a = crate::io::read_npy(&p).ok()?;
            let a = if suite.volume.is_some() {
                a.index_axis(Axis(0), mid).to_owned()
            } else {
                a
            };
            a.into_dimensionality::<ndarray::Ix3>().ok()
        };
        for &mi in &methods {
            row.push(match load(false, mi) {
                Some(x) => crate::figure::tile(unit01(&x).view(), tile),
                None => ndarray::Array2::zeros((tile, tile)),
            });
        }
        for &mi in &methods {
            if let Some(sd) = load(true, mi) {
                let top = sd.iter().fold(0f32, |m, v| m.max(*v)).max(1e-12);
                row.push(crate::figure::tile(sd.mapv(|v| v / top).view(), tile));
            }
        }
        cols = cols.max(row.len());
        tiles.push(row);
    }
    let flat: Vec<_> = tiles
        .into_iter()
        .flat_map(|mut r| {
            r.resize(cols, ndarray::Array2::from_elem((tile, tile), 1.0));
            r
        })
        .collect();
    let grid = crate::figure::grid(&flat, cols, tile);
    let dir = out.join("grids");
    std::fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
    crate::io::write_image(
        &dir.join(format!("{}.png", unit.id)),
        grid.view(),
        (0.0, 1.0),
    )?;
    let legend = {
        let mut s = String::from("columns: truth, measurement");
        for m in &suite.methods {
            s.push_str(&format!(", {}", m.name));
        }
        s.push_str(
            ", then the uncertainty map (posterior std) of each ensemble method that ran\nrows: ",
        );
        s.push_str(
            &suite
                .tasks
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        );
        s.push('\n');
        s
    };
    std::fs::write(dir.join("LEGEND.txt"), legend).map_err(|e| Error::file(&dir, e))
}

/// The `## Run` notes of results.md: machine, date, counts.
pub fn run_notes(records: &[Record], extra: &str) -> String {
    let total: f64 = records.iter().map(|r| r.seconds).sum();
    format!(
        "- machine: {}\n- written: {} UTC\n- {} record(s), {:.1} s of reconstruction in all; {extra}\n",
        machine(),
        utc_now(),
        records.len(),
        total
    )
}

/// `HOSTNAME: CPU model, N threads`.
pub fn machine() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{host}: {cpu}, {threads} threads available")
}

/// The current UTC time as `YYYY-MM-DD HH:MM`.
pub fn utc_now() -> String {
    utc(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()))
}

/// Seconds since 1970-01-01 UTC as `YYYY-MM-DD HH:MM`.
fn utc(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Merges the output directories of shards (runs of the same suite file) into `out`:
/// `results.jsonl` (the union, in plan order), `results.md`, and the reconstructions and
/// grids copied over. Equal to an unsharded run except for the cost columns.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<Vec<Record>> {
    if dirs.is_empty() {
        return Err(Error::Invalid(
            "bench merge: give at least one run directory".into(),
        ));
    }
    let mut info: Option<RunInfo> = None;
    let mut runs = Vec::new();
    let mut failures = std::collections::BTreeMap::new();
    for d in dirs {
        failures.extend(results::read_failures(&d.join("failures.jsonl"))?);
        let i = read_run_info(d)?.ok_or_else(|| {
            Error::file(
                d,
                "no suite.json here: not an output directory of `posterior bench`",
            )
        })?;
        if let Some(first) = &info {
            if first.suite_text != i.suite_text || first.tuned_text != i.tuned_text {
                return Err(Error::file(
                    d,
                    format!(
                        "ran a different suite than {}: merge only shards of one suite",
                        dirs[0].display()
                    ),
                ));
            }
        } else {
            info = Some(i);
        }
        runs.push(results::read_lines(&d.join("results.jsonl"))?.0);
    }
    let info = info.ok_or_else(|| Error::Invalid("no runs".into()))?;
    let mut suite = SuiteFile::parse(&info.suite_text)
        .map_err(|e| Error::Invalid(format!("the recorded suite does not parse: {e}")))?;
    if let Some(t) = &info.tuned_text {
        let tuned: super::tune::TunedFile = toml::from_str(t).map_err(|e| {
            Error::Invalid(format!("the recorded tuned settings do not parse: {e}"))
        })?;
        let file = SuiteFile {
            suite: suite.clone(),
            path: info.suite_path.clone(),
            text: info.suite_text.clone(),
        };
        suite
            .methods
            .extend(super::tune::tuned_methods(&file, &tuned));
    }
    let merged = results::merge_records(runs)?;
    let lines: Vec<String> = merged.iter().map(|(_, l)| l.clone()).collect();
    let records: Vec<Record> = merged.into_iter().map(|(r, _)| r).collect();
    for r in &records {
        failures.remove(&r.item);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, e))?;
    let _lock = results::DirLock::acquire(out)?;
    if let Some(prev) = read_run_info(out)? {
        if prev.suite_text != info.suite_text {
            return Err(Error::file(
                out,
                "holds results of a different suite: use a fresh --out",
            ));
        }
    }
    crate::io::write_json(&out.join("suite.json"), &info)?;
    results::write_lines(&out.join("results.jsonl"), &lines)?;
    results::write_failures(&out.join("failures.jsonl"), &failures)?;
    for d in dirs {
        for sub in ["recon", "grids"] {
            copy_tree(&d.join(sub), &out.join(sub))?;
        }
    }
    let notes = run_notes(
        &records,
        &format!(
            "merged from {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let md = results::summary(&suite, &records, &failures, &notes);
    crate::io::write_atomic(&out.join("results.md"), |tmp| {
        std::fs::write(tmp, md.as_bytes()).map_err(|e| Error::file(tmp, e))
    })?;
    Ok(records)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    std::fs::create_dir_all(to).map_err(|e| Error::file(to, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::file(from, e))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else if src.canonicalize().ok() != dst.canonicalize().ok() {
            std::fs::copy(&src, &dst).map_err(|err| Error::file(&src, err))?;
        }
    }
    Ok(())
}

/// Peak resident memory per item on Linux: `/proc/self/clear_refs` resets the high-water
/// mark, `/proc/self/status` `VmHWM` reads it. Elsewhere both are no-ops / `None`.
mod memory {
    pub fn reset_peak() {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
    pub fn peak_mib() -> Option<f64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_bad_ones_fail() {
        assert_eq!(parse_shard("2/8").unwrap(), (2, 8));
        for bad in ["0/2", "3/2", "1", "a/b", "1/0"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn utc_dates_follow_the_calendar() {
        // Checked with `date -u -d @SECS +'%F %R'`.
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_709_210_040), "2024-02-29 12:34");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(utc(4_102_444_799), "2099-12-31 23:59");
    }
}
