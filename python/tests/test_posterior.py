"""Tests of the Python bindings: operators, array handling, priors, samplers, Ctrl-C,
benchmarks, and bit-for-bit agreement with the command line.

Run by ``scripts/test-all.sh`` after ``cargo test --workspace`` (it sets POSTERIOR_CLI to
the ``posterior`` binary that build made)."""

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import posterior

ROOT = Path(__file__).resolve().parents[2]
HELDOUT = ROOT / "tests" / "data" / "heldout"


def garment(i=1):
    """A held-out 32 x 32 Fashion-MNIST image in [0, 1] (the fmnist-32 prior's size)."""
    return ((np.load(HELDOUT / "fmnist-32.npy")[i] + 1) / 2).astype(np.float32)


def brain(i=2):
    """A held-out 64 x 64 brain slice in [0, 1] (the brain-mri prior's size)."""
    return ((np.load(HELDOUT / "brain-mri.npy")[i] + 1) / 2).astype(np.float32)


def rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- operators

# Every operator family at a small size, the spec options that change the code path.
LINEAR_SPECS = [
    ("blur:kernel=gaussian,sigma=1.5", (3, 24, 20)),
    ("blur:kernel=motion,intensity=0.5", (1, 24, 24)),
    ("blur:kernel=uniform,size=5,boundary=reflect", (1, 24, 20)),
    ("blur:kernel=gaussian,sigma=1,size=5,boundary=valid", (1, 24, 20)),
    ("inpaint:mask=box", (3, 16, 16)),
    ("inpaint:mask=random,fraction=0.5", (1, 16, 16)),
    ("inpaint:mask=strokes", (1, 16, 16)),
    ("sr:factor=2", (1, 16, 16)),
    ("sr:factor=4,method=avgpool", (3, 16, 16)),
    ("mri", (1, 16, 16)),
    ("mri:coils=4,accel=2,mask=poisson", (1, 16, 16)),
    ("mri:coils=3,accel=4,mask=random1d", (2, 16, 16)),
    ("ct:views=12", (1, 16, 16)),
    ("ct:geometry=fan,views=12,detector=flat", (1, 16, 16)),
]


def dot(a, b):
    return float(np.dot(a.ravel().astype(np.float64), b.ravel().astype(np.float64)))


@pytest.mark.parametrize("spec,shape", LINEAR_SPECS)
def test_every_linear_operator_has_its_adjoint(spec, shape):
    # Checked here in numpy, independently of the library's own adjoint test: <Ax, y> and
    # <x, A^T y> agree to f32 rounding (~1e-7 relative; 1e-5 leaves room for long sums).
    A = posterior.operator(spec, image_shape=shape, seed=3)
    assert A.is_linear
    x = rng(0).standard_normal(A.domain_shape).astype(np.float32)
    y = rng(1).standard_normal(A.range_shape).astype(np.float32)
    ax, aty = A.apply(x), A.adjoint(y)
    assert ax.shape == tuple(A.range_shape) and aty.shape == tuple(A.domain_shape)
    rel = abs(dot(ax, y) - dot(x, aty)) / (np.linalg.norm(ax) * np.linalg.norm(y))
    assert rel < 1e-5, f"{spec}: {rel}"
    assert A.adjoint_test(seed=2) < 1e-5
    # normal = adjoint(apply), and the norm estimate is the top singular value (> 0).
    np.testing.assert_allclose(A.normal(x), A.adjoint(A.apply(x)), rtol=1e-4, atol=1e-4)
    assert A.norm() > 0


def test_operators_from_arrays_have_their_adjoints_and_use_the_arrays():
    r = rng(5)
    maps = (r.standard_normal((4, 12, 10)) + 1j * r.standard_normal((4, 12, 10))).astype(np.complex64)
    mask = (r.random((12, 10)) < 0.5).astype(np.float32)
    kernel = r.random((3, 5)).astype(np.float32)
    keep = r.random((12, 10)) < 0.7
    ops = [
        posterior.Operator.mri(maps, mask),
        posterior.Operator.mri(maps, mask, complex_image=True),
        posterior.Operator.inpaint(keep, channels=2),
        posterior.Operator.blur(kernel, image_shape=(1, 12, 10)),
        posterior.Operator.blur(kernel, image_shape=(1, 12, 10), boundary="valid"),
    ]
    for A in ops:
        x = r.standard_normal(A.domain_shape).astype(np.float32)
        y = r.standard_normal(A.range_shape).astype(np.float32)
        rel = abs(dot(A.apply(x), y) - dot(x, A.adjoint(y))) / (
            np.linalg.norm(A.apply(x)) * np.linalg.norm(y))
        assert rel < 1e-5, A
    # SENSE by hand: coil c measures mask * FFT(S_c x) (centred, orthonormal), as (re, im).
    A = ops[1]
    img = (r.standard_normal((12, 10)) + 1j * r.standard_normal((12, 10))).astype(np.complex64)
    k = A.apply(np.stack([img.real, img.imag]))
    for c in range(4):
        ref = mask * np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(maps[c] * img), norm="ortho"))
        np.testing.assert_allclose(k[c, 0] + 1j * k[c, 1], ref, atol=2e-4)
    # The inpainting mask keeps exactly its pixels, in every channel.
    ones = np.ones((2, 12, 10), np.float32)
    assert (ops[2].apply(ones) == keep.astype(np.float32)[None]).all()


def test_nonlinear_operators_have_vjps_and_no_adjoint():
    # Phase retrieval |F x| and Beer-Lambert CT: the VJP against central differences, at
    # smooth points: |F x| curves sharply where a frequency's magnitude is small, so the
    # phase image is a positive random image (its transform stays away from 0; scaled by
    # 0.1 and with h = 1e-2 the differences were off by 2x, with h = 1e-3 by 0.5%); CT
    # attenuations of 0.05..0.15 keep exp(-line integral) in its curved range.
    for spec, scale, h in [("phase:oversampling=2", 1.0, 3e-3),
                           ("ct:views=8,model=beer-lambert,i0=1000", 0.1, 1e-2)]:
        A = posterior.operator(spec, image_shape=(1, 8, 8), seed=1)
        assert not A.is_linear
        x = (rng(2).random(A.domain_shape) + 0.5).astype(np.float32) * scale
        d = rng(3).standard_normal(A.domain_shape).astype(np.float32)
        v = rng(4).standard_normal(A.range_shape).astype(np.float32)
        fd = dot(A.apply(x + h * d) - A.apply(x - h * d), v) / (2 * h)
        an = dot(A.vjp(x, v), d)
        assert abs(fd - an) < 2e-2 * max(abs(fd), abs(an)), (spec, fd, an)
        with pytest.raises(ValueError, match="nonlinear"):
            A.adjoint(v)


def test_spec_operators_are_the_ones_degrade_builds():
    # The same spec, shape and seed give the same random mask: equal measurements.
    a = posterior.operator("mri:coils=4,mask=poisson", image_shape=(1, 16, 16), seed=7)
    b = posterior.operator("mri:coils=4,mask=poisson", image_shape=(1, 16, 16), seed=7)
    c = posterior.operator("mri:coils=4,mask=poisson", image_shape=(1, 16, 16), seed=8)
    x = rng(0).random((1, 16, 16)).astype(np.float32)
    assert np.array_equal(a.measure(x), b.measure(x))
    assert not np.array_equal(a.measure(x), c.measure(x))
    assert a.image_shape == [1, 16, 16] and a.domain_shape == [2, 16, 16]
    assert a.range_shape == [4, 2, 16, 16]


# ---------------------------------------------------------------- arrays in

def test_wrong_dimensions_are_value_errors_naming_both_shapes():
    A = posterior.operator("blur:kernel=gaussian,sigma=1", image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match=r"\[1, 8, 8\]"):
        A.apply(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"\[1, 8, 8\]"):
        A.adjoint(np.zeros((1, 8, 9), np.float32))
    with pytest.raises(ValueError, match="scalar"):
        A.apply(np.float32(1.0))
    with pytest.raises(ValueError, match=r"image_shape is \(C, H, W\)"):
        posterior.operator("blur", image_shape=(8, 8))


def test_float64_is_converted_and_complex_becomes_a_leading_pair():
    A = posterior.operator("mri:coils=2", image_shape=(2, 8, 8), seed=1)
    x32 = rng(0).standard_normal((2, 8, 8)).astype(np.float32)
    assert np.array_equal(A.apply(x32.astype(np.float64)), A.apply(x32))
    assert A.apply(x32.astype(np.float64)).dtype == np.float32
    # A complex (H, W) image is the (2, H, W) pair; complex k-space (coils, H, W) is
    # (coils, 2, H, W).
    z = (x32[0] + 1j * x32[1]).astype(np.complex64)
    assert np.array_equal(A.apply(z), A.apply(x32))
    assert np.array_equal(A.apply(z.astype(np.complex128)), A.apply(x32))
    k = A.apply(x32)
    kz = (k[:, 0] + 1j * k[:, 1]).astype(np.complex64)
    assert np.array_equal(A.adjoint(kz), A.adjoint(k))


def test_non_contiguous_nan_and_other_dtypes_are_refused():
    A = posterior.operator("inpaint", image_shape=(1, 8, 8))
    x = np.zeros((1, 8, 16), np.float32)[:, :, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        A.apply(x)
    A.apply(np.ascontiguousarray(x))
    bad = np.zeros((1, 8, 8), np.float32)
    bad[0, 3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        A.apply(bad)
    with pytest.raises(ValueError, match="int64"):
        A.apply(np.zeros((1, 8, 8), np.int64))
    with pytest.raises(ValueError, match="NaN"):
        posterior.reconstruct(bad, A, method="cg")


def test_bad_requests_are_value_errors_and_files_os_errors():
    A = posterior.operator("inpaint", image_shape=(1, 8, 8))
    y = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="unknown operator"):
        posterior.operator("magic:x=1", image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="unknown key"):
        posterior.operator("blur:sigmaa=1", image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="either method"):
        posterior.reconstruct(y, A)
    with pytest.raises(ValueError, match="unknown method"):
        posterior.reconstruct(y, A, method="magic")
    with pytest.raises(ValueError, match="steps= applies"):
        posterior.reconstruct(y, A, method="tv", steps=3)
    A32 = posterior.operator("inpaint", image_shape=(1, 32, 32))
    with pytest.raises(ValueError, match="unknown sampler"):
        posterior.reconstruct(np.zeros((1, 32, 32), np.float32), A32, sampler="magic",
                              prior="fmnist-32")
    with pytest.raises(OSError, match="no prior here"):
        posterior.Prior.open("/nonexistent/prior")
    with pytest.raises(ValueError, match="CallablePrior"):
        posterior.reconstruct(y, A, sampler="dds", prior=lambda x, t: x)


# ---------------------------------------------------------------- reconstructions

def test_classical_methods_reconstruct():
    # TV on a 30%-missing garment beats the measurement (zeros in the holes).
    x = garment()
    A = posterior.operator("inpaint:mask=random,fraction=0.3", image_shape=x.shape, seed=2)
    y = A.measure(x, noise=0.01, seed=2)
    r = posterior.reconstruct(y, A, method="tv", lambda_=1e-3, noise=0.01)
    assert r.image.shape == x.shape and r.nfe == 0 and r.std is None
    err = lambda z: float(np.sqrt(np.mean((z - x) ** 2)))
    assert err(r.image) < 0.5 * err(y)


def native_and_callable(name, with_vjp):
    native = posterior.Prior.open(name)
    info = native.info
    wrapped = posterior.CallablePrior(
        lambda x, t: native.denoise(x, t), shape=info.shape, schedule="linear",
        steps=1000, range=info.range,
        vjp=(lambda x, t, v: native.vjp(x, t, v)) if with_vjp else None)
    return native, wrapped


SAMPLER_RUNS = [
    ("dds", {}), ("reddiff", {}), ("fps", {"particles": 2}),
    ("dps", {}), ("tds", {"particles": 2}), ("smc", {"particles": 2}),
]


@pytest.mark.parametrize("sampler,extra", SAMPLER_RUNS)
def test_a_python_callable_prior_gives_the_native_result(sampler, extra):
    # The native fmnist-32 prior wrapped as a Python callable: every sampler computes the
    # same numbers (the callable returns the network's own float32 output, so agreement is
    # to rounding: 1e-5 absolute on [0, 1] images).
    native, wrapped = native_and_callable("fmnist-32", with_vjp=True)
    x = garment()
    A = posterior.operator("blur:kernel=gaussian,sigma=1", image_shape=x.shape)
    y = A.measure(x, noise=0.02, seed=1)
    kw = dict(sampler=sampler, steps=3, seed=4, noise=0.02, image_range=(0.0, 1.0), **extra)
    a = posterior.reconstruct(y, A, prior=native, **kw)
    b = posterior.reconstruct(y, A, prior=wrapped, **kw)
    np.testing.assert_allclose(a.image, b.image, atol=1e-5)
    assert (a.nfe, a.vjps) == (b.nfe, b.vjps)
    assert a.particles.shape[1:] == x.shape


def test_flair_runs_with_a_callable_prior():
    # FLAIR weights its regulariser by the prior's calibration table, which a callable
    # prior does not have (uniform weights): it runs, but is not the native's result.
    _, wrapped = native_and_callable("fmnist-32", with_vjp=False)
    x = garment()
    A = posterior.operator("inpaint:mask=box", image_shape=x.shape)
    r = posterior.reconstruct(A.measure(x), A, sampler="flair", prior=wrapped, steps=3,
                              noise=0.01, image_range=(0.0, 1.0))
    assert r.nfe == 3 and np.isfinite(r.image).all()


def test_samplers_that_need_a_vjp_refuse_a_callable_without_one():
    _, wrapped = native_and_callable("fmnist-32", with_vjp=False)
    A = posterior.operator("inpaint", image_shape=(1, 32, 32))
    y = A.measure(garment())
    for sampler in ["dps", "tds", "smc"]:
        with pytest.raises(ValueError, match="vjp"):
            posterior.reconstruct(y, A, sampler=sampler, prior=wrapped, noise=0.01)


def test_errors_inside_a_callable_reach_the_caller_as_raised():
    def broken(x, t):
        raise ZeroDivisionError("inside the user's denoiser")

    p = posterior.CallablePrior(broken, shape=(1, 32, 32))
    A = posterior.operator("inpaint", image_shape=(1, 32, 32))
    with pytest.raises(ZeroDivisionError, match="user's denoiser"):
        posterior.reconstruct(A.measure(garment()), A, sampler="dds", prior=p, steps=2)
    wrong = posterior.CallablePrior(lambda x, t: x[:, :, :16], shape=(1, 32, 32))
    with pytest.raises(ValueError, match="returned shape"):
        posterior.reconstruct(A.measure(garment()), A, sampler="dds", prior=wrong, steps=2)


def interrupt_after(seconds):
    timer = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    return timer


@pytest.mark.parametrize("callable_prior", [False, True])
def test_ctrl_c_interrupts_a_long_reconstruction(callable_prior):
    # 1000 DDS steps take far longer than the 1 s after which SIGINT arrives; the run must
    # stop with KeyboardInterrupt within a few denoiser evaluations.
    native, wrapped = native_and_callable("fmnist-32", with_vjp=False)
    prior = wrapped if callable_prior else native
    A = posterior.operator("inpaint", image_shape=(1, 32, 32))
    y = A.measure(garment())
    start = time.monotonic()
    timer = interrupt_after(1.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            posterior.reconstruct(y, A, sampler="dds", prior=prior, steps=1000, noise=0.01)
    finally:
        timer.cancel()
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 15, elapsed
    # The module still works afterwards.
    r = posterior.reconstruct(y, A, sampler="dds", prior=prior, steps=2, noise=0.01)
    assert r.nfe == 2


def test_smc_gives_an_uncertainty_map_and_its_particles():
    native = posterior.Prior.open("fmnist-32")
    x = garment()
    A = posterior.operator("inpaint:mask=box", image_shape=x.shape)
    r = posterior.reconstruct(A.measure(x, noise=0.05, seed=0), A, sampler="fps",
                              prior=native, steps=4, particles=3, samples=2, noise=0.05,
                              image_range=(0.0, 1.0))
    assert r.std.shape == x.shape and r.particles.shape == (6, 1, 32, 32)
    # The spread is larger in the box (unmeasured) than outside it.
    box = np.zeros(x.shape, bool)
    box[:, 8:24, 8:24] = True
    assert r.std[box].mean() > 2 * r.std[~box].mean()


def test_the_readme_example_reconstructs_an_mri_slice_with_dds():
    # The README's "Python" section, as written there (fewer steps).
    A = posterior.operator("mri:coils=8,accel=4", image_shape=(1, 64, 64), seed=3)
    y = A.measure(brain(), noise="complex-gaussian:sigma=0.005", seed=3)
    r = posterior.reconstruct(y, A, sampler="dds", prior="brain-mri", steps=10, seed=0,
                              noise="complex-gaussian:sigma=0.005")
    zf = posterior.reconstruct(y, A, method="adjoint")
    err = lambda z: float(np.sqrt(np.mean((z - brain()) ** 2)))
    assert r.image.shape == (1, 64, 64) and r.nfe == 10
    assert err(r.image) < 0.8 * err(zf.image)


# ---------------------------------------------------------------- CLI agreement

def cli():
    exe = os.environ.get("POSTERIOR_CLI") or shutil.which("posterior")
    if not exe:
        for d in [os.environ.get("CARGO_TARGET_DIR"), ROOT / "target"]:
            if d and (Path(d) / "debug" / "posterior").is_file():
                exe = str(Path(d) / "debug" / "posterior")
                break
    if not exe:
        pytest.skip("no posterior binary: set POSTERIOR_CLI (scripts/test-all.sh does)")
    return exe


def test_dds_from_python_equals_the_cli_bit_for_bit(tmp_path):
    exe = cli()
    np.save(tmp_path / "slice.npy", brain())
    spec, noise, seed = "mri:coils=8,accel=4", "complex-gaussian:sigma=0.005", 11
    run = lambda *a: subprocess.run([exe, *a], check=True, capture_output=True, text=True)
    run("degrade", str(tmp_path / "slice.npy"), "--op", spec, "--noise", noise,
        "--seed", str(seed), "--out", str(tmp_path / "k.npy"))
    run("reconstruct", str(tmp_path / "k.npy"), "--sampler", "dds", "--prior", "brain-mri",
        "--steps", "6", "--seed", str(seed), "--device", "cpu", "--out", str(tmp_path / "x.npy"))
    A = posterior.operator(spec, image_shape=(1, 64, 64), seed=seed)
    y = np.load(tmp_path / "k.npy")
    assert np.array_equal(y, A.measure(brain(), noise=noise, seed=seed))
    r = posterior.reconstruct(y, A, sampler="dds", prior="brain-mri", steps=6, seed=seed,
                              noise=noise, device="cpu")
    x_cli = np.load(tmp_path / "x.npy")
    assert x_cli.dtype == np.float32 and x_cli.shape == r.image.shape
    assert np.array_equal(x_cli, r.image), np.abs(x_cli - r.image).max()


# ---------------------------------------------------------------- benchmarks

def test_a_bench_run_writes_and_returns_its_records(tmp_path):
    suite = ROOT / "problems" / "fmnist-restoration.toml"
    records = posterior.bench(suite, tmp_path / "run", methods=["tv"], limit=1)
    assert records, "no records"
    assert all(r["method"] == "tv" for r in records)
    assert all(np.isfinite(r["psnr"]) and r["psnr"] > 10 for r in records)
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    assert len(lines) == len(records)
    # A rerun resumes: nothing left to do, the same records.
    again = posterior.bench(suite, tmp_path / "run", methods=["tv"], limit=1)
    assert [r["psnr"] for r in again] == [r["psnr"] for r in records]
