//! `posterior demo`: the README's quick start. Degrades the bundled example image with one
//! operator of each family, reconstructs each with classical methods, writes the PNGs and a
//! contact sheet, and prints PSNR / SSIM.

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
    let sheet = figure::grid(&tiles, max_methods + 2, TILE);
    let sheet_path = a.out.join("summary.png");
    io::write_image(&sheet_path, sheet.view(), (0.0, 1.0))?;
    println!(
        "\nContact sheet: {} (rows: cases; columns: truth, measurement, then each method in the order above)",
        sheet_path.display()
    );
    Ok(())
}
