//! Results of a run: one JSON object per line in `results.jsonl`, the summary table
//! `results.md`, and the merge of shards.
//!
//! `results.jsonl` is append-only: each finished item is appended as one line with a
//! single write and synced, so a crash can leave at most a partial last line; reading
//! drops such a line (it has no newline) and the next run truncates it away and redoes
//! that item. A complete line that does not parse is corruption and an error.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::suite::Suite;
use crate::error::{Error, Result};

/// One (image or volume, task, method, seed) result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The item's position in the suite's full plan (the same whatever `--limit`,
    /// `--shard` or `--methods` selected): merged shards are sorted by it.
    pub item: usize,
    pub suite: String,
    /// The image id (or the volume id in volume mode).
    pub image: String,
    pub task: String,
    pub method: String,
    pub seed: u64,
    /// dB, with the suite's `range` span as data range (volume: mean over slices);
    /// `+inf` (written as `null`) for an exact reconstruction.
    #[serde(deserialize_with = "null_as_inf")]
    pub psnr: f64,
    pub ssim: f64,
    pub nrmse: f64,
    /// Denoiser evaluations (0 for classical methods).
    pub nfe: usize,
    /// Vector-Jacobian products through the denoiser.
    pub vjps: usize,
    /// Wall time of the reconstruction (measurement simulation excluded).
    pub seconds: f64,
    /// Peak resident memory of the process during the item, MiB: the high-water mark is
    /// reset before each item (Linux), but memory the allocator kept from earlier items
    /// still counts, so this is an upper bound on the item's own need (`None` where the
    /// platform does not report it).
    pub peak_mib: Option<f64>,
    /// What ran (the sampler's description with its settings, or the classical method).
    pub detail: String,
    /// Volume mode: per-slice PSNR / SSIM / NRMSE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<SliceMetrics>,
    /// Network work: evaluations of the network on one image, a VJP through it counted as
    /// 2 (particles and samples multiply); 0 for classical methods. `None` in records of
    /// older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<f64>,
    /// Methods that return an ensemble (SMC; `samples >= 2`): calibration of its std map
    /// and, for SMC, the weight diagnostics (ESS per step, resamplings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<super::coverage::EnsembleStats>,
}

/// An item that failed (the sampler or solver returned an error). Failures are kept in
/// `failures.jsonl`, not in `results.jsonl`, so a rerun tries them again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub item: usize,
    pub image: String,
    pub task: String,
    pub method: String,
    pub seed: u64,
    pub error: String,
}

/// Reads `failures.jsonl` (absent: none), keyed by item.
pub fn read_failures(path: &Path) -> Result<BTreeMap<usize, Failure>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(Error::file(path, format!("cannot read: {e}"))),
    };
    let mut out = BTreeMap::new();
    for (k, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let f: Failure = serde_json::from_str(line).map_err(|e| {
            Error::file(path, format!("line {} is not a failure record: {e}", k + 1))
        })?;
        out.insert(f.item, f);
    }
    Ok(out)
}

/// Writes `failures.jsonl` atomically, or removes it when there are none.
pub fn write_failures(path: &Path, failures: &BTreeMap<usize, Failure>) -> Result<()> {
    if failures.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::file(path, e)),
            _ => Ok(()),
        };
    }
    let mut lines = Vec::new();
    for f in failures.values() {
        lines.push(serde_json::to_string(f).map_err(|e| Error::file(path, e))?);
    }
    write_lines(path, &lines)
}

/// Per-slice metrics of a volume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SliceMetrics {
    #[serde(deserialize_with = "vec_null_as_inf")]
    pub psnr: Vec<f64>,
    pub ssim: Vec<f64>,
    pub nrmse: Vec<f64>,
}

fn null_as_inf<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
}

fn vec_null_as_inf<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|v| v.unwrap_or(f64::INFINITY))
        .collect())
}

impl Record {
    /// The record without its cost fields (time, memory): what must agree between a
    /// sharded and an unsharded run.
    pub fn quality(&self) -> Record {
        Record {
            seconds: 0.0,
            peak_mib: None,
            ..self.clone()
        }
    }
}

/// The records of a `results.jsonl`, and the byte length of its complete lines (shorter
/// than the file when a crash left a partial last line).
pub fn read_records(path: &Path) -> Result<(Vec<Record>, u64)> {
    let (lines, valid) = read_lines(path)?;
    Ok((lines.into_iter().map(|(r, _)| r).collect(), valid))
}

/// Like [`read_records`], with each record's line as written: merging copies lines
/// verbatim, so no value goes through a second float parse-and-print (serde_json's default
/// float parser can be one ulp off, and merged results must equal the shards' exactly).
pub fn read_lines(path: &Path) -> Result<(Vec<(Record, String)>, u64)> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(Error::file(path, format!("cannot read: {e}"))),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&bytes[..complete])
        .map_err(|e| Error::file(path, format!("not UTF-8 text: {e}")))?;
    let mut out = Vec::new();
    for (k, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line).map_err(|e| {
            Error::file(
                path,
                format!(
                    "line {} is not a result record ({e}); the file is corrupt: move it away and rerun",
                    k + 1
                ),
            )
        })?;
        out.push((r, line.to_string()));
    }
    Ok((out, complete as u64))
}

/// Appends results to a `results.jsonl`, one line per record, each with a single write
/// followed by a sync.
pub struct Appender {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl Appender {
    /// Opens `path` for appending after cutting it to `valid_len` bytes (dropping a
    /// partial last line left by a crash).
    pub fn open(path: &Path, valid_len: u64) -> Result<Appender> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::file(path, format!("cannot open for appending: {e}")))?;
        let len = file.metadata().map_err(|e| Error::file(path, e))?.len();
        if len > valid_len {
            file.set_len(valid_len).map_err(|e| {
                Error::file(path, format!("cannot drop the partial last line: {e}"))
            })?;
        }
        Ok(Appender {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r).map_err(|e| Error::file(&self.path, e))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .map_err(|e| Error::file(&self.path, format!("cannot append a result: {e}")))
    }
}

/// An exclusive hold on an output directory: an advisory `flock` on `DIR/.lock`, so two
/// runs never append to one `results.jsonl`. The kernel releases it when the process
/// ends, however it ends, so a killed run leaves no stale lock.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// The lock file's name inside an output directory.
    pub const NAME: &'static str = ".lock";

    /// Takes the lock on `dir` (which must exist), or fails at once, saying why, when
    /// another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        use std::os::fd::AsRawFd;
        let path = dir.join(Self::NAME);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::file(&path, format!("cannot create the lock file: {e}")))?;
        // SAFETY: flock on a file descriptor we own, for as long as `file` lives.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(Error::file(
                dir,
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    "another `posterior bench` is writing to this directory (it holds .lock): \
                     wait for it to finish, or give another --out"
                        .to_string()
                } else {
                    format!("cannot lock the output directory: {e}")
                },
            ));
        }
        Ok(DirLock { _file: file })
    }
}

/// Writes lines (as read by [`read_lines`]) as a `results.jsonl`, atomically.
pub fn write_lines(path: &Path, lines: &[String]) -> Result<()> {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    crate::io::write_atomic(path, |tmp| {
        std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::file(path, e))
    })
}

/// Mean and sample standard deviation (0 for one value); the mean of PSNR values is
/// `+inf` if any is.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 || !mean.is_finite() {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// The summary tables: per task, one row per method with mean ± sample std over images
/// and seeds. The `## Quality` section depends only on the records' quality fields, so it
/// is identical for a sharded-and-merged run and an unsharded one; `## Cost` (time,
/// memory) and `## Run` (machine, date) are not.
pub fn summary(
    suite: &Suite,
    records: &[Record],
    failures: &BTreeMap<usize, Failure>,
    run_notes: &str,
) -> String {
    let mut by: BTreeMap<(usize, usize), Vec<&Record>> = BTreeMap::new();
    for r in records {
        let t = suite.tasks.iter().position(|t| t.name == r.task);
        let m = suite.methods.iter().position(|m| m.name == r.method);
        if let (Some(t), Some(m)) = (t, m) {
            by.entry((t, m)).or_default().push(r);
        }
    }
    let mut s = format!("# Suite `{}`\n\n", suite.name);
    if !suite.description.is_empty() {
        s.push_str(&format!("{}\n\n", suite.description.trim()));
    }
    let unit = if suite.volume.is_some() {
        "volumes"
    } else {
        "images"
    };
    s.push_str(&format!(
        "Mean ± sample standard deviation over {unit} and seeds; PSNR with data range {} (the suite's range {:?}).\n\n## Quality\n\n",
        suite.range[1] - suite.range[0],
        suite.range
    ));
    for (ti, task) in suite.tasks.iter().enumerate() {
        let rows: Vec<_> = (0..suite.methods.len())
            .filter_map(|mi| by.get(&(ti, mi)).map(|v| (mi, v)))
            .collect();
        if rows.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "### {} — `{}`, noise `{}`\n\n| method | n | PSNR (dB) | SSIM | NRMSE | NFE | work |\n|---|---|---|---|---|---|---|\n",
            task.name, task.op, task.noise
        ));
        for (mi, v) in &rows {
            let col = |f: fn(&Record) -> f64| mean_std(&v.iter().map(|r| f(r)).collect::<Vec<_>>());
            let (p, ps) = col(|r| r.psnr);
            let (q, qs) = col(|r| r.ssim);
            let (e, es) = col(|r| r.nrmse);
            let (nfe, _) = col(|r| r.nfe as f64);
            let work = match v.iter().map(|r| r.work).collect::<Option<Vec<f64>>>() {
                Some(w) => format!("{:.0}", mean_std(&w).0),
                None => "-".into(),
            };
            s.push_str(&format!(
                "| {} | {} | {p:.2} ± {ps:.2} | {q:.4} ± {qs:.4} | {e:.4} ± {es:.4} | {nfe:.0} | {work} |\n",
                method_label(suite, *mi),
                v.len()
            ));
        }
        s.push('\n');
    }
    s.push_str(&uncertainty_section(suite, &by));
    s.push_str("## Cost\n\n| task | method | seconds | peak memory (MiB) |\n|---|---|---|---|\n");
    for ((ti, mi), v) in &by {
        let (t, ts) = mean_std(&v.iter().map(|r| r.seconds).collect::<Vec<_>>());
        let peak = v
            .iter()
            .filter_map(|r| r.peak_mib)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        s.push_str(&format!(
            "| {} | {} | {t:.2} ± {ts:.2} | {} |\n",
            suite.tasks[*ti].name,
            suite.methods[*mi].name,
            peak.map_or("-".to_string(), |p| format!("{p:.0}"))
        ));
    }
    if !failures.is_empty() {
        s.push_str(
            "\n## Failures\n\nItems that ended in an error (not in the tables above; see failures.jsonl):\n\n| task | method | items | first error |\n|---|---|---|---|\n",
        );
        let mut by: BTreeMap<(String, String), Vec<&Failure>> = BTreeMap::new();
        for f in failures.values() {
            by.entry((f.task.clone(), f.method.clone()))
                .or_default()
                .push(f);
        }
        for ((task, method), v) in &by {
            s.push_str(&format!(
                "| {task} | {method} | {} | {} |\n",
                v.len(),
                v[0].error.replace('|', "/")
            ));
        }
    }
    s.push_str(&format!("\n## Run\n\n{run_notes}\n"));
    s
}

/// The label of method `mi` in the tables.
fn method_label(suite: &Suite, mi: usize) -> &str {
    &suite.methods[mi].name
}

/// `## Uncertainty`: per task, the methods that returned an ensemble, with the calibration
/// of their std maps ([`super::coverage`]) and, for SMC, the weights' health. Empty when no
/// record has an ensemble.
fn uncertainty_section(suite: &Suite, by: &BTreeMap<(usize, usize), Vec<&Record>>) -> String {
    let mut rows = String::new();
    for ((ti, mi), v) in by {
        let stats: Vec<&super::coverage::EnsembleStats> =
            v.iter().filter_map(|r| r.ensemble.as_ref()).collect();
        if stats.is_empty() {
            continue;
        }
        let (cov, cs) = mean_std(&stats.iter().map(|e| e.coverage90).collect::<Vec<_>>());
        let corr: Vec<f64> = stats.iter().filter_map(|e| e.std_error_corr).collect();
        let corr = if corr.is_empty() {
            "-".to_string()
        } else {
            format!("{:.2}", mean_std(&corr).0)
        };
        let (sd, _) = mean_std(&stats.iter().map(|e| e.mean_std).collect::<Vec<_>>());
        let finals: Vec<f64> = stats
            .iter()
            .filter_map(|e| e.ess_per_step.last().copied())
            .collect();
        let mins: Vec<f64> = stats.iter().filter_map(|e| e.ess_min()).collect();
        let resamples: Vec<f64> = stats
            .iter()
            .filter_map(|e| e.resamples.map(|r| r as f64))
            .collect();
        let fmt = |v: &[f64], d: usize| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.*}", d, mean_std(v).0)
            }
        };
        rows.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} ± {:.1} | {corr} | {sd:.4} | {} | {} | {} |\n",
            suite.tasks[*ti].name,
            method_label(suite, *mi),
            stats.len(),
            stats[0].members,
            100.0 * cov,
            100.0 * cs,
            fmt(&finals, 2),
            fmt(&mins, 2),
            fmt(&resamples, 1),
        ));
    }
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "## Uncertainty\n\nMethods that return an ensemble: coverage = % of pixels whose truth lies in the central 90% interval `mean ± 1.645 std` (calibrated: 90); corr = correlation between the std map and the absolute error; mean std in image units; for SMC the final ESS, the smallest ESS over the steps (both means over samples, before resampling) and the resamplings per run.\n\n| task | method | n | members | coverage (%) | corr | mean std | final ESS | min ESS | resamplings |\n|---|---|---|---|---|---|---|---|---|---|\n{rows}\n"
    )
}

/// The `## Quality` section of a summary (for comparing runs).
pub fn quality_section(summary: &str) -> &str {
    let start = summary.find("## Quality").unwrap_or(0);
    let end = summary.find("## Cost").unwrap_or(summary.len());
    &summary[start..end.max(start)]
}

/// Merges the records (with their lines) of several runs of the same suite: the union by
/// item, sorted by item. An item recorded twice must agree in its quality fields (else the
/// runs were not of the same suite and settings), and the first is kept.
pub fn merge_records(runs: Vec<Vec<(Record, String)>>) -> Result<Vec<(Record, String)>> {
    let mut all: BTreeMap<usize, (Record, String)> = BTreeMap::new();
    for run in runs {
        for (r, line) in run {
            match all.get(&r.item) {
                Some((prev, _)) if prev.quality() != r.quality() => {
                    return Err(Error::Invalid(format!(
                        "item {} ({} / {} / {} / seed {}) was run twice with different results: the runs did not use the same suite and settings",
                        r.item, r.image, r.task, r.method, r.seed
                    )))
                }
                Some(_) => {}
                None => {
                    all.insert(r.item, (r, line));
                }
            }
        }
    }
    Ok(all.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(item: usize, psnr: f64) -> Record {
        Record {
            item,
            suite: "s".into(),
            image: format!("im-{item}"),
            task: "t".into(),
            method: "m".into(),
            seed: 0,
            psnr,
            ssim: 0.5,
            nrmse: 0.1,
            nfe: 0,
            vjps: 0,
            seconds: 1.0,
            peak_mib: Some(10.0),
            detail: "cg".into(),
            slices: None,
            work: Some(0.0),
            ensemble: None,
        }
    }

    #[test]
    fn partial_last_line_is_dropped_and_truncated_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.jsonl");
        let mut a = Appender::open(&p, 0).unwrap();
        a.append(&rec(0, 20.0)).unwrap();
        a.append(&rec(1, f64::INFINITY)).unwrap();
        drop(a);
        // A crash in the middle of the third line.
        let full = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{full}{{\"item\":2,\"sui")).unwrap();
        let (recs, valid) = read_records(&p).unwrap();
        assert_eq!(recs, vec![rec(0, 20.0), rec(1, f64::INFINITY)]);
        assert_eq!(valid as usize, full.len());
        let mut a = Appender::open(&p, valid).unwrap();
        a.append(&rec(2, 30.0)).unwrap();
        let (recs, _) = read_records(&p).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[2], rec(2, 30.0));
        // A corrupt complete line is an error naming the line.
        std::fs::write(&p, "{\"item\":0}\n").unwrap();
        let e = read_records(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn merge_sorts_by_item_and_rejects_conflicts() {
        let l = |r: Record| {
            let line = serde_json::to_string(&r).unwrap();
            (r, line)
        };
        let m = merge_records(vec![
            vec![l(rec(2, 1.0)), l(rec(0, 1.0))],
            vec![l(rec(1, 1.0))],
        ])
        .unwrap();
        assert_eq!(
            m.iter().map(|r| r.0.item).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        let mut other = rec(1, 1.0);
        other.seconds = 5.0; // cost fields may differ
        assert!(merge_records(vec![vec![l(rec(1, 1.0))], vec![l(other)]]).is_ok());
        assert!(merge_records(vec![vec![l(rec(1, 1.0))], vec![l(rec(1, 2.0))]]).is_err());
        // Lines are kept verbatim: the digits written are the digits merged.
        let text = r#"{"item":0,"suite":"s","image":"i","task":"t","method":"m","seed":0,"psnr":11.778427957339371,"ssim":0.5,"nrmse":0.1,"nfe":0,"vjps":0,"seconds":1.0,"peak_mib":null,"detail":"d"}"#;
        let r: Record = serde_json::from_str(text).unwrap();
        let m = merge_records(vec![vec![(r, text.to_string())]]).unwrap();
        assert_eq!(m[0].1, text);
    }

    #[test]
    fn failures_round_trip_and_are_listed_apart_from_the_tables() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("failures.jsonl");
        let f = Failure {
            item: 3,
            image: "im-3".into(),
            task: "t".into(),
            method: "m".into(),
            seed: 0,
            error: "smc: every particle has zero weight".into(),
        };
        let mut all = BTreeMap::new();
        all.insert(3, f.clone());
        write_failures(&p, &all).unwrap();
        assert_eq!(read_failures(&p).unwrap(), all);
        let suite: Suite = toml::from_str(
            "name = \"s\"\nrange = [0.0, 1.0]\n[[data]]\nname = \"a\"\nkind = \"files\"\npath = \".\"\nfiles = [\"x\"]\n[[tasks]]\nname = \"t\"\nop = \"blur\"\n[[methods]]\nname = \"m\"\nmethod = \"cg\"\n",
        )
        .unwrap();
        let md = summary(&suite, &[rec(0, 20.0)], &all, "notes");
        assert!(
            md.contains("| t | m | 1 | smc: every particle has zero weight |"),
            "{md}"
        );
        assert!(
            quality_section(&md).contains("| m | 1 | 20.00 ± 0.00 |"),
            "{md}"
        );
        write_failures(&p, &BTreeMap::new()).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn a_second_writer_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let e = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("another `posterior bench`"), "{e}");
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn mean_and_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        // Sample variance: (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3.
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[7.0]), (7.0, 0.0));
    }
}
