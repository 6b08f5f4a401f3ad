//! `posterior bench`: run a benchmark suite, or merge the output directories of shards.

use indicatif::{ProgressBar, ProgressStyle};

use crate::bench::{self, Event, Plan, RunOptions, SuiteFile};
use crate::error::{Error, Result};

use super::{BenchArgs, BenchCommand};

pub fn run(a: &BenchArgs) -> Result<()> {
    if let Some(BenchCommand::Merge { dirs, out }) = &a.command {
        let records = bench::merge(dirs, out)?;
        println!(
            "{}: merged {} record(s) from {} run(s); table in {}",
            out.display(),
            records.len(),
            dirs.len(),
            out.join("results.md").display()
        );
        return Ok(());
    }
    let suite = a.suite.as_ref().ok_or_else(|| {
        Error::Invalid("give a suite file: posterior bench SUITE.toml --out DIR (or bench merge DIR... --out DIR)".into())
    })?;
    let opts = RunOptions {
        methods: a.methods.clone(),
        limit: a.limit,
        shard: a.shard.as_deref().map(bench::parse_shard).transpose()?,
    };
    if a.out.is_none() && !a.check {
        return Err(Error::Invalid(
            "--out DIR is required (or --check to only validate the suite)".into(),
        ));
    }
    let plan = Plan::new(SuiteFile::read(suite)?, &opts)?;
    let s = &plan.file.suite;
    println!(
        "suite {}: {} image(s), {} unit(s) selected, {} task(s), {} method(s), {} seed(s): {} item(s){}",
        s.name,
        plan.images.len(),
        plan.units.len(),
        s.tasks.len(),
        s.methods.len(),
        s.seeds.len(),
        plan.items.len(),
        plan.prior_info
            .as_ref()
            .map(|p| format!("; prior {}", p.name))
            .unwrap_or_default()
    );
    let out = match &a.out {
        Some(out) if !a.check => out,
        _ => {
            println!("the suite checks out (--check: nothing run)");
            return Ok(());
        }
    };
    let bar = ProgressBar::new(plan.items.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("bench [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let summary = bench::run(&plan, out, &mut |e| match e {
        Event::Start(done, _, label) => {
            bar.set_position(done as u64);
            bar.set_message(label.to_string());
        }
        Event::Skipped(done, _) => bar.set_position(done as u64),
        Event::Failed(label, msg) => {
            let line = format!("warning: {label} failed: {msg}");
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    })?;
    bar.finish_and_clear();
    println!(
        "{}: {} item(s) run, {} already done; {} record(s) in results.jsonl, table in results.md",
        out.display(),
        summary.ran,
        summary.skipped,
        summary.records.len()
    );
    if summary.failed > 0 {
        println!(
            "{} item(s) failed: see {} (a rerun tries them again)",
            summary.failed,
            out.join("failures.jsonl").display()
        );
    }
    Ok(())
}
