//! Every posterior sampler's settings by name: what `--set zeta=0.5` on the command line and
//! `set = { zeta = 0.5 }` in a suite's `[[methods]]` reach, what `posterior tune` searches,
//! and the check that a sampler has the setting it is given.
//!
//! A setting is a number or a flag. Numbers are checked against the setting's kind here
//! (an integer where one is expected, within its bounds); the sampler's own settings check
//! (`DpsSettings::check` and its siblings) then sees the combined values, so a value is
//! refused with the same message whichever way it was given.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DdsSettings, DpsSettings, DpsUpdate, FlairSettings, RedDiffSettings, SmcSettings};
use crate::error::{Error, Result};

/// A setting's value: a number (integers included) or a flag.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    Flag(bool),
    Number(f64),
}

impl std::fmt::Display for SettingValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingValue::Flag(b) => write!(f, "{b}"),
            SettingValue::Number(v) => write!(f, "{v}"),
        }
    }
}

/// Settings by key, in key order.
pub type SettingValues = BTreeMap<String, SettingValue>;

/// What values a setting takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A real number in `[min, max]`; `log`: searched on a log scale by `posterior tune`.
    Real { min: f64, max: f64, log: bool },
    /// An integer in `[min, max]`.
    Integer { min: usize, max: usize },
    /// `true` or `false`.
    Flag,
}

/// One setting of a sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SettingSpec {
    pub key: &'static str,
    pub kind: Kind,
    /// One line: what it is.
    pub doc: &'static str,
    /// The range `posterior tune` searches when asked for this setting (`None`: not tunable).
    pub search: Option<(f64, f64)>,
}

const fn real(key: &'static str, min: f64, max: f64, doc: &'static str) -> SettingSpec {
    SettingSpec {
        key,
        kind: Kind::Real {
            min,
            max,
            log: false,
        },
        doc,
        search: None,
    }
}

const fn log_real(
    key: &'static str,
    min: f64,
    max: f64,
    search: (f64, f64),
    doc: &'static str,
) -> SettingSpec {
    SettingSpec {
        key,
        kind: Kind::Real {
            min,
            max,
            log: true,
        },
        doc,
        search: Some(search),
    }
}

const fn int(
    key: &'static str,
    min: usize,
    max: usize,
    search: Option<(f64, f64)>,
    doc: &'static str,
) -> SettingSpec {
    SettingSpec {
        key,
        kind: Kind::Integer { min, max },
        doc,
        search,
    }
}

const fn flag(key: &'static str, doc: &'static str) -> SettingSpec {
    SettingSpec {
        key,
        kind: Kind::Flag,
        doc,
        search: None,
    }
}

const INF: f64 = f64::INFINITY;

const DPS: &[SettingSpec] = &[
    log_real(
        "zeta",
        0.0,
        INF,
        (1e-2, 1e2),
        "guidance step size (official: 0.3 SR/deblur, 0.5 inpainting, 1.0 phase)",
    ),
    real(
        "eta",
        0.0,
        1.0,
        "take DDIM steps with this eta instead of ancestral steps",
    ),
];
const DDS: &[SettingSpec] = &[
    log_real(
        "gamma",
        0.0,
        INF,
        (1e-3, 1e3),
        "data weight of the noisy-data CG system (official 1, times 1/sigma_y^2)",
    ),
    int(
        "cg_iters",
        0,
        1000,
        Some((1.0, 20.0)),
        "CG iterations per step (official 5)",
    ),
    real("eta", 0.0, 1.0, "DDIM stochasticity (official 0.85)"),
    real("cg_tol", 0.0, 1.0, "CG relative tolerance (1e-5)"),
];
const REDDIFF: &[SettingSpec] = &[
    log_real(
        "lambda",
        0.0,
        INF,
        (1e-3, 1e2),
        "regulariser weight (official 0.25)",
    ),
    log_real(
        "lr",
        0.0,
        INF,
        (1e-3, 1.0),
        "Adam learning rate (official 0.1)",
    ),
];
const FLAIR: &[SettingSpec] = &[
    log_real(
        "weight",
        0.0,
        INF,
        (1e-2, 1e1),
        "scale on the regulariser weights lambda(t) (official 0.5)",
    ),
    log_real(
        "lr",
        0.0,
        INF,
        (1e-2, 1e1),
        "regulariser step learning rate (official 1)",
    ),
    real("t_end", 0.0, 1.0, "last regulariser time (official 0.18)"),
    int(
        "dc_steps",
        1,
        1000,
        None,
        "nonlinear data steps per step (official 15)",
    ),
    real("dc_lr", 0.0, INF, "nonlinear data step size (official 0.1)"),
    int(
        "cg_iters",
        1,
        10000,
        None,
        "CG iterations of the linear data step (50)",
    ),
];
const SMC: &[SettingSpec] = &[
    log_real(
        "twist_scale",
        0.0,
        INF,
        (0.1, 10.0),
        "TDS: factor on the twist's x0 uncertainty r (1; larger is flatter)",
    ),
    real(
        "ess_fraction",
        0.0,
        1.0,
        "resample when the ESS falls below this fraction of K (0.5)",
    ),
    flag(
        "clip",
        "TDS: clip the proposal's x0 estimate to the prior's range (true)",
    ),
    real(
        "eta",
        0.0,
        1.0,
        "FPS: stochasticity of the measurement bridge (1)",
    ),
    int(
        "cg_iters",
        1,
        10000,
        None,
        "FPS: CG iterations per solve without a closed form (100)",
    ),
    real("cg_tol", 0.0, 1.0, "FPS: CG relative tolerance (1e-6)"),
];

/// The settings `sampler` accepts (`dps`, `reddiff`, `flair`, `dds`, `smc`, `tds`, `fps`,
/// `dds-volume`); an error naming the samplers for an unknown name.
pub fn settings_of(sampler: &str) -> Result<&'static [SettingSpec]> {
    Ok(match sampler {
        "dps" => DPS,
        "dds" | "dds-volume" => DDS,
        "reddiff" | "red-diff" => REDDIFF,
        "flair" => FLAIR,
        "smc" | "tds" | "fps" => SMC,
        other => {
            return Err(Error::Invalid(format!(
                "unknown sampler `{other}`: expected one of {}",
                super::posterior::POSTERIOR_SAMPLERS.join(", ")
            )))
        }
    })
}

/// The spec of `key` for `sampler`, or an error naming the sampler's settings.
pub fn spec(sampler: &str, key: &str) -> Result<SettingSpec> {
    let all = settings_of(sampler)?;
    all.iter().find(|s| s.key == key).copied().ok_or_else(|| {
        Error::Invalid(format!(
            "{sampler} has no setting `{key}`: its settings are {} (steps and particles have their own options)",
            all.iter().map(|s| s.key).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// Parses `key=value` (`value` a number, `true` or `false`).
pub fn parse_assignment(text: &str) -> Result<(String, SettingValue)> {
    let (k, v) = text.split_once('=').ok_or_else(|| {
        Error::Invalid(format!(
            "--set `{text}`: expected KEY=VALUE, e.g. zeta=0.5 or clip=false"
        ))
    })?;
    let (k, v) = (k.trim(), v.trim());
    if k.is_empty() {
        return Err(Error::Invalid(format!("--set `{text}`: the key is empty")));
    }
    let value = match v {
        "true" => SettingValue::Flag(true),
        "false" => SettingValue::Flag(false),
        _ => SettingValue::Number(v.parse::<f64>().map_err(|_| {
            Error::Invalid(format!(
                "--set {k}={v}: `{v}` is not a number (or true/false)"
            ))
        })?),
    };
    Ok((k.to_string(), value))
}

/// Parses several `key=value` assignments; a key given twice is an error.
pub fn parse_assignments(items: &[String]) -> Result<SettingValues> {
    let mut out = SettingValues::new();
    for it in items {
        let (k, v) = parse_assignment(it)?;
        if out.insert(k.clone(), v).is_some() {
            return Err(Error::Invalid(format!("--set: `{k}` is given twice")));
        }
    }
    Ok(out)
}

/// Checks that `sampler` has every key of `values` and that each value is of the setting's
/// kind and within its bounds.
pub fn check(sampler: &str, values: &SettingValues) -> Result<()> {
    for (k, v) in values {
        let s = spec(sampler, k)?;
        checked(sampler, &s, *v)?;
    }
    Ok(())
}

/// The value as a number in range (a flag as 0 / 1 for [`Kind::Flag`]).
fn checked(sampler: &str, s: &SettingSpec, v: SettingValue) -> Result<f64> {
    let bad = |what: String| Err(Error::Invalid(format!("{sampler}: {}={v}: {what}", s.key)));
    match (s.kind, v) {
        (Kind::Flag, SettingValue::Flag(b)) => Ok(if b { 1.0 } else { 0.0 }),
        (Kind::Flag, _) => bad("expected true or false".into()),
        (_, SettingValue::Flag(_)) => bad("expected a number".into()),
        (Kind::Real { min, max, .. }, SettingValue::Number(x)) => {
            if x.is_finite() && x >= min && x <= max {
                Ok(x)
            } else {
                bad(format!("expected a finite number in [{min}, {max}]"))
            }
        }
        (Kind::Integer { min, max }, SettingValue::Number(x)) => {
            if x.fract() == 0.0 && x >= min as f64 && x <= max as f64 {
                Ok(x)
            } else {
                bad(format!("expected an integer in [{min}, {max}]"))
            }
        }
    }
}

/// A number setting of `values` for `sampler`, when given.
fn number(sampler: &str, values: &SettingValues, key: &str) -> Result<Option<f64>> {
    values
        .get(key)
        .map(|v| checked(sampler, &spec(sampler, key)?, *v))
        .transpose()
}

/// DPS's settings with `values` applied (then checked by [`DpsSettings::check`]).
pub fn apply_dps(mut s: DpsSettings, values: &SettingValues) -> Result<DpsSettings> {
    check("dps", values)?;
    if let Some(z) = number("dps", values, "zeta")? {
        s.zeta = z;
    }
    if let Some(eta) = number("dps", values, "eta")? {
        s.update = DpsUpdate::Ddim { eta };
    }
    s.check()?;
    Ok(s)
}

/// DDS's settings with `values` applied (then checked by [`DdsSettings::check`]).
pub fn apply_dds(mut s: DdsSettings, values: &SettingValues) -> Result<DdsSettings> {
    check("dds", values)?;
    if let Some(g) = number("dds", values, "gamma")? {
        s.gamma = g;
    }
    if let Some(m) = number("dds", values, "cg_iters")? {
        s.cg_iters = m as usize;
    }
    if let Some(e) = number("dds", values, "eta")? {
        s.eta = e;
    }
    if let Some(t) = number("dds", values, "cg_tol")? {
        s.cg_tol = t;
    }
    s.check()?;
    Ok(s)
}

/// RED-diff's settings with `values` applied.
pub fn apply_reddiff(mut s: RedDiffSettings, values: &SettingValues) -> Result<RedDiffSettings> {
    check("reddiff", values)?;
    if let Some(l) = number("reddiff", values, "lambda")? {
        s.lambda = l;
    }
    if let Some(l) = number("reddiff", values, "lr")? {
        s.lr = l;
    }
    Ok(s)
}

/// FLAIR's settings with `values` applied.
pub fn apply_flair(mut s: FlairSettings, values: &SettingValues) -> Result<FlairSettings> {
    check("flair", values)?;
    if let Some(w) = number("flair", values, "weight")? {
        s.lambda_scale = w;
    }
    if let Some(l) = number("flair", values, "lr")? {
        s.lr = l;
    }
    if let Some(t) = number("flair", values, "t_end")? {
        s.t_end = t;
    }
    if let Some(d) = number("flair", values, "dc_steps")? {
        s.dc_steps = d as usize;
    }
    if let Some(d) = number("flair", values, "dc_lr")? {
        s.dc_lr = d;
    }
    if let Some(c) = number("flair", values, "cg_iters")? {
        s.cg_iters = c as usize;
    }
    Ok(s)
}

/// The SMC settings with `values` applied (then checked by [`SmcSettings::validate`]).
pub fn apply_smc(mut s: SmcSettings, values: &SettingValues) -> Result<SmcSettings> {
    check("smc", values)?;
    if let Some(v) = number("smc", values, "twist_scale")? {
        s.twist_scale = v;
    }
    if let Some(v) = number("smc", values, "ess_fraction")? {
        s.ess_fraction = v;
    }
    if let Some(v) = number("smc", values, "clip")? {
        s.clip = v != 0.0;
    }
    if let Some(v) = number("smc", values, "eta")? {
        s.eta = v;
    }
    if let Some(v) = number("smc", values, "cg_iters")? {
        s.cg_iters = v as usize;
    }
    if let Some(v) = number("smc", values, "cg_tol")? {
        s.cg_tol = v;
    }
    s.validate()?;
    Ok(s)
}

/// A one-line listing of a sampler's settings for help texts: `key (doc); ...`.
pub fn describe(sampler: &str) -> Result<String> {
    Ok(settings_of(sampler)?
        .iter()
        .map(|s| format!("{} ({})", s.key, s.doc))
        .collect::<Vec<_>>()
        .join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(items: &[&str]) -> SettingValues {
        parse_assignments(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn assignments_parse_numbers_and_flags_and_reject_the_rest() {
        let v = vals(&["zeta=0.5", "clip=false", "cg_iters = 7"]);
        assert_eq!(v["zeta"], SettingValue::Number(0.5));
        assert_eq!(v["clip"], SettingValue::Flag(false));
        assert_eq!(v["cg_iters"], SettingValue::Number(7.0));
        for bad in ["zeta", "=1", "zeta=abc"] {
            assert!(parse_assignment(bad).is_err(), "{bad}");
        }
        let twice = parse_assignments(&["a=1".into(), "a=2".into()]).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
    }

    #[test]
    fn every_sampler_takes_its_settings_and_refuses_others_by_name() {
        let d = apply_dps(DpsSettings::default(), &vals(&["zeta=2", "eta=0.5"])).unwrap();
        assert_eq!(d.zeta, 2.0);
        assert_eq!(d.update, DpsUpdate::Ddim { eta: 0.5 });
        let d = apply_dds(DdsSettings::default(), &vals(&["gamma=3", "cg_iters=2"])).unwrap();
        assert_eq!((d.gamma, d.cg_iters), (3.0, 2));
        let r = apply_reddiff(RedDiffSettings::default(), &vals(&["lambda=1", "lr=0.05"])).unwrap();
        assert_eq!((r.lambda, r.lr), (1.0, 0.05));
        let f = apply_flair(FlairSettings::default(), &vals(&["weight=2", "t_end=0.3"])).unwrap();
        assert_eq!((f.lambda_scale, f.t_end), (2.0, 0.3));
        let s = apply_smc(SmcSettings::tds(), &vals(&["twist_scale=3", "clip=false"])).unwrap();
        assert_eq!((s.twist_scale, s.clip), (3.0, false));
        // A setting the sampler does not have names the sampler's settings.
        let e = apply_dps(DpsSettings::default(), &vals(&["gamma=1"])).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("dps has no setting `gamma`") && m.contains("zeta"),
            "{m}"
        );
        // Kinds and bounds.
        for (who, bad) in [
            ("dds", "cg_iters=2.5"),
            ("dds", "eta=2"),
            ("dps", "zeta=-1"),
            ("smc", "clip=1"),
            ("smc", "twist_scale=true"),
        ] {
            let e = check(who, &vals(&[bad]));
            assert!(e.is_err(), "{who} {bad}");
        }
        assert!(settings_of("magic").is_err());
        assert!(describe("flair").unwrap().contains("weight"));
    }
}
