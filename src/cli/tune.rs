//! `posterior tune`: choose methods' settings on a suite's validation images and write them
//! beside the suite (`SUITE.tuned.toml`), where `posterior bench` adds a tuned row per
//! method.

use crate::bench::tune::{self, TuneRequest};
use crate::bench::SuiteFile;
use crate::error::{Error, Result};

use super::TuneArgs;

pub fn run(a: &TuneArgs) -> Result<()> {
    let params = a
        .params
        .as_ref()
        .map(|p| {
            p.iter()
                .map(|item| {
                    item.split_once(':')
                        .map(|(m, k)| (m.trim().to_string(), k.trim().to_string()))
                        .ok_or_else(|| {
                            Error::Invalid(format!(
                                "--params `{item}`: expected METHOD:SETTING, e.g. dps:zeta"
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    let req = TuneRequest {
        methods: a.methods.clone(),
        params,
        tasks: a.tasks.clone(),
        budget: a.budget,
    };
    let file = SuiteFile::read(&a.suite)?;
    let out = a.out.clone().unwrap_or_else(|| tune::tuned_path(&a.suite));
    let tuned = tune::tune(&file, &req)?;
    let mut text = format!(
        "# Written by `posterior tune` on {}: settings chosen by mean PSNR on the validation\n\
         # images below (never the suite's test images), {} evaluation(s) per method and task.\n\
         # `posterior bench` adds a NAME-tuned row for each method listed here.\n",
        tuned.date, tuned.budget
    );
    text.push_str(
        &toml::to_string(&tuned)
            .map_err(|e| Error::Invalid(format!("cannot write the tuned settings: {e}")))?,
    );
    crate::io::write_atomic(&out, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::file(tmp, e))
    })?;
    for t in &tuned.tuned {
        println!(
            "{} / {}: {:.2} dB -> {:.2} dB with {} ({} evaluations)",
            t.method,
            t.task,
            t.default_score,
            t.score,
            tune::describe(t),
            t.evaluations
        );
    }
    println!("{}: tuned settings written", out.display());
    Ok(())
}
