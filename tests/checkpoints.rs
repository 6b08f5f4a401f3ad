//! Bring your own checkpoint: guided-diffusion `.pt` files read natively (against the Python
//! converter), diffusers `UNet2DModel` directories and EDM `DhariwalUNet` / `SongUNet`
//! (DDPM++, NCSN++) state dicts as priors (against `diffusers` and the EDM port in
//! notebooks/edm_reference.py), DDS and DPS on each, and hostile or malformed inputs.
//! Fixtures: tests/data/ckpt, written by notebooks/make_ckpt_fixtures.py (references in f64
//! from the stored weights).
//!
//! Tolerance: relative error (max |ours - ref| / max |ref|) < 1e-4, the bound the ADM goldens
//! use (tests/network.rs): the references carry no f32 rounding, an f32 engine lands at
//! ~1e-6..1e-5, and a wrong layer, head order or embedding is off by O(1).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use assert_cmd::Command;
use ndarray::{Array1, Array2, Array4, ArrayD, Ix4};
use posterior::checkpoint::{StateDict, TensorSource};
use posterior::nn::safetensors::SafeTensors;
use posterior::operators::Operator;
use posterior::prior::{Denoiser, ModelCard, NetworkPrior};
use posterior::sample::{Dds, DdsSettings, Dps, DpsSettings, DpsUpdate, Executor, Problem};
use posterior_operators::inpaint::Mask;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn npy4(path: &Path) -> Array4<f32> {
    posterior::io::read_npy(path)
        .unwrap()
        .into_dimensionality::<Ix4>()
        .unwrap()
}

fn npy1(path: &Path) -> Vec<f32> {
    posterior::io::read_npy(path)
        .unwrap()
        .iter()
        .copied()
        .collect()
}

fn rel_err(ours: &ArrayD<f32>, reference: &ArrayD<f32>) -> f64 {
    assert_eq!(ours.shape(), reference.shape());
    let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = ours
        .iter()
        .zip(reference)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale
}

fn open(dir: &Path) -> NetworkPrior {
    NetworkPrior::open(dir.to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"))
}

fn open_err(dir: &Path) -> String {
    NetworkPrior::open(dir.to_str().unwrap())
        .unwrap_err()
        .to_string()
}

fn posterior_cmd() -> Command {
    Command::cargo_bin("posterior").unwrap()
}

fn import(args: &[&str]) -> std::process::Output {
    posterior_cmd().arg("import").args(args).output().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The converter's flags for the guided-diffusion fixture.
fn gd_args() -> Vec<String> {
    serde_json::from_str(&std::fs::read_to_string(data("ckpt/gd/args.json")).unwrap()).unwrap()
}

#[test]
fn guided_diffusion_pt_imports_without_python_like_the_converter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("prior");
    let pt = data("ckpt/gd/ema.pt");
    let mut args = vec![pt.to_str().unwrap().to_string(), "--out".into()];
    args.push(out.to_str().unwrap().into());
    args.extend(gd_args());
    let o = posterior_cmd().arg("import").args(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("state dict in `ema`"));
    // The tensors: those the Python converter wrote for the same checkpoint (it was checked
    // to reproduce tests/data/adm/plain_conv_f16/model.safetensors bit for bit).
    let ours = SafeTensors::read(&out.join("model.safetensors")).unwrap();
    let theirs = SafeTensors::read(&data("adm/plain_conv_f16/model.safetensors")).unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for k in theirs.keys() {
        assert_eq!(
            ours.info(k).unwrap().shape,
            theirs.info(k).unwrap().shape,
            "{k}"
        );
        assert_eq!(
            ours.f32_values(k).unwrap(),
            theirs.f32_values(k).unwrap(),
            "{k}"
        );
    }
    // The cards, parsed: every field, provenance included.
    let card = ModelCard::read(&out.join("model.json")).unwrap();
    let python =
        ModelCard::parse(&std::fs::read_to_string(data("ckpt/gd/converted.json")).unwrap())
            .unwrap();
    assert_eq!(card, python);
    // The raw output: identical to the converter's prior, and to PyTorch's within 1e-4.
    let a = open(&out);
    let b = open(&data("adm/plain_conv_f16"));
    let x = npy4(&data("adm/plain_conv_f16/x.npy"));
    let t: Array1<i64> = ndarray_npy::read_npy(data("adm/plain_conv_f16/t.npy")).unwrap();
    let steps: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let ya = a.raw(x.view(), &steps).unwrap();
    assert_eq!(ya, b.raw(x.view(), &steps).unwrap());
    let e = rel_err(
        &ya.into_dyn(),
        &npy4(&data("adm/plain_conv_f16/out.npy")).into_dyn(),
    );
    assert!(e < 1e-4, "{e}");
    // A second import into the same directory needs --force.
    let again = posterior_cmd().arg("import").args(&args).output().unwrap();
    assert!(!again.status.success() && stderr(&again).contains("--force"));
}

#[test]
fn nested_checkpoints_pick_a_key_and_name_what_is_there() {
    let pt = data("ckpt/gd/ema.pt");
    let sd = StateDict::read_pt(&pt, None).unwrap();
    assert_eq!(sd.picked(), Some("ema"));
    assert_eq!(sd.tensor_shape("out.2.weight"), Some(vec![1, 32, 3, 3]));
    let e = StateDict::read_pt(&pt, Some("model"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ema.pt") && e.contains("no entry `model`") && e.contains("`ema`"),
        "{e}"
    );
    let e = StateDict::read_pt(&pt, Some("step"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`step`") && e.contains("an int"), "{e}");
}

/// Forward, VJP and denoiser golden checks of a `diffusers` directory `dir`.
fn check_diffusers(prior: &NetworkPrior, dir: &Path) {
    let x = npy4(&dir.join("x.npy"));
    let t: Array1<i64> = ndarray_npy::read_npy(dir.join("t.npy")).unwrap();
    let steps: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let out = prior.raw(x.view(), &steps).unwrap();
    let e_out = rel_err(
        &out.clone().into_dyn(),
        &npy4(&dir.join("out.npy")).into_dyn(),
    );
    let v = npy4(&dir.join("v.npy"));
    let (_, vjp) = prior
        .network()
        .forward_vjp(x.view(), &steps, v.view())
        .unwrap();
    let e_vjp = rel_err(&vjp.into_dyn(), &npy4(&dir.join("vjp.npy")).into_dyn());
    // The scheduler mapping: step n is t = (n + 1) / T on the prior's scaled-linear path,
    // and a v-prediction network's Tweedie estimate is sqrt(abar) x - sqrt(1 - abar) v.
    let ts: Vec<f32> = t.iter().map(|&n| (n as f32 + 1.0) / 1000.0).collect();
    let x0 = prior.x0(x.view().into_dyn(), &ts).unwrap();
    let e_x0 = rel_err(&x0, &npy4(&dir.join("x0.npy")).into_dyn());
    eprintln!("diffusers: forward {e_out:.2e}, vjp {e_vjp:.2e}, x0 {e_x0:.2e}");
    assert!(
        e_out < 1e-4 && e_vjp < 1e-4 && e_x0 < 1e-4,
        "{e_out} {e_vjp} {e_x0}"
    );
    // The check can fail: a shifted timestep moves the output far beyond the tolerance.
    let shifted: Vec<f32> = steps.iter().map(|s| s + 1.0).collect();
    let moved = prior.raw(x.view(), &shifted).unwrap();
    assert!(rel_err(&moved.into_dyn(), &npy4(&dir.join("out.npy")).into_dyn()) > 1e-3);
}

#[test]
fn diffusers_unet_directory_is_a_prior_matching_diffusers() {
    let dir = data("ckpt/diffusers");
    let prior = open(&dir);
    assert_eq!(prior.info().sample_shape, vec![2, 16, 16]);
    assert_eq!(prior.card().architecture.type_name(), "diffusers-unet2d");
    check_diffusers(&prior, &dir);
    // A pipeline directory (unet/, scheduler/) loads the same network.
    let tmp = tempfile::tempdir().unwrap();
    let (u, s) = (tmp.path().join("unet"), tmp.path().join("scheduler"));
    std::fs::create_dir_all(&u).unwrap();
    std::fs::create_dir_all(&s).unwrap();
    for f in ["config.json", "diffusion_pytorch_model.safetensors"] {
        std::fs::copy(dir.join(f), u.join(f)).unwrap();
    }
    std::fs::copy(
        dir.join("scheduler_config.json"),
        s.join("scheduler_config.json"),
    )
    .unwrap();
    std::fs::write(tmp.path().join("model_index.json"), "{}").unwrap();
    let piped = open(tmp.path());
    check_diffusers(&piped, &dir);
    // Imported into a prior directory (card + safetensors), the same network again.
    let out = tmp.path().join("imported");
    let o = import(&[dir.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_diffusers(&open(&out), &dir);
}

/// The time on `prior`'s path where the noise level `s / a` is `sigma` (bisection: it
/// increases with t on every path).
fn time_of_sigma(prior: &NetworkPrior, sigma: f64) -> f32 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        let (a, s) = prior.schedule().coeffs(mid);
        if s / a < sigma {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let t = 0.5 * (lo + hi);
    let (a, s) = prior.schedule().coeffs(t);
    assert!(
        (s / a / sigma - 1.0).abs() < 1e-9,
        "sigma {sigma} is off the path"
    );
    t as f32
}

/// The EDM goldens of `dir` (as make_ckpt_fixtures.py writes them): the network `F` at its
/// own noise labels, its VJP, and EDM's `D(x; sigma)` through the prior's denoiser at the
/// time of each `sigma`, where the prior's input is `x_t = a x` (EDM's `x` is the VE form
/// `x_t / a`).
fn check_edm_goldens(prior: &NetworkPrior, dir: &Path) {
    let x_in = npy4(&dir.join("x_in.npy"));
    let labels = npy1(&dir.join("labels.npy"));
    let out = prior.raw(x_in.view(), &labels).unwrap();
    let want = npy4(&dir.join("out.npy")).into_dyn();
    let e_out = rel_err(&out.into_dyn(), &want);
    let v = npy4(&dir.join("v.npy"));
    let (_, vjp) = prior
        .network()
        .forward_vjp(x_in.view(), &labels, v.view())
        .unwrap();
    let e_vjp = rel_err(&vjp.into_dyn(), &npy4(&dir.join("vjp.npy")).into_dyn());
    let x = npy4(&dir.join("x.npy"));
    let sigma = npy1(&dir.join("sigma.npy"));
    let ts: Vec<f32> = sigma
        .iter()
        .map(|&s| time_of_sigma(prior, s as f64))
        .collect();
    let mut x_t = x.clone();
    for (i, &t) in ts.iter().enumerate() {
        let a = prior.schedule().coeffs(t as f64).0 as f32;
        x_t.index_axis_mut(ndarray::Axis(0), i)
            .mapv_inplace(|v| v * a);
    }
    let den = prior.x0(x_t.view().into_dyn(), &ts).unwrap();
    let e_den = rel_err(&den, &npy4(&dir.join("denoised.npy")).into_dyn());
    eprintln!("{dir:?}: forward {e_out:.2e}, vjp {e_vjp:.2e}, D(x; sigma) {e_den:.2e}");
    assert!(
        e_out < 1e-4 && e_vjp < 1e-4 && e_den < 1e-4,
        "{dir:?}: {e_out} {e_vjp} {e_den}"
    );
    // The check can fail: labels moved by 1 % move the output far beyond the tolerance.
    let moved: Vec<f32> = labels.iter().map(|l| l * 1.01 + 0.01).collect();
    let out = prior.raw(x_in.view(), &moved).unwrap();
    assert!(rel_err(&out.into_dyn(), &want) > 1e-3, "{dir:?}");
}

#[test]
fn edm_dhariwal_state_dict_is_a_prior_matching_the_edm_reference() {
    let dir = data("ckpt/edm");
    // The directory's card names the .pt, read natively.
    let prior = open(&dir);
    assert_eq!(prior.card().architecture.type_name(), "edm-dhariwal-unet");
    check_edm_goldens(&prior, &dir);
    // `posterior import --arch edm-dhariwal` writes a safetensors prior with the same network.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("edm");
    let o = import(&[
        dir.join("edm.pt").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--arch",
        "edm-dhariwal",
        "--precond",
        "edm",
        "--in_channels",
        "2",
        "--img_resolution",
        "16",
        "--model_channels",
        "8",
        "--channel_mult",
        "1,8",
        "--num_blocks",
        "1",
        "--attn_resolutions",
        "8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    check_edm_goldens(&open(&out), &dir);
}

/// `posterior import --arch edm-song` of a fixture's `song.pt` with `flags`; the imported
/// prior must give the same goldens.
fn import_song(dir: &Path, flags: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("song");
    let mut args = vec![
        dir.join("song.pt").to_str().unwrap().to_string(),
        "--out".into(),
        out.to_str().unwrap().into(),
        "--arch".into(),
        "edm-song".into(),
        "--in_channels".into(),
        "2".into(),
        "--img_resolution".into(),
        "16".into(),
    ];
    args.extend(flags.iter().map(|f| f.to_string()));
    let o = posterior_cmd().arg("import").args(&args).output().unwrap();
    assert!(o.status.success(), "{dir:?}: {}", stderr(&o));
    let prior = open(&out);
    assert_eq!(
        prior.card().declared_parameters(),
        open(dir).card().declared_parameters()
    );
    check_edm_goldens(&prior, dir);
}

#[test]
fn edm_song_unets_ddpmpp_ncsnpp_and_skip_paths_match_the_edm_reference() {
    for name in ["song_ddpmpp", "song_ncsnpp", "song_skip"] {
        let dir = data(&format!("ckpt/{name}"));
        let prior = open(&dir);
        assert_eq!(prior.card().architecture.type_name(), "edm-song-unet");
        assert!(prior.unet().is_err() && !prior.runs_on_gpu());
        check_edm_goldens(&prior, &dir);
    }
    // `posterior import`: the presets at the fixtures' size (augment_dim read from the
    // state dict's map_augment for DDPM++).
    let small = [
        "--model_channels",
        "8",
        "--num_blocks",
        "2",
        "--attn_resolutions",
        "8",
    ];
    let mut ddpmpp = vec!["--preset", "ddpmpp", "--precond", "vp"];
    ddpmpp.extend(small);
    import_song(&data("ckpt/song_ddpmpp"), &ddpmpp);
    let mut ncsnpp = vec!["--preset", "ncsnpp", "--precond", "ve"];
    ncsnpp.extend(small);
    import_song(&data("ckpt/song_ncsnpp"), &ncsnpp);
}

#[test]
fn song_cards_that_disagree_with_the_weights_name_the_key() {
    let d = scratch("ckpt/song_ncsnpp");
    let card = d.path().join("model.json");
    let text = std::fs::read_to_string(&card).unwrap();
    let cases: [(&str, serde_json::Value, &[&str]); 6] = [
        // The stored FIR buffers say [1, 3, 3, 1].
        (
            "resample_filter",
            serde_json::json!([1, 1]),
            &["song.pt", "resample_filter"],
        ),
        (
            "resample_filter",
            serde_json::json!([1, 2, 1]),
            &["model.json", "resample_filter", "even"],
        ),
        // A standard encoder leaves the aux_residual tensors unused.
        (
            "encoder_type",
            "standard".into(),
            &["song.pt", "aux_residual"],
        ),
        (
            "encoder_type",
            "residual_plus".into(),
            &["model.json", "residual_plus"],
        ),
        (
            "embedding_type",
            "positional".into(),
            &["song.pt", "map_noise.freqs"],
        ),
        ("label_dim", 10.into(), &["model.json", "label_dim"]),
    ];
    for (key, value, needles) in cases {
        std::fs::write(&card, &text).unwrap();
        edit_json(&card, |v| v["architecture"][key] = value.clone());
        let e = open_err(d.path());
        for n in needles {
            assert!(e.contains(n), "{key} = {value}: `{n}` not in: {e}");
        }
    }
    // An EDM network queried as a discrete VP network is refused.
    std::fs::write(&card, &text).unwrap();
    edit_json(&card, |v| v["schedule"]["kind"] = "vp-discrete".into());
    let e = open_err(d.path());
    assert!(
        e.contains("vp-discrete") && e.contains("preconditioning"),
        "{e}"
    );
}

#[test]
fn zip64_checkpoints_read_like_the_original() {
    let plain = StateDict::read_pt(&data("ckpt/views/views.pt"), None).unwrap();
    let z64 = StateDict::read_pt(&data("ckpt/zip64/views_zip64.pt"), None).unwrap();
    assert_eq!(plain.tensor_names(), z64.tensor_names());
    for k in plain.tensor_names() {
        assert_eq!(plain.tensor_shape(&k), z64.tensor_shape(&k), "{k}");
        assert_eq!(
            plain.tensor_f32(&k).unwrap(),
            z64.tensor_f32(&k).unwrap(),
            "{k}"
        );
    }
    // The zip64 records are what is read: the classic end record is saturated, so a
    // damaged zip64 end record or locator is an error naming the file.
    let bytes = std::fs::read(data("ckpt/zip64/views_zip64.pt")).unwrap();
    let find = |sig: &[u8]| bytes.windows(4).rposition(|w| w == sig).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("z.pt");
    for sig in [b"PK\x06\x06", b"PK\x06\x07"] {
        let mut bad = bytes.clone();
        bad[find(sig)] ^= 0xff;
        std::fs::write(&p, &bad).unwrap();
        let e = StateDict::read_pt(&p, None).unwrap_err().to_string();
        assert!(e.contains("z.pt") && e.contains("zip64"), "{e}");
    }
    for cut in [bytes.len() - 23, bytes.len() - 60, bytes.len() / 2] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = StateDict::read_pt(&p, None).unwrap_err().to_string();
        assert!(e.contains("z.pt"), "cut {cut}: {e}");
    }
}

/// A copy of the diffusers fixture without its scheduler config.
fn bare_diffusers_unet() -> tempfile::TempDir {
    let d = scratch("ckpt/diffusers");
    std::fs::remove_file(d.path().join("scheduler_config.json")).unwrap();
    d
}

#[test]
fn a_bare_diffusers_unet_takes_its_schedule_after_an_at_sign() {
    let d = bare_diffusers_unet();
    let dir = d.path().to_str().unwrap();
    let e = open_err(d.path());
    assert!(
        e.contains("scheduler_config.json") && e.contains("@linear,epsilon"),
        "{e}"
    );
    // The fixture's scheduler: scaled-linear betas 0.00085 .. 0.012, v-prediction.
    let spec = format!("{dir}@scaled_linear,v_prediction,beta_start=0.00085,beta_end=0.012");
    let prior = NetworkPrior::open(&spec).unwrap_or_else(|e| panic!("{e}"));
    check_diffusers(&prior, &data("ckpt/diffusers"));
    // The same settings in another order, the step count given bare: the same card.
    let again = format!("{dir}@beta_end=0.012,v_prediction,1000,scaled_linear,beta_start=0.00085");
    assert_eq!(NetworkPrior::open(&again).unwrap().card(), prior.card());
    // The wrong prediction type gives another denoiser: the goldens would catch it.
    let eps = NetworkPrior::open(&format!(
        "{dir}@scaled_linear,epsilon,beta_start=0.00085,beta_end=0.012"
    ))
    .unwrap();
    assert_eq!(
        eps.card().schedule.output,
        posterior::prior::card::Output::Eps
    );
    for (bad, needle) in [
        ("linear,karras", "karras"),
        ("linear,linear", "twice"),
        ("beta_start=small", "beta_start"),
        ("sigmoid_schedule=1", "sigmoid_schedule"),
        ("linear,flow_prediction", "flow_prediction"),
    ] {
        let e = NetworkPrior::open(&format!("{dir}@{bad}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle) && e.contains("schedule"), "{bad}: {e}");
    }
    // A card prior states its own schedule.
    let e = NetworkPrior::open(&format!("{}@linear,epsilon", data("ckpt/edm").display()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.json") && e.contains("diffusers"), "{e}");
    // The CLI takes the same form wherever a prior is named.
    let x = d.path().join("x.npy");
    ndarray_npy::write_npy(&x, &ndarray::Array3::<f32>::zeros((2, 16, 16))).unwrap();
    let o = posterior_cmd()
        .arg("denoise")
        .arg(&x)
        .args(["--prior", &spec, "--t", "0.5", "--out"])
        .arg(d.path().join("o.npy"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.path().join("o.npy").is_file());
}

#[test]
fn priors_lists_diffusers_and_song_directories_in_the_search_path() {
    let root = tempfile::tempdir().unwrap();
    let copy = |from: &str, to: &str| {
        let dst = root.path().join(to);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(data(from)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    };
    copy("ckpt/diffusers", "my-unet");
    copy("ckpt/song_skip", "my-song");
    copy("ckpt/diffusers", "no-scheduler");
    std::fs::remove_file(root.path().join("no-scheduler/scheduler_config.json")).unwrap();
    let o = posterior_cmd()
        .args(["priors", "--json"])
        .env("POSTERIOR_PRIORS", root.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {rows}"))
            .clone()
    };
    let unet = row("my-unet");
    assert_eq!(unet["architecture"], "diffusers-unet2d");
    assert_eq!(unet["resolution"], serde_json::json!([16, 16]));
    assert_eq!(unet["channels"], 2);
    assert!(unet["size_bytes"].as_u64().unwrap() > 100_000);
    assert_eq!(row("my-song")["architecture"], "edm-song-unet");
    let problem = row("no-scheduler")["problem"].as_str().unwrap().to_string();
    assert!(problem.contains("@linear,epsilon"), "{problem}");
    // Listed names open by name, with a schedule where the directory has none.
    let x = root.path().join("x.npy");
    ndarray_npy::write_npy(&x, &ndarray::Array3::<f32>::zeros((2, 16, 16))).unwrap();
    for prior in [
        "my-unet",
        "my-song",
        "no-scheduler@scaled_linear,v_prediction",
    ] {
        let o = posterior_cmd()
            .arg("denoise")
            .arg(&x)
            .args(["--prior", prior, "--t", "0.5", "--out"])
            .arg(root.path().join("o.npy"))
            .env("POSTERIOR_PRIORS", root.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{prior}: {}", stderr(&o));
    }
}

/// A masked measurement of a smooth image in the prior's range, noise free.
fn inpainting(prior: &NetworkPrior) -> (Arc<Problem>, Array2<f32>, ArrayD<f32>) {
    let shape = prior.info().sample_shape.clone();
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let truth = ArrayD::from_shape_fn(shape.clone(), |i| {
        (0.3 * i[1] as f32 + 0.2 * i[2] as f32 + i[0] as f32).sin() * 0.8
    });
    let mask = Array2::from_shape_fn((h, w), |(i, j)| (i + 2 * j) % 3 != 0);
    let op = Mask::new(&[c, h, w], mask.clone(), "test").unwrap();
    let m = op.mask().clone();
    let y = &truth * &m.broadcast((c, h, w)).unwrap();
    let problem = Problem::new(Operator::Linear(Box::new(op)), y.into_dyn(), 0.0).unwrap();
    (Arc::new(problem), m, truth)
}

#[test]
fn dds_and_dps_run_on_every_checkpoint_format() {
    let tmp = tempfile::tempdir().unwrap();
    let gd = tmp.path().join("gd");
    let mut args = vec![
        data("ckpt/gd/ema.pt").to_str().unwrap().to_string(),
        "--out".into(),
        gd.to_str().unwrap().into(),
    ];
    args.extend(gd_args());
    let o = posterior_cmd().arg("import").args(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for dir in [
        gd,
        data("ckpt/diffusers"),
        data("ckpt/edm"),
        data("ckpt/song_ddpmpp"),
        data("ckpt/song_ncsnpp"),
        data("ckpt/song_skip"),
    ] {
        let prior = open(&dir);
        let (problem, m, truth) = inpainting(&prior);
        let dds = DdsSettings {
            steps: 4,
            ..DdsSettings::default()
        };
        let mut s = Dds::new(problem.clone(), dds).unwrap();
        let r = Executor::new(1).run(&mut s, &prior, 1).unwrap();
        assert_eq!(r.nfe, 4);
        let x = r.samples.index_axis(ndarray::Axis(0), 0).to_owned();
        assert!(x.iter().all(|v| v.is_finite()), "{dir:?}: dds");
        // Noise-free DDS ends on its CG solution, which fits the measured pixels.
        let fit = (&x - &truth) * &m.broadcast(truth.raw_dim()).unwrap();
        let worst = fit.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert!(worst < 1e-2, "{dir:?}: dds misfit {worst}");
        let dps = DpsSettings {
            steps: 4,
            zeta: 0.5,
            update: DpsUpdate::Ancestral,
        };
        let mut s = Dps::new(problem, dps).unwrap();
        let r = Executor::new(2).run(&mut s, &prior, 1).unwrap();
        assert_eq!((r.nfe, r.vjps), (4, 4), "{dir:?}");
        assert!(r.samples.iter().all(|v| v.is_finite()), "{dir:?}: dps");
    }
}

#[test]
fn hostile_checkpoints_are_refused_without_running_anything() {
    let marker = Path::new("/tmp/posterior_pwned");
    let _ = std::fs::remove_file(marker);
    let e = StateDict::read_pt(&data("ckpt/bad/code.pt"), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("code.pt") && e.contains("system") && e.contains("refusing"),
        "{e}"
    );
    assert!(!marker.exists());
    let e = StateDict::read_pt(&data("ckpt/bad/namespace.pt"), None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("namespace.pt") && e.contains("`argparse.Namespace`"),
        "{e}"
    );
    // Truncations and corruptions of a real checkpoint: errors naming the file, never panics.
    let bytes = std::fs::read(data("ckpt/gd/ema.pt")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("cut.pt");
    for cut in [
        0,
        10,
        100,
        1000,
        bytes.len() / 2,
        bytes.len() - 30,
        bytes.len() - 1,
    ] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = StateDict::read_pt(&p, None).unwrap_err().to_string();
        assert!(e.contains("cut.pt"), "cut {cut}: {e}");
    }
    // A flipped byte inside a tensor's storage: the CRC names the entry when it is read.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    std::fs::write(&p, &flipped).unwrap();
    let sd = StateDict::read_pt(&p, None).unwrap();
    let errs: Vec<String> = sd
        .tensor_names()
        .iter()
        .filter_map(|k| sd.tensor_f32(k).err().map(|e| e.to_string()))
        .collect();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("CRC") && errs[0].contains("zip entry"),
        "{}",
        errs[0]
    );
    // Every single-byte truncation of the small hostile files, for good measure.
    let code = std::fs::read(data("ckpt/bad/code.pt")).unwrap();
    for cut in 0..code.len() {
        std::fs::write(&p, &code[..cut]).unwrap();
        assert!(StateDict::read_pt(&p, None).is_err());
    }
}

/// Copies a fixture directory's files into a temporary directory, for corrupting.
fn scratch(rel: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(data(rel)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    tmp
}

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn unsupported_configs_and_mismatched_weights_name_the_file_and_the_key() {
    // diffusers: a config key outside UNet2DModel's arguments, an unsupported value, a
    // scheduler key we do not read.
    let d = scratch("ckpt/diffusers");
    let cfg = d.path().join("config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    edit_json(&cfg, |v| v["cross_attention_dim"] = 768.into());
    let e = open_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("cross_attention_dim"),
        "{e}"
    );
    std::fs::write(&cfg, &text).unwrap();
    edit_json(&cfg, |v| v["act_fn"] = "gelu".into());
    let e = open_err(d.path());
    assert!(
        e.contains("config.json") && e.contains("`act_fn`") && e.contains("gelu"),
        "{e}"
    );
    std::fs::write(&cfg, &text).unwrap();
    let sch = d.path().join("scheduler_config.json");
    edit_json(&sch, |v| v["karras_sigmas"] = true.into());
    let e = open_err(d.path());
    assert!(
        e.contains("scheduler_config.json") && e.contains("karras_sigmas"),
        "{e}"
    );
    edit_json(&sch, |v| {
        v.as_object_mut().unwrap().remove("karras_sigmas");
        v["prediction_type"] = "flow".into();
    });
    let e = open_err(d.path());
    assert!(e.contains("prediction_type") && e.contains("flow"), "{e}");
    std::fs::remove_file(&sch).unwrap();
    let e = open_err(d.path());
    assert!(
        e.contains("scheduler_config.json") && e.contains("missing"),
        "{e}"
    );
    // A config that disagrees with the weights: the key, the expected and found shapes.
    std::fs::copy(data("ckpt/diffusers/scheduler_config.json"), &sch).unwrap();
    edit_json(&cfg, |v| {
        v["block_out_channels"] = serde_json::json!([16, 48])
    });
    let e = open_err(d.path());
    assert!(
        e.contains("diffusion_pytorch_model.safetensors")
            && e.contains("down_blocks.1.resnets.0.conv1.weight")
            && e.contains("[32, 16, 3, 3]")
            && e.contains("[48, 16, 3, 3]"),
        "{e}"
    );
    // EDM: a card that disagrees with the state dict names the EDM key.
    let d = scratch("ckpt/edm");
    let card = d.path().join("model.json");
    let text = std::fs::read_to_string(&card).unwrap();
    edit_json(&card, |v| v["architecture"]["num_blocks"] = 2.into());
    let e = open_err(d.path());
    assert!(
        e.contains("edm.pt") && e.contains("missing tensor `model.enc.16x16_block1"),
        "{e}"
    );
    // Unknown type, kind, output, noise schedule, format: errors naming the value.
    for (path, value, needle) in [
        (vec!["architecture", "type"], "song-unet", "song-unet"),
        (vec!["schedule", "kind"], "flow", "flow"),
        (vec!["format"], "posterior-card/9", "posterior-card/9"),
    ] {
        std::fs::write(&card, &text).unwrap();
        edit_json(&card, |v| {
            let mut slot = &mut *v;
            for k in &path {
                slot = &mut slot[*k];
            }
            *slot = value.into();
        });
        let e = open_err(d.path());
        assert!(
            e.contains("model.json") && e.contains(needle),
            "{path:?}: {e}"
        );
    }
    let gd = scratch("adm/plain_conv_f16");
    let card = gd.path().join("model.json");
    edit_json(&card, |v| {
        v["format"] = "posterior-card/2".into();
        v["schedule"]["output"] = "score".into();
    });
    let e = open_err(gd.path());
    assert!(e.contains("score"), "{e}");
    edit_json(&card, |v| {
        v["schedule"]["output"] = "eps".into();
        v["schedule"]["noise_schedule"] = "sigmoid".into();
    });
    let e = open_err(gd.path());
    assert!(e.contains("sigmoid") && e.contains("not supported"), "{e}");
    // The import CLI: a flag of another architecture, a missing flag, a wrong shape.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    let pt = data("ckpt/gd/ema.pt");
    let o = import(&[
        pt.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--num_blocks",
        "2",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("--num_blocks"),
        "{}",
        stderr(&o)
    );
    let o = import(&[pt.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    let msg = stderr(&o);
    assert!(
        !o.status.success() && msg.contains("ema.pt") && msg.contains("expects"),
        "{msg}"
    );
    assert!(
        !out.join("model.json").exists(),
        "nothing is written on failure"
    );
}

#[test]
fn tensor_views_and_element_types_read_exactly_stored_or_deflated() {
    let expect: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("ckpt/views/views.json")).unwrap())
            .unwrap();
    for file in ["views.pt", "views_deflated.pt"] {
        let sd = StateDict::read_pt(&data(&format!("ckpt/views/{file}")), None).unwrap();
        let names = sd.tensor_names();
        assert_eq!(names.len(), 6, "{file}: {names:?}");
        for (name, want) in expect.as_object().unwrap() {
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            let values: Vec<f64> = serde_json::from_value(want["values"].clone()).unwrap();
            assert_eq!(sd.tensor_shape(name), Some(shape), "{file} {name}");
            let got = sd.tensor_f32(name).unwrap();
            let want: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            // Every value is exact in its stored type and in f32: equality.
            assert_eq!(got, want, "{file} {name}");
        }
    }
}
