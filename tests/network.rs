//! The ADM U-Net engine against PyTorch golden values (tests/data/adm, written by
//! notebooks/make_golden.py: outputs and VJPs computed in f64 from the stored weights, see
//! notebooks/README.md), the prior directory loader's errors, and the network as a
//! `Denoiser` under the unconditional samplers.
//!
//! Tolerance: relative error (max |ours - ref| / max |ref|) < 1e-4, the bound for
//! f32; PyTorch's own f32 evaluation sits at ~1e-6 from the same references, and an f32
//! engine with a different summation order lands at ~1e-6..1e-5.

use std::path::{Path, PathBuf};

use ndarray::{Array1, Array4, ArrayD, Ix4};
use posterior::nn::hash::{hash_unit, splitmix64, HashWeights};
use posterior::nn::unet::{ParamSource, UNet, UNetConfig};
use posterior::prior::{Denoiser, ModelCard, NetworkPrior};
use posterior::sample::{Ddim, Executor};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/adm")
        .join(name)
}

fn npy4(path: &Path) -> Array4<f32> {
    posterior::io::read_npy(path)
        .unwrap()
        .into_dimensionality::<Ix4>()
        .unwrap()
}

fn rel_err(ours: &Array4<f32>, reference: &Array4<f32>) -> f64 {
    assert_eq!(ours.shape(), reference.shape());
    let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let diff = ours
        .iter()
        .zip(reference)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    diff / scale
}

fn golden(name: &str) {
    let dir = fixture(name);
    let prior = NetworkPrior::open(dir.to_str().unwrap()).unwrap();
    let x = npy4(&dir.join("x.npy"));
    let t: Array1<i64> = ndarray_npy::read_npy(dir.join("t.npy")).unwrap();
    let steps: Vec<f32> = t.iter().map(|&v| v as f32).collect();
    let temb_ref: ndarray::Array2<f32> = ndarray_npy::read_npy(dir.join("temb.npy")).unwrap();
    let temb = posterior::nn::timestep_embedding(&steps, temb_ref.ncols(), 10000.0);
    let temb_err = temb
        .iter()
        .zip(&temb_ref)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        temb_err < 1e-6,
        "{name}: timestep embedding off by {temb_err}"
    );
    let v = npy4(&dir.join("v.npy"));
    let out = prior.raw(x.view(), &steps).unwrap();
    let e_out = rel_err(&out, &npy4(&dir.join("out.npy")));
    let (out2, vjp) = prior
        .unet()
        .unwrap()
        .forward_vjp(x.view(), &steps, v.view())
        .unwrap();
    let e_vjp = rel_err(&vjp, &npy4(&dir.join("vjp.npy")));
    eprintln!("{name}: forward rel err {e_out:.2e}, vjp rel err {e_vjp:.2e}");
    assert!(e_out < 1e-4, "{name}: forward rel err {e_out}");
    assert!(e_vjp < 1e-4, "{name}: vjp rel err {e_vjp}");
    assert_eq!(out, out2, "forward and forward_vjp must agree exactly");
    // The comparison can fail: a perturbed timestep moves the output far beyond 1e-4.
    let shifted: Vec<f32> = steps.iter().map(|s| s + 1.0).collect();
    let moved = prior.raw(x.view(), &shifted).unwrap();
    assert!(rel_err(&moved, &npy4(&dir.join("out.npy"))) > 1e-3);
}

#[test]
fn learned_sigma_scale_shift_updown_two_attention_resolutions_batch_2_f32() {
    golden("sigma_ss_updown");
}

#[test]
fn additive_embedding_conv_resampling_new_attention_order_f16_batch_3() {
    golden("plain_conv_f16");
}

#[test]
fn hash_generator_matches_the_python_one() {
    assert_eq!(splitmix64(0), 0xe220a8397b1dcdaf);
    let check: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("ffhq256_hash").join("check.json")).unwrap(),
    )
    .unwrap();
    let first = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    assert_eq!(hash_unit("input.x", 4), first(&check["x_first"]));
    assert_eq!(hash_unit("input.v", 4), first(&check["v_first"]));
    let shapes = UNet::parameter_shapes(&UNetConfig::ffhq256()).unwrap();
    for (key, want) in check["weights_first"].as_object().unwrap() {
        let shape = &shapes.iter().find(|(k, _)| k == key).unwrap().1;
        let got = HashWeights.take(key, shape).unwrap();
        assert_eq!(&got[..4], first(want).as_slice(), "{key}");
    }
}

#[test]
fn ffhq256_configuration_has_the_checkpoint_parameter_count() {
    // 93,563,910 parameters (counted by notebooks/adm.py and equal to deepinv's port).
    let shapes = UNet::parameter_shapes(&UNetConfig::ffhq256()).unwrap();
    let total: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(total, 93_563_910);
    assert!(shapes
        .iter()
        .any(|(k, s)| k == "output_blocks.0.0.in_layers.0.weight" && s == &[1024]));
}

#[test]
#[ignore = "FFHQ-256 forward + VJP at batch 2 takes minutes at the test profile; run with POSTERIOR_HEAVY_TESTS=1 cargo test --release --test network -- --ignored"]
fn ffhq256_hash_weights_match_pytorch() {
    let dir = fixture("ffhq256_hash");
    let card = ModelCard::read(&dir.join("model.json")).unwrap();
    let unet = UNet::build(card.architecture.unet_config().unwrap(), &mut HashWeights).unwrap();
    let (n, s) = (2usize, 256usize);
    let x = Array4::from_shape_vec((n, 3, s, s), hash_unit("input.x", n * 3 * s * s)).unwrap();
    let v = Array4::from_shape_vec((n, 6, s, s), hash_unit("input.v", n * 6 * s * s)).unwrap();
    let start = std::time::Instant::now();
    let (out, vjp) = unet
        .forward_vjp(x.view(), &[10.0, 900.0], v.view())
        .unwrap();
    eprintln!("ffhq256 forward+vjp, batch 2: {:.1?}", start.elapsed());
    let rows: Array1<i64> = ndarray_npy::read_npy(dir.join("rows.npy")).unwrap();
    let idx: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
    let sub = |a: &Array4<f32>| {
        let (b, c, _, _) = a.dim();
        Array4::from_shape_fn((b, c, idx.len(), idx.len()), |(i, j, p, q)| {
            a[[i, j, idx[p], idx[q]]]
        })
    };
    let e_out = rel_err(&sub(&out), &npy4(&dir.join("out_sub.npy")));
    let e_vjp = rel_err(&sub(&vjp), &npy4(&dir.join("vjp_sub.npy")));
    eprintln!("ffhq256: forward rel err {e_out:.2e}, vjp rel err {e_vjp:.2e}");
    assert!(e_out < 1e-4 && e_vjp < 1e-4, "{e_out} {e_vjp}");
}

/// Copies a fixture prior directory into a temporary one, for corrupting.
fn scratch_copy(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(fixture(name).join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

fn open_err(dir: &Path) -> String {
    NetworkPrior::open(dir.to_str().unwrap())
        .unwrap_err()
        .to_string()
}

#[test]
fn broken_prior_directories_are_clear_errors() {
    // Missing directory / missing weights.
    let e = open_err(Path::new("/nonexistent/prior"));
    assert!(e.contains("no prior"), "{e}");
    let tmp = scratch_copy("plain_conv_f16");
    let w = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::remove_file(&w).unwrap();
    assert!(open_err(tmp.path()).contains("cannot read"));
    // Truncated weights.
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let e = open_err(tmp.path());
    assert!(e.contains("truncated"), "{e}");
    std::fs::write(&w, &bytes).unwrap();
    assert!(NetworkPrior::open(tmp.path().to_str().unwrap()).is_ok());
    // A card that disagrees with the weights: a wider model names the key and both shapes.
    let card_path = tmp.path().join("model.json");
    let card_text = std::fs::read_to_string(&card_path).unwrap();
    let mut card: serde_json::Value = serde_json::from_str(&card_text).unwrap();
    card["architecture"]["model_channels"] = serde_json::json!(64);
    std::fs::write(&card_path, card.to_string()).unwrap();
    let e = open_err(tmp.path());
    assert!(
        e.contains("time_embed.0.weight") && e.contains("expects"),
        "{e}"
    );
    // No attention in the card: the upsampling conv moves to another key, which is missing.
    let mut card: serde_json::Value = serde_json::from_str(&card_text).unwrap();
    card["architecture"]["attention_resolutions"] = serde_json::json!([]);
    std::fs::write(&card_path, card.to_string()).unwrap();
    let e = open_err(tmp.path());
    assert!(
        e.contains("missing tensor `output_blocks.0.1.conv.weight`"),
        "{e}"
    );
    // A stored tensor the architecture does not use.
    std::fs::write(&card_path, &card_text).unwrap();
    let st = posterior::nn::safetensors::SafeTensors::read(&w).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .keys()
        .map(|k| {
            (
                k.to_string(),
                st.info(k).unwrap().shape.clone(),
                st.f32_values(k).unwrap(),
            )
        })
        .collect();
    tensors.push(("label_emb.weight".into(), vec![2, 4], vec![0.0; 8]));
    let dtype = posterior::nn::safetensors::Dtype::F16;
    posterior::nn::safetensors::write(&w, &tensors, dtype).unwrap();
    let e = open_err(tmp.path());
    assert!(
        e.contains("not part of the architecture") && e.contains("label_emb"),
        "{e}"
    );
    std::fs::write(&w, &bytes).unwrap();
    // Wrong dtype claim, wrong parameter count, malformed JSON, wrong format tag.
    for (path, value, needle) in [
        (
            vec!["weights", "dtype"],
            serde_json::json!("f32"),
            "stores F16",
        ),
        (
            vec!["architecture", "num_parameters"],
            serde_json::json!(5),
            "declares 5",
        ),
        (vec!["format"], serde_json::json!("other"), "not supported"),
        (vec!["channels"], serde_json::json!(3), "channel"),
    ] {
        let mut card: serde_json::Value = serde_json::from_str(&card_text).unwrap();
        let mut slot = &mut card;
        for k in &path {
            slot = &mut slot[*k];
        }
        *slot = value;
        std::fs::write(&card_path, card.to_string()).unwrap();
        let e = open_err(tmp.path());
        assert!(e.contains(needle), "{path:?}: {e}");
    }
    std::fs::write(&card_path, "{ not json").unwrap();
    assert!(open_err(tmp.path()).contains("not a valid model card"));
}

#[test]
fn the_network_denoiser_runs_under_the_unconditional_samplers() {
    let prior = NetworkPrior::open(fixture("plain_conv_f16").to_str().unwrap()).unwrap();
    assert_eq!(prior.info().sample_shape, vec![1, 16, 16]);
    let draw = |seed| {
        let mut ddim = Ddim::new(4, 0.0).unwrap();
        Executor::new(seed).run(&mut ddim, &prior, 2).unwrap()
    };
    let a = draw(3);
    assert_eq!(a.samples.shape(), &[2, 1, 16, 16]);
    assert_eq!(a.nfe, 4);
    assert!(a.samples.iter().all(|v| v.is_finite()));
    assert_eq!(a.samples, draw(3).samples, "same seed, same samples");
    assert_ne!(a.samples, draw(4).samples);
}

#[test]
fn the_denoiser_vjp_matches_finite_differences() {
    // x0(x) = (x - s eps(x)) / a; its VJP against a central difference along a direction d:
    // <vjp(v), d> vs <(x0(x + h d) - x0(x - h d)) / 2h, v>. f32 forward passes with h = 1e-2
    // leave ~1e-3 relative error (rounding / h and curvature h^2).
    let prior = NetworkPrior::open(fixture("sigma_ss_updown").to_str().unwrap()).unwrap();
    let shape = prior.info().batch_shape(2);
    let field = |seed: f32| {
        ArrayD::from_shape_fn(shape.clone(), |i| {
            ((i[1] * 7 + i[2] * 3 + i[3] * 5 + i[0]) as f32 * seed).sin()
        })
    };
    let (x, v, d) = (field(0.37), field(1.13), field(0.71));
    let t = [0.3f32, 0.8];
    let (_, g) = prior.x0_vjp(x.view(), &t, v.view()).unwrap();
    let h = 1e-2f32;
    let xp = &x + &(&d * h);
    let xm = &x - &(&d * h);
    let fd = (prior.x0(xp.view(), &t).unwrap() - prior.x0(xm.view(), &t).unwrap()) / (2.0 * h);
    let lhs: f64 = g.iter().zip(&d).map(|(a, b)| *a as f64 * *b as f64).sum();
    let rhs: f64 = fd.iter().zip(&v).map(|(a, b)| *a as f64 * *b as f64).sum();
    assert!(
        (lhs - rhs).abs() < 2e-3 * lhs.abs().max(rhs.abs()),
        "{lhs} vs {rhs}"
    );
}
