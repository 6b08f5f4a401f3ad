//! The command-line interface: `posterior degrade`, `reconstruct`, `maps`, `ops`, `demo`,
//! `sample`, `denoise`, `import`, `calibrate`, `bench`, `tune`, `priors`.
//!
//! Every subcommand has a one-line help (`posterior --help`) and an example in its long
//! help (`posterior SUBCOMMAND --help`).
//!
//! Each subcommand is a thin layer over the library: it parses arguments, calls the
//! library, prints results, and turns errors into a message and a non-zero exit (in
//! `main`). Outputs are written atomically (temporary name, then rename).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::error::Result;

mod bench;
mod calibrate;
mod degrade;
mod demo;
mod denoise;
mod import;
mod maps;
mod ops;
mod priors;
mod progress;
mod reconstruct;
mod sample;
mod tune;

pub use progress::Progress;

/// Reconstruct images from degraded or incomplete measurements.
#[derive(Parser, Debug)]
#[command(name = "posterior", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per run
pub enum Command {
    /// Simulate a measurement of an image: apply an operator and noise, write Y.npy and its
    /// JSON sidecar.
    #[command(
        after_long_help = "Example:\n  posterior degrade photo.png --op blur:kernel=motion,intensity=0.5 \\\n      --noise gaussian:sigma=0.01 --seed 1 --out y.npy --preview y.png"
    )]
    Degrade(DegradeArgs),
    /// Reconstruct an image from a measurement: a `degrade` output, or a photo, sinogram or
    /// raw k-space from elsewhere with --op.
    #[command(
        after_long_help = "Examples:\n  posterior reconstruct y.npy --method tv --out x.png --truth photo.png\n  posterior reconstruct blurred.png --op blur:kernel=file,path=psf.png,boundary=reflect --method tv --out x.png\n  posterior reconstruct kspace.cfl --op mri --maps espirit --method tv --out x.nii\n  posterior reconstruct file_brain.h5 --op mri --slice 10 --method cg --out x.png\n  posterior reconstruct sino.npy --op ct:geometry=fan,views=60 --image-shape 1,128,128 --method fbp --out x.png"
    )]
    Reconstruct(Box<ReconstructArgs>),
    /// Estimate coil sensitivity maps (ESPIRiT or Walsh) from raw multi-coil k-space.
    #[command(
        after_long_help = "Examples:\n  posterior maps kspace.cfl --out maps.cfl                 # BART ecalib -m1 settings\n  posterior maps file_brain.h5 --slice 10 --method walsh --out maps.npy"
    )]
    Maps(MapsArgs),
    /// List every operator with its parameters and defaults, and the noise models.
    #[command(after_long_help = "Example:\n  posterior ops")]
    Ops,
    /// Degrade the bundled example image with several operators, reconstruct each, write
    /// the PNGs and print PSNR/SSIM.
    #[command(after_long_help = "Example:\n  posterior demo --out demo")]
    Demo(DemoArgs),
    /// Draw samples from a prior with an unconditional sampler (DDPM, DDIM, Euler, Heun,
    /// DPM-Solver++(2M)): a network prior (directory or shipped name) or a Gaussian mixture.
    #[command(
        after_long_help = "Example:\n  posterior sample --prior brain-mri --steps 50 --n 16 --seed 0 --clip --out brain.png"
    )]
    Sample(SampleArgs),
    /// Run a network prior once on a noisy input and write its Tweedie estimate (or, with
    /// --raw, the network's own output).
    #[command(
        after_long_help = "Example:\n  posterior denoise x_t.npy --prior fmnist-32 --t 0.5 --out x0.npy"
    )]
    Denoise(DenoiseArgs),
    /// Turn a checkpoint into a prior directory without Python: a guided-diffusion or EDM
    /// PyTorch state dict (.pt) or a diffusers UNet2DModel directory.
    #[command(
        after_long_help = "Example:\n  posterior import ffhq_10m.pt --out ffhq256 --image_size 256 --num_channels 128 ..."
    )]
    Import(Box<import::ImportArgs>),
    /// Measure a prior's denoising error per time on held-out images and write FLAIR's
    /// regulariser table (put it in the prior's directory as calibration.json).
    #[command(
        after_long_help = "Example:\n  posterior calibrate --prior fmnist-32 --data held_out.npy --out calibration.json"
    )]
    Calibrate(CalibrateArgs),
    /// Run a benchmark suite (problems/*.toml): every image, task and method, with a table
    /// (results.md), one JSON line per result (results.jsonl) and image grids; a rerun
    /// resumes. `bench merge DIR... --out DIR` joins shards.
    #[command(
        after_long_help = "Examples:\n  posterior bench problems/mri-brain-4x.toml --out runs/mri-4x\n  posterior bench problems/fmnist-restoration.toml --methods tv,dds --limit 2 --out runs/quick"
    )]
    Bench(BenchArgs),
    /// Tune methods' settings on a suite's validation images (never its test images) with
    /// argmin, maximising mean PSNR; writes SUITE.tuned.toml beside the suite, whose rows
    /// `bench` then adds.
    #[command(
        after_long_help = "Example:\n  posterior tune problems/mri-brain-4x.toml --methods dps,dds,tv --budget 10"
    )]
    Tune(TuneArgs),
    /// List the priors reachable by name (shipped under priors/ or in $POSTERIOR_PRIORS).
    #[command(after_long_help = "Example:\n  posterior priors --json")]
    Priors {
        /// Print a JSON list of objects (name, domain, resolution, channels, range, ...).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct MapsArgs {
    /// Raw multi-coil k-space: fastMRI .h5, BART .cfl [H, W, 1, coils], .npy (coils, 2, H, W)
    /// or complex (coils, H, W).
    pub kspace: PathBuf,
    /// espirit (BART ecalib -m1) | walsh (adaptive combine of the calibration images).
    #[arg(long, default_value = "espirit")]
    pub method: String,
    /// The slice of a multi-slice file (default: the middle one).
    #[arg(long)]
    pub slice: Option<usize>,
    /// ESPIRiT kernel side (default 6); the fully sampled centre must be larger.
    #[arg(long)]
    pub kernel: Option<usize>,
    /// Largest calibration region side (default 24).
    #[arg(long)]
    pub region: Option<usize>,
    /// ESPIRiT: singular values kept, s_i / s_0 > sqrt(threshold) (default 0.001).
    #[arg(long)]
    pub threshold: Option<f64>,
    /// ESPIRiT: maps set to zero where the eigenvalue is below this (default 0.8).
    #[arg(long)]
    pub crop: Option<f64>,
    /// Where to write the maps: .npy complex64 (coils, H, W) or BART .cfl [H, W, 1, coils].
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the eigenvalue map (1, H, W) here (.npy).
    #[arg(long)]
    pub eigenvalues: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// The suite file (TOML; see problems/README.md).
    pub suite: Option<PathBuf>,
    /// Only these methods (comma-separated names from the suite).
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<String>>,
    /// Only the first N images (volumes in volume mode).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Only shard K of N (1-based): the images whose position is K-1 modulo N.
    #[arg(long)]
    pub shard: Option<String>,
    /// Output directory (created; an existing one of the same suite is resumed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only load and check the suite (data, methods, operators, prior); run nothing.
    #[arg(long)]
    pub check: bool,
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    /// The suite file; its `[[validation]]` images are scored.
    pub suite: PathBuf,
    /// The suite's methods to tune (comma-separated labels).
    #[arg(long, value_delimiter = ',', required = true)]
    pub methods: Vec<String>,
    /// Settings to tune as METHOD:SETTING (comma-separated), e.g. dds:gamma,dps:zeta;
    /// default: tv/cg lambda, dps zeta, dds gamma and cg_iters, reddiff lambda and lr, flair
    /// weight, smc twist_scale.
    #[arg(long, value_delimiter = ',')]
    pub params: Option<Vec<String>>,
    /// Only these tasks (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Option<Vec<String>>,
    /// Evaluations per method and task (each reconstructs every validation image once; the
    /// first scores the defaults).
    #[arg(long)]
    pub budget: usize,
    /// Where to write (default: SUITE.tuned.toml beside the suite).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Merge the output directories of shards of one suite into one.
    Merge {
        /// The shards' output directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where to write the merged results.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The prior: a prior directory or a shipped prior's name.
    #[arg(long)]
    pub prior: String,
    /// Held-out images: an .npy (N, C, H, W) in the prior's units, or a directory of .npy /
    /// .png files (PNG [0, 1] mapped onto the prior's range).
    #[arg(long)]
    pub data: PathBuf,
    /// Use at most this many images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Number of times, uniform in (0, 1] on the rectified-flow path.
    #[arg(long, default_value_t = 20)]
    pub times: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the table (.json).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct DenoiseArgs {
    /// The noisy input x_t (.npy), shape (C, H, W) or (N, C, H, W), in the prior's units.
    pub input: PathBuf,
    /// The prior: a prior directory (model.json + weights) or a shipped prior's name.
    #[arg(long)]
    pub prior: String,
    /// guided-diffusion's discrete timestep N in [0, T), fed to the network as is.
    #[arg(long, conflicts_with = "t")]
    pub step: Option<f64>,
    /// A continuous time in [0, 1] on the prior's path (t = (N + 1) / T at step N).
    #[arg(long)]
    pub t: Option<f64>,
    /// Write the network's raw output (eps, and the variance channels of a learned-sigma
    /// model) instead of the Tweedie estimate.
    #[arg(long)]
    pub raw: bool,
    /// Where to write the result (.npy).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct DegradeArgs {
    /// The image to measure: PNG/JPEG/TIFF, .npy (H, W) or (C, H, W), NIfTI (.nii, .nii.gz),
    /// DICOM (.dcm).
    pub input: PathBuf,
    /// The operator spec, e.g. `blur:kernel=gaussian,sigma=3` (see `posterior ops`).
    #[arg(long = "op")]
    pub op: String,
    /// The noise spec: `none`, `gaussian:sigma=0.05`, `poisson:scale=100`,
    /// `complex-gaussian:sigma=0.01`.
    #[arg(long, default_value = "none")]
    pub noise: String,
    /// Seed for the operator's randomness (masks, kernels) and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// For volumes (NIfTI): the slice index (default: the middle slice).
    #[arg(long)]
    pub slice: Option<usize>,
    /// For volumes (NIfTI): the slicing axis.
    #[arg(long, default_value = "axial")]
    pub axis: String,
    /// Where to write the measurement (.npy); the sidecar goes beside it as .json.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write a picture of the measurement (PNG).
    #[arg(long)]
    pub preview: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ReconstructArgs {
    /// The measurement: a `degrade` .npy with its .json sidecar, or (with --op) a photo
    /// (PNG/JPEG/TIFF), a .npy (image, sinogram (views, detectors), k-space (coils, 2, H, W)),
    /// raw k-space (fastMRI .h5, BART .cfl).
    pub measurement: PathBuf,
    /// The operator that made a measurement without a sidecar, e.g.
    /// `blur:kernel=file,path=psf.png`, `mri` (raw k-space), `ct:geometry=fan,views=60`.
    #[arg(long = "op")]
    pub op: Option<String>,
    /// The image shape C,H,W where the data does not determine it (CT, phase retrieval).
    #[arg(long, value_delimiter = ',')]
    pub image_shape: Option<Vec<usize>>,
    /// K-space files with several slices: one slice index, or `all` (the default for .h5
    /// and multi-slice .cfl: the volume slice by slice).
    #[arg(long)]
    pub slice: Option<String>,
    /// MRI coil maps for raw k-space: espirit (default) | walsh | a file (.npy, .cfl); the
    /// same as `maps=` in --op.
    #[arg(long)]
    pub maps: Option<String>,
    /// The noise level: a number (Gaussian sigma per real entry, in the measurement's
    /// units) or a noise spec; default: the sidecar's, else estimated from the data.
    #[arg(long)]
    pub noise: Option<String>,
    /// The image intensity range LO,HI mapped onto the prior's (and used for PNG output);
    /// default: from the measurement (MRI: 99.5th percentile of the zero-filled magnitude;
    /// CT: of the FBP) or the file's bit depth.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub image_range: Option<Vec<f32>>,
    /// Save the operator and options used beside the measurement (MEASUREMENT.json), so
    /// that the next `reconstruct` needs no --op.
    #[arg(long)]
    pub write_sidecar: bool,
    /// Classical method: adjoint | cg | tv | fbp (CT) | gd | lbfgs | hio (phase retrieval).
    /// Default cg; not combined with --sampler. gd and lbfgs fit Poisson counts by their
    /// likelihood (Beer-Lambert CT), other data by least squares.
    #[arg(long, conflicts_with = "sampler")]
    pub method: Option<String>,
    /// Posterior sampler with a diffusion prior: dps | reddiff | dds | smc (= tds) | fps.
    #[arg(long)]
    pub sampler: Option<String>,
    /// The prior for --sampler: a prior directory or a shipped prior's name (default: the
    /// operator family's, brain-mri for mri, ct-ellipses for ct, fmnist-32 otherwise).
    #[arg(long)]
    pub prior: Option<String>,
    /// Sampler steps (denoiser evaluations); default: the sampler's official setting.
    #[arg(long)]
    pub steps: Option<usize>,
    /// SMC particles per posterior sample.
    #[arg(long)]
    pub particles: Option<usize>,
    /// A sampler setting, KEY=VALUE (repeatable): dps zeta, eta; dds gamma, cg_iters, eta,
    /// cg_tol; reddiff lambda, lr; flair weight, lr, t_end, dc_steps, dc_lr, cg_iters;
    /// smc/tds/fps twist_scale, ess_fraction, clip, eta, cg_iters, cg_tol.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Independent posterior samples; the output is their mean, --std their spread.
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// auto | cpu | cuda.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Stop the sampler after this many seconds and keep its latest denoised estimate.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Write the denoised estimate every --snapshot-every steps as a PNG strip here.
    #[arg(long)]
    pub snapshots: Option<PathBuf>,
    /// Steps between snapshots (default: every step).
    #[arg(long)]
    pub snapshot_every: Option<usize>,
    /// Write the pixelwise posterior standard deviation (uncertainty map) here (.png or
    /// .npy): the SMC ensemble's, or the spread of --samples >= 2.
    #[arg(long)]
    pub std: Option<PathBuf>,
    /// Iterations (defaults: cg 30, tv 300, gd 200, hio 1000).
    #[arg(long)]
    pub iters: Option<usize>,
    /// Regularisation weight: Tikhonov for cg (default 0), relative TV weight for tv
    /// (default 1e-3).
    #[arg(long)]
    pub lambda: Option<f32>,
    /// FBP filter: ramp, shepp-logan, cosine, hann.
    #[arg(long, default_value = "ramp")]
    pub filter: String,
    /// Constrain the reconstruction to be nonnegative (tv, gd).
    #[arg(long)]
    pub nonneg: bool,
    /// Keep a complex reconstruction as its (re, im) pair instead of the magnitude (.npy only).
    #[arg(long)]
    pub complex: bool,
    /// Seed for methods with a random start (hio) and for the samplers.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the reconstruction: .png (the image range), .npy (units of the input
    /// image), .cfl (BART), .nii / .nii.gz (NIfTI; a volume when a volume was read).
    #[arg(long)]
    pub out: PathBuf,
    /// The original image: print PSNR / SSIM / NRMSE against it (in the measurement's
    /// units; a fastMRI file's reference image is used when this is absent).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Write a result holding NaN or infinite values (with a warning) instead of failing;
    /// for debugging a method that diverges.
    #[arg(long)]
    pub allow_nonfinite: bool,
}

impl ReconstructArgs {
    /// Where `--write-sidecar` writes: the measurement's name with `.json`.
    pub fn write_sidecar_path(&self) -> Option<PathBuf> {
        self.write_sidecar
            .then(|| crate::measurement::Sidecar::path_for(&self.measurement))
    }
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Output directory for the PNGs.
    #[arg(long, default_value = "demo")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// The prior: a prior directory (model.json + model.safetensors) or a shipped prior's
    /// name; or a Gaussian mixture: `gmm:demo2d`,
    /// `gmm:components=K,dim=D,seed=S[,cov=diag][,path=vp|cosine|ve|flow]`, or a .json file.
    #[arg(long)]
    pub prior: String,
    /// ddpm | ddim | euler | heun | dpm++2m.
    #[arg(long, default_value = "ddim")]
    pub sampler: String,
    /// Sampler steps (denoiser evaluations; Heun uses two per step).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// DDIM's eta: 0 deterministic, 1 ancestral.
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Sample on this path instead of the prior's own (vp, cosine, ve, flow), by
    /// signal-to-noise matching.
    #[arg(long)]
    pub path: Option<String>,
    /// Number of samples.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Seed of the starting noise and of the sampler's fresh noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many seconds and return the latest denoised estimate.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Clip the denoised estimate to the prior's intensity range at every step
    /// (guided-diffusion's clip_denoised).
    #[arg(long)]
    pub clip: bool,
    /// Output: .png (a grid of images for a network prior; a scatter plot over the density
    /// for a 2-D mixture) or .npy (samples, (N, C, H, W) or (N, D)).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Degrade(a) => degrade::run(&a),
        Command::Reconstruct(a) => reconstruct::run(&a),
        Command::Maps(a) => maps::run(&a),
        Command::Ops => {
            print!("{}", ops::listing());
            Ok(())
        }
        Command::Demo(a) => demo::run(&a),
        Command::Sample(a) => sample::run(&a),
        Command::Denoise(a) => denoise::run(&a),
        Command::Priors { json } => priors::run(json),
        Command::Calibrate(a) => calibrate::run(&a),
        Command::Import(a) => import::run(&a),
        Command::Bench(a) => bench::run(&a),
        Command::Tune(a) => tune::run(&a),
    }
}
