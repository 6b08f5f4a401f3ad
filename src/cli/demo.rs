//! `posterior demo`: the README's quick start. Degrades the bundled example image with one
//! operator of each family, reconstructs each with classical methods, then inpaints a
//! held-out Fashion-MNIST image with the shipped `fmnist-32` diffusion prior (DDS and
//! RED-diff against TV); writes the PNGs and a contact sheet, and prints PSNR / SSIM.

use std::time::Instant;

use ndarray::{Array2, Ix3};

use crate::error::{Error, Result};
use crate::figure;
use crate::io::{self, ReadOptions};
use crate::measurement;
use crate::recon::{self, Method, ReconOptions};
use crate::spec::{self, BuildContext};

use super::{DemoArgs, Progress};

/// The bundled example: a 256x256 grayscale photograph (see tests/data/README.md).
const EXAMPLE_PNG: &[u8] = include_bytes!("../../tests/data/example.png");

/// Held-out Fashion-MNIST test images (8, 1, 32, 32) in the prior's units [-1, 1], never
/// seen by the shipped prior's training (its card's split).
const HELD_OUT_NPY: &[u8] = include_bytes!("../../tests/data/heldout/fmnist-32.npy");

/// The prior-based case: its operator, noise, and the samplers with their step counts.
const PRIOR_NAME: &str = "fmnist-32";
const PRIOR_OP: &str = "inpaint:mask=box";
const PRIOR_NOISE: &str = "gaussian:sigma=0.02";
const PRIOR_SAMPLERS: &[(&str, usize)] = &[("dds", 50), ("reddiff", 100)];

/// One demo case: an operator, its noise, and the methods to compare.
struct Case {
    name: &'static str,
    op: &'static str,
    noise: &'static str,
    methods: &'static [(Method, Option<f32>)],
}

const CASES: &[Case] = &[
    Case {
        name: "deblur",
        op: "blur:kernel=gaussian,sigma=3",
        noise: "gaussian:sigma=0.01",
        methods: &[(Method::Cg, None), (Method::Tv, Some(1e-3))],
    },
    Case {
        name: "inpaint",
        op: "inpaint:mask=random,fraction=0.7",
        noise: "none",
        methods: &[(Method::Adjoint, None), (Method::Tv, Some(1e-3))],
    },
    Case {
        name: "sr4",
        op: "sr:factor=4",
        noise: "gaussian:sigma=0.01",
        methods: &[
            (Method::Adjoint, None),
            (Method::Cg, None),
            (Method::Tv, Some(1e-4)),
        ],
    },
    Case {
        name: "mri4x",
        op: "mri:coils=8,accel=4,mask=uniform1d,acs=0.08",
        noise: "complex-gaussian:sigma=0.005",
        methods: &[
            (Method::Adjoint, None),
            (Method::Cg, None),
            (Method::Tv, Some(1e-3)),
        ],
    },
    Case {
        name: "ct60",
        op: "ct:geometry=parallel,views=60",
        noise: "gaussian:sigma=0.5",
        methods: &[
            (Method::Adjoint, None),
            (Method::Fbp, None),
            (Method::Tv, Some(1e-3)),
        ],
    },
];

pub fn run(a: &DemoArgs) -> Result<()> {
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Error::file(&a.out, format!("cannot create the output directory: {e}")))?;
    let example = a.out.join("example.png");
    io::write_atomic(&example, |tmp| {
        std::fs::write(tmp, EXAMPLE_PNG).map_err(|e| Error::file(tmp, e))
    })?;
    let truth = io::read_image(&example, &ReadOptions::default())?.data;
    let seed = 0;
    let mut rows: Vec<String> = Vec::new();
    let mut tiles: Vec<Array2<f32>> = Vec::new();
    let max_methods = CASES.iter().map(|c| c.methods.len()).max().unwrap_or(1);
    const TILE: usize = 192;
    println!(
        "posterior demo: {} (256x256), results in {}\n",
        example.display(),
        a.out.display()
    );
    println!(
        "{:<9} {:<46} {:<8} {:>9} {:>7} {:>8}",
        "case", "operator", "method", "PSNR dB", "SSIM", "seconds"
    );
    for case in CASES {
        let family = spec::family(spec::Spec::parse(case.op)?.family.as_str())?;
        let (image, _) = measurement::prepare_image(truth.clone(), family);
        let ctx = BuildContext::new(image.shape(), seed, a.out.clone());
        let physics = spec::build(case.op, &ctx)?;
        let noise = spec::noise::parse_noise(case.noise)?;
        let y = physics.measure(image.view().into_dyn(), &noise, seed)?;
        let preview = spec::preview(y.view(), (0.0, 1.0));
        io::write_image(
            &a.out.join(format!("{}_measurement.png", case.name)),
            preview.view(),
            (0.0, 1.0),
        )?;
        tiles.push(figure::tile(image.view(), TILE));
        tiles.push(figure::tile(preview.view(), TILE));
        for &(method, lambda) in case.methods {
            let mut opts = ReconOptions::new(method);
            opts.lambda = lambda;
            opts.nonnegative = method == Method::Tv;
            let progress = Progress::new(&format!("{} {}", case.name, method), opts.iters());
            let start = Instant::now();
            let x =
                recon::reconstruct(&physics, y.view(), &opts, &mut |i, f| progress.update(i, f))?;
            progress.finish();
            let seconds = start.elapsed().as_secs_f64();
            let rec = physics
                .extract(x.view(), false)
                .into_dimensionality::<Ix3>()
                .map_err(|e| Error::Invalid(format!("reconstruction is not an image: {e}")))?;
            let r = recon::Quality::compare(rec.view(), image.view(), 1.0)?;
            io::write_image(
                &a.out.join(format!("{}_{}.png", case.name, method)),
                rec.view(),
                (0.0, 1.0),
            )?;
            tiles.push(figure::tile(rec.mapv(|v| v.clamp(0.0, 1.0)).view(), TILE));
            println!(
                "{:<9} {:<46} {:<8} {:>9.2} {:>7.4} {:>8.2}",
                case.name,
                case.op,
                method.name(),
                r.psnr,
                r.ssim,
                seconds
            );
            rows.push(format!(
                "{}\t{}\t{:.2}\t{:.4}",
                case.name, method, r.psnr, r.ssim
            ));
        }
        for _ in case.methods.len()..max_methods {
            tiles.push(Array2::zeros((TILE, TILE)));
        }
    }
    prior_case(a, seed, &mut tiles, max_methods, TILE)?;
    let sheet = figure::grid(&tiles, max_methods + 2, TILE);
    let sheet_path = a.out.join("summary.png");
    io::write_image(&sheet_path, sheet.view(), (0.0, 1.0))?;
    println!(
        "\nContact sheet: {} (rows: cases; columns: truth, measurement, then each method in the order above)",
        sheet_path.display()
    );
    Ok(())
}

/// Inpainting a held-out image with the shipped prior: TV against the posterior samplers.
/// Skipped with a notice when the prior is not installed.
fn prior_case(
    a: &DemoArgs,
    seed: u64,
    tiles: &mut Vec<Array2<f32>>,
    max_methods: usize,
    tile: usize,
) -> Result<()> {
    let Ok(prior_dir) = crate::prior::resolve_prior(PRIOR_NAME) else {
        println!("\n(the shipped prior {PRIOR_NAME} is not installed: skipping the diffusion-prior case)");
        return Ok(());
    };
    use ndarray_npy::ReadNpyExt;
    let held = ndarray::Array4::<f32>::read_npy(std::io::Cursor::new(HELD_OUT_NPY))
        .map_err(|e| Error::Invalid(format!("bundled held-out images: {e}")))?;
    // Image units [0, 1] from the prior's [-1, 1].
    let image = held
        .index_axis(ndarray::Axis(0), 0)
        .mapv(|v| (v + 1.0) / 2.0);
    let ctx = BuildContext::new(image.shape(), seed, a.out.clone());
    let build = || spec::build(PRIOR_OP, &ctx);
    let noise = spec::noise::parse_noise(PRIOR_NOISE)?;
    let physics = build()?;
    let y = physics.measure(image.view().into_dyn(), &noise, seed)?;
    let preview = spec::preview(y.view(), (0.0, 1.0));
    tiles.push(figure::tile(image.view(), tile));
    tiles.push(figure::tile(preview.view(), tile));
    let name = "fmnist";
    let mut report = |method: &str, rec: ndarray::Array3<f32>, seconds: f64| -> Result<()> {
        let r = recon::Quality::compare(rec.view(), image.view(), 1.0)?;
        io::write_image(
            &a.out.join(format!("{name}_{method}.png")),
            rec.view(),
            (0.0, 1.0),
        )?;
        tiles.push(figure::tile(rec.mapv(|v| v.clamp(0.0, 1.0)).view(), tile));
        println!(
            "{:<9} {:<46} {:<8} {:>9.2} {:>7.4} {:>8.2}",
            name,
            format!("{PRIOR_OP} (32x32)"),
            method,
            r.psnr,
            r.ssim,
            seconds
        );
        Ok(())
    };
    let mut opts = ReconOptions::new(Method::Tv);
    opts.lambda = Some(1e-3);
    opts.nonnegative = true;
    let start = Instant::now();
    let x = recon::reconstruct(&physics, y.view(), &opts, &mut |_, _| {})?;
    report("tv", to_image(x)?, start.elapsed().as_secs_f64())?;
    for &(sampler, steps) in PRIOR_SAMPLERS {
        let prior = crate::prior::NetworkPrior::open(&prior_dir.to_string_lossy())?;
        let o = crate::sample::posterior::Overrides {
            steps: Some(steps),
            ..Default::default()
        };
        let start = Instant::now();
        let r = crate::sample::posterior::reconstruct_with_prior(
            build()?,
            y.clone(),
            &noise,
            (0.0, 1.0),
            std::sync::Arc::new(prior),
            sampler,
            &o,
            crate::sample::Executor::new(seed),
            1,
        )?;
        report(sampler, to_image(r.image)?, start.elapsed().as_secs_f64())?;
    }
    for _ in 1 + PRIOR_SAMPLERS.len()..max_methods {
        tiles.push(Array2::zeros((tile, tile)));
    }
    Ok(())
}

fn to_image(x: ndarray::ArrayD<f32>) -> Result<ndarray::Array3<f32>> {
    x.into_dimensionality::<Ix3>()
        .map_err(|e| Error::Invalid(format!("reconstruction is not an image: {e}")))
}
