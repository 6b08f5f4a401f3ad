//! `posterior bench` end to end on tiny suites (seconds): sharded runs in two processes
//! merge to the unsharded run, resume after a torn write, validation before any work,
//! volume mode and the ensemble's uncertainty map.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ndarray::{Array4, ArrayD};
use posterior::bench::results::{quality_section, read_records};
use posterior::bench::Record;

fn posterior() -> Command {
    Command::cargo_bin("posterior").expect("the posterior binary is built for tests")
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "command failed:\nstdout: {so}\nstderr: {se}"
    );
    so.into_owned()
}

fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "command should have failed: {cmd:?}");
    assert!(se.contains("error"), "no error message: {se}");
    assert!(!se.contains("panicked"), "panicked: {se}");
    se
}

/// A dataset directory as notebooks/data.py writes it: `n` smooth `size x size` images in
/// [-1, 1] (float32, to_model_range identity) as the test split.
fn dataset(dir: &Path, n: usize, size: usize) -> PathBuf {
    let d = dir.join("set");
    std::fs::create_dir_all(&d).unwrap();
    let imgs = Array4::from_shape_fn((n, 1, size, size), |(k, _, i, j)| {
        let (y, x) = (i as f32 / size as f32, j as f32 / size as f32);
        let r2 = (y - 0.5).powi(2) + (x - 0.3 - 0.1 * k as f32).powi(2);
        (if r2 < 0.08 { 0.6 } else { -0.8 }) + 0.2 * (6.0 * x + k as f32).sin()
    });
    posterior::io::write_npy(&d.join("test.npy"), imgs.view().into_dyn()).unwrap();
    std::fs::write(
        d.join("manifest.json"),
        r#"{"format": "posterior-dataset-v1",
            "files": {"test": {"file": "test.npy"}},
            "to_model_range": {"scale": 1.0, "offset": 0.0}}"#,
    )
    .unwrap();
    d
}

fn suite(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("suite.toml");
    std::fs::write(&p, body).unwrap();
    p
}

const CLASSICAL: &str = r#"
name = "tiny"
range = [0.0, 1.0]
seeds = [0, 1]
[[data]]
name = "blobs"
kind = "dataset"
path = "set"
recipe = "make it by hand"
indices = [0, 1, 2, 3, 4]
[[tasks]]
name = "blur"
op = "blur:kernel=gaussian,sigma=1"
noise = "gaussian:sigma=0.02"
[[tasks]]
name = "holes"
op = "inpaint:mask=random,fraction=0.5"
noise = "none"
[[methods]]
name = "adjoint"
method = "adjoint"
[[methods]]
name = "cg"
method = "cg"
iters = 10
tasks = ["blur"]
[[methods]]
name = "tv"
method = "tv"
iters = 30
"#;

fn records(dir: &Path) -> Vec<Record> {
    read_records(&dir.join("results.jsonl")).unwrap().0
}

fn quality(v: &[Record]) -> Vec<Record> {
    v.iter().map(Record::quality).collect()
}

/// The lines of a results.jsonl as written, without the cost fields (`seconds`,
/// `peak_mib`): compared as text, so not even a last digit may differ.
fn quality_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = (
                l.find(",\"seconds\":").unwrap(),
                l.find(",\"detail\":").unwrap(),
            );
            format!("{}{}", &l[..a], &l[b..])
        })
        .collect()
}

#[test]
fn two_shards_in_two_processes_merge_to_the_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    dataset(root, 5, 16);
    let s = suite(root, CLASSICAL);
    let single = root.join("single");
    ok(posterior().arg("bench").arg(&s).arg("--out").arg(&single));
    // Two shards at once, as two processes (as a scheduler would run them).
    let children: Vec<_> = (1..=2)
        .map(|k| {
            std::process::Command::new(env!("CARGO_BIN_EXE_posterior"))
                .arg("bench")
                .arg(&s)
                .args(["--shard", &format!("{k}/2"), "--out"])
                .arg(root.join(format!("shard{k}")))
                .output()
                .expect("shard process starts")
        })
        .collect();
    for c in &children {
        assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    }
    let merged = root.join("merged");
    ok(posterior()
        .args(["bench", "merge"])
        .arg(root.join("shard2"))
        .arg(root.join("shard1"))
        .arg("--out")
        .arg(&merged));

    let a = records(&single);
    // 5 images x 2 seeds x (blur: 3 methods + holes: 2 methods).
    assert_eq!(a.len(), 5 * 2 * 5);
    assert_eq!(records(&root.join("shard1")).len(), 3 * 2 * 5);
    assert_eq!(quality(&a), quality(&records(&merged)));
    assert_eq!(quality_lines(&single), quality_lines(&merged));
    let md = |d: &Path| std::fs::read_to_string(d.join("results.md")).unwrap();
    assert_eq!(quality_section(&md(&single)), quality_section(&md(&merged)));
    assert!(quality_section(&md(&single)).contains("| tv | 10 |"));
    for im in 0..5 {
        assert!(merged.join(format!("grids/blobs-{im}.png")).is_file());
    }

    // The recorded PSNR is that of the stored reconstruction against the image, computed
    // here independently: 10 log10(1 / MSE) on [0, 1] images (range span 1).
    let r = a
        .iter()
        .find(|r| r.image == "blobs-3" && r.task == "holes" && r.method == "tv" && r.seed == 1)
        .unwrap();
    let x = posterior::io::read_npy(&single.join("recon/blobs-3/holes/tv-s1.npy")).unwrap();
    let all = posterior::io::read_npy(&root.join("set/test.npy")).unwrap();
    let truth: ArrayD<f32> = all
        .index_axis(ndarray::Axis(0), 3)
        .mapv(|v| (v + 1.0) / 2.0);
    let mse = x
        .iter()
        .zip(truth.iter())
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum::<f64>()
        / x.len() as f64;
    // Same f32 data, same f64 formula up to summation order.
    assert!(
        (r.psnr - 10.0 * (1.0 / mse).log10()).abs() < 1e-9,
        "{} vs {mse}",
        r.psnr
    );
    // Zero-filling leaves 50 % of the pixels at 0; 30 TV iterations fill them in (about
    // +2.4 dB here): TV must beat the adjoint by more than 1 dB.
    let adj = a
        .iter()
        .find(|q| q.image == "blobs-3" && q.task == "holes" && q.method == "adjoint" && q.seed == 1)
        .unwrap();
    assert!(
        r.psnr > adj.psnr + 1.0,
        "tv {} vs adjoint {}",
        r.psnr,
        adj.psnr
    );
}

#[test]
fn a_rerun_resumes_and_redoes_only_a_torn_last_line() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    dataset(root, 5, 16);
    let s = suite(root, CLASSICAL);
    let out = root.join("out");
    ok(posterior()
        .arg("bench")
        .arg(&s)
        .args(["--limit", "2", "--out"])
        .arg(&out));
    let first = records(&out);
    assert_eq!(first.len(), 2 * 2 * 5);
    // A crash while writing the 8th record: 7 complete lines and half of the 8th.
    let text = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let torn = format!(
        "{}\n{}",
        lines[..7].join("\n"),
        &lines[7][..lines[7].len() / 2]
    );
    std::fs::write(out.join("results.jsonl"), torn).unwrap();
    let so = ok(posterior()
        .arg("bench")
        .arg(&s)
        .args(["--limit", "3", "--out"])
        .arg(&out));
    // 30 items planned for 3 images: 7 were done, 23 run (the torn one and image 3's 10).
    assert!(so.contains("23 item(s) run, 7 already done"), "{so}");
    let again = records(&out);
    assert_eq!(again.len(), 30);
    assert_eq!(quality(&again[..20]), quality(&first));
    // A rerun of a finished suite does nothing.
    let so = ok(posterior()
        .arg("bench")
        .arg(&s)
        .args(["--limit", "3", "--out"])
        .arg(&out));
    assert!(so.contains("0 item(s) run, 30 already done"), "{so}");
    // An edited suite is not mixed into the same directory.
    let s2 = suite(root, &CLASSICAL.replace("iters = 30", "iters = 31"));
    let e = fails(posterior().arg("bench").arg(&s2).arg("--out").arg(&out));
    assert!(e.contains("different suite"), "{e}");
}

#[test]
fn bad_suites_fail_before_any_work_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    dataset(root, 2, 16);
    let out = root.join("never");
    let check = |body: &str, extra: &[&str], want: &str| {
        let s = suite(root, body);
        let e = fails(
            posterior()
                .arg("bench")
                .arg(&s)
                .args(extra)
                .arg("--out")
                .arg(&out),
        );
        assert!(e.contains(want), "expected `{want}` in: {e}");
        assert!(!out.exists(), "work started for: {want}");
    };
    // A bad data path: the path and the recipe that makes it.
    check(
        &CLASSICAL.replace("path = \"set\"", "path = \"nowhere\""),
        &[],
        "nowhere: data `blobs`: directory not found; make it with: make it by hand",
    );
    // An index past the split.
    check(CLASSICAL, &[], "index 2 is out of range");
    let two = CLASSICAL.replace("indices = [0, 1, 2, 3, 4]", "indices = [0, 1]");
    // Unknown methods, in the file and on the command line.
    check(
        &two.replace("method = \"tv\"", "method = \"magic\""),
        &[],
        "unknown method `magic`",
    );
    check(
        &two.replace("method = \"tv\"\niters = 30", "sampler = \"magic\""),
        &[],
        "unknown sampler `magic`",
    );
    check(
        &two,
        &["--methods", "cg,nope"],
        "--methods: unknown method `nope`",
    );
    // Operators that cannot act on the images, or methods that do not apply.
    check(
        &two.replace("sigma=1\"", "sigma=1,bogus=2\""),
        &[],
        "task `blur`: blur: unknown key `bogus`",
    );
    check(
        &two.replace("inpaint:mask=random,fraction=0.5", "sr:factor=3"),
        &[],
        "task `holes`",
    );
    check(
        &two.replace("method = \"adjoint\"", "method = \"fbp\""),
        &[],
        "fbp is filtered back-projection",
    );
    // An operator that does not fit the prior: 16x16 images, a 32x32 prior.
    let sampler = two.replace("name = \"tiny\"", "name = \"tiny\"\nprior = \"fmnist-32\"")
        + "[[methods]]\nname = \"dds\"\nsampler = \"dds\"\nsteps = 2\n";
    if posterior::prior::resolve_prior("fmnist-32").is_ok() {
        check(&sampler, &[], "task `blur`, method `dds`");
        check(&sampler, &[], "32");
    } else {
        eprintln!("skipped the prior-fit case: the shipped prior fmnist-32 is absent");
    }
    // A prior that does not exist.
    check(
        &sampler.replace("fmnist-32", "no-such-prior"),
        &[],
        "prior `no-such-prior`",
    );
    // Bad options.
    check(&two, &["--shard", "3/2"], "--shard `3/2`");
    check(&two, &["--limit", "0"], "--limit must be at least 1");
}

/// Volume mode with DDS's 3-D variant, and the SMC uncertainty map in the grid, on the
/// shipped fmnist-32 prior with 2 steps (skipped with a notice where it is absent).
#[test]
fn volume_mode_scores_volumes_and_grids_show_the_ensemble_spread() {
    if posterior::prior::resolve_prior("fmnist-32").is_err() {
        eprintln!("skipped: the shipped prior fmnist-32 is absent");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    dataset(root, 4, 32);
    let body = r#"
name = "vol"
prior = "fmnist-32"
range = [0.0, 1.0]
[[data]]
name = "stack"
kind = "dataset"
path = "set"
indices = [0, 1, 2, 3]
[volume]
slices = 2
[[tasks]]
name = "holes"
op = "inpaint:mask=random,fraction=0.5"
noise = "gaussian:sigma=0.05"
[[methods]]
name = "cg"
method = "cg"
iters = 5
[[methods]]
name = "dds3d"
sampler = "dds-volume"
steps = 2
tv_lambda = 0.1
[[methods]]
name = "smc"
sampler = "smc"
steps = 2
particles = 2
"#;
    let s = suite(root, body);
    let out = root.join("out");
    ok(posterior().arg("bench").arg(&s).arg("--out").arg(&out));
    let r = records(&out);
    assert_eq!(r.len(), 2 * 3);
    for rec in &r {
        let sl = rec
            .slices
            .as_ref()
            .expect("volume records carry per-slice metrics");
        assert_eq!(sl.psnr.len(), 2);
        let mean = (sl.psnr[0] + sl.psnr[1]) / 2.0;
        assert!((rec.psnr - mean).abs() < 1e-12, "{rec:?}");
    }
    let dds = r.iter().find(|q| q.method == "dds3d").unwrap();
    assert_eq!(dds.nfe, 2, "one batched evaluation of both slices per step");
    assert!(dds.detail.contains("dds-volume(2 slices"), "{}", dds.detail);
    assert_eq!(r[0].image, "volume-stack-0");
    let sd =
        posterior::io::read_npy(&out.join("recon/volume-stack-0/holes/smc-s0-std.npy")).unwrap();
    assert_eq!(sd.shape(), &[2, 1, 32, 32]);
    // (With 2 steps the weights may collapse onto one particle: a zero map is possible.)
    assert!(sd.iter().all(|v| v.is_finite() && *v >= 0.0));
    // Grid: truth, measurement, 3 methods, 1 uncertainty map; 96-pixel tiles, 2-pixel gaps.
    let g = image::open(out.join("grids/volume-stack-0.png")).unwrap();
    assert_eq!((g.width(), g.height()), (6 * 98 - 2, 96));
}
