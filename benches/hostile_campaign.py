#!/usr/bin/env python3
"""A hostile-input campaign against the `posterior` binary (issue 18), run by hand.

Makes mutated files of every format the CLI reads (bit flips, header-word overwrites,
truncations, appended junk, field edits of JSON/TOML text), plus numeric cases (extreme spec
parameters, sidecar numbers, image scales, --lambda/--iters/--steps), runs each through the
command that reads it under `/usr/bin/time -v` with a 60 s timeout, and counts:

  panics (exit 101), aborts (a signal, e.g. SIGABRT from a failed allocation), hangs (over
  60 s), exit-0 runs whose output holds NaN/inf, and the peak resident memory, compared with
  the peak of the valid input of the largest allowed size (an image of exactly
  POSTERIOR_MAX_ELEMENTS pixels, degraded with the same operator).

Usage (numpy needed; the binary from `cargo build`):
    python3 benches/hostile_campaign.py --bin target/debug/posterior --cases 200 --out /tmp/campaign
The cap is set to --cap elements (default 2^22) for every run so that the largest allowed
valid input is cheap to measure; the huge-claim files are also run once at the default cap.
"""

import argparse
import gzip
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

HOSTILE_NUMBERS = ["0", "-1", "1", "2", "-0", "0.5", "1e39", "-1e39", "3e38", "1e30", "1e308",
                   "1e-45", "NaN", "nan", "inf", "-inf", "65535", "65536", "100000",
                   "1000000000", "4294967297", "18446744073709551616", "\"x\"", "null", "[]"]
HOSTILE_WORDS = ["", "unknown", "nan", "-1", "../../../etc/passwd", "/dev/zero", "F128",
                 "cosine", "beer-lambert", "mri:coils=100000", "ct:geometry=fan,sod=1e30",
                 "phase:oversampling=16", "blur:kernel=gaussian,sigma=1e39", "inpaint:mask=boxes,count=1000000000"]


def mutate_binary(b: bytes, hot: int, rng: random.Random) -> bytes:
    b = bytearray(b)
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(["flip", "flip", "word", "word", "word", "cut", "append"])
        n = len(b)
        if kind == "flip" and n:
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
        elif kind == "word":
            w = rng.choice([1, 2, 4, 8])
            region = min(hot, n)
            if region >= w:
                i = rng.randrange(region - w + 1)
                v = rng.choice([0, 2**64 - 1, 2**63 - 1, 2**31, 0xFFFF, 0x7FFF, 0x8000, 1, 2,
                                10**9, 0x7F800000, 0x7FC00000, 0x7F7FFFFF,
                                rng.getrandbits(64)])
                b[i:i + w] = struct.pack("<Q", v)[:w]
        elif kind == "cut":
            del b[rng.randrange(n + 1):]
        else:
            b += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    return bytes(b)


def mutate_text(t: str, rng: random.Random) -> str:
    for _ in range(rng.randint(1, 2)):
        kind = rng.choice(["num"] * 6 + ["word"] * 3 + ["flip", "cut"])
        if kind == "num":
            spans = [m.span() for m in re.finditer(r"(?<![\w.])-?\d[\d.eE+-]*", t)]
            if spans:
                s, e = rng.choice(spans)
                t = t[:s] + rng.choice(HOSTILE_NUMBERS) + t[e:]
        elif kind == "word":
            spans = [m.span(1) for m in re.finditer(r'"([^"\\]*)"', t)]
            if spans:
                s, e = rng.choice(spans)
                t = t[:s] + rng.choice(HOSTILE_WORDS) + t[e:]
        elif kind == "flip" and t:
            i = rng.randrange(len(t))
            t = t[:i] + chr(ord(t[i]) ^ (1 << rng.randrange(7))) + t[i + 1:]
        else:
            t = t[:rng.randrange(len(t) + 1)]
    return t


class Campaign:
    def __init__(self, binary: Path, out: Path, cap: int):
        self.bin, self.out, self.cap = binary, out, cap
        self.rows = []

    def run(self, label: str, args, cwd: Path, outputs=(), cap=None):
        env = dict(os.environ, POSTERIOR_MAX_ELEMENTS=str(cap or self.cap))
        t0 = time.time()
        p = subprocess.run(["/usr/bin/time", "-v", "timeout", "-s", "KILL", "60", str(self.bin)] + list(args),
                           cwd=cwd, env=env, capture_output=True, text=True, errors="replace")
        took = time.time() - t0
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
        m = re.search(r"Command (?:terminated by signal|exited with non-zero status) (\d+)", p.stderr)
        code = p.returncode
        signal = "terminated by signal" in p.stderr
        nonfinite = False
        if code == 0:
            for o in outputs:
                f = cwd / o
                if f.exists() and f.suffix == ".npy":
                    a = np.load(f)
                    nonfinite |= not np.isfinite(a).all()
        row = dict(label=label, code=code, signal=signal, seconds=round(took, 2), rss_kb=rss,
                   nonfinite=nonfinite, panic=("panicked" in p.stderr) or code == 101,
                   stderr=p.stderr.split("\tCommand being timed")[0][-300:])
        self.rows.append(row)
        return row


def write_npy_header(path: Path, descr: str, shape: str, data: bytes = b""):
    h = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)
    while (10 + len(h) + 1) % 64:
        h += " "
    h += "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h.encode() + data)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", type=Path, default=ROOT / "target/debug/posterior")
    ap.add_argument("--cases", type=int, default=200, help="mutated inputs per format")
    ap.add_argument("--cap", type=int, default=1 << 22)
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--out", type=Path, default=Path("/tmp/hostile-campaign"))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    shutil.rmtree(a.out, ignore_errors=True)
    a.out.mkdir(parents=True)
    c = Campaign(a.bin.resolve(), a.out, a.cap)
    work = a.out / "work"
    work.mkdir()

    # Seeds.
    img16 = (np.add.outer(np.arange(16), np.arange(16)) % 7 / 7.0).astype(np.float32)
    np.save(work / "img16.npy", img16)
    seeds = {
        "npy": ((work / "img16.npy").read_bytes(), 128, ".npy"),
        "nii.gz": (DATA.joinpath("brain_t1.nii.gz").read_bytes(), 1 << 30, ".nii.gz"),
        "nii": (gzip.decompress(DATA.joinpath("brain_t1.nii.gz").read_bytes()), 352, ".nii"),
        "dcm-ct": (DATA.joinpath("ct_slice.dcm").read_bytes(), 1400, ".dcm"),
        "dcm-mr": (DATA.joinpath("mr_frames.dcm").read_bytes(), 1400, ".dcm"),
        "png": (DATA.joinpath("example.png").read_bytes(), 64, ".png"),
        "png-rgb": (DATA.joinpath("coffee_rgb.png").read_bytes(), 64, ".png"),
    }
    try:
        from PIL import Image
        Image.open(DATA / "example.png").convert("RGB").save(work / "ex.jpg", quality=85)
        Image.fromarray(img16, mode="F").save(work / "f32.tif")
        seeds["jpg"] = ((work / "ex.jpg").read_bytes(), 600, ".jpg")
        seeds["tif"] = ((work / "f32.tif").read_bytes(), 256, ".tif")
    except ImportError:
        print("PIL not available: no JPEG/TIFF seeds", file=sys.stderr)

    counts = {}
    # 1. Mutated image files through degrade.
    for fmt, (seed, hot, ext) in seeds.items():
        for k in range(a.cases):
            d = work / f"{fmt}-{k}"
            d.mkdir()
            (d / f"x{ext}").write_bytes(mutate_binary(seed, hot, rng))
            op = rng.choice(["blur:sigma=1", "inpaint:mask=box", "sr:factor=2", "mri:accel=2", "ct:views=8"])
            c.run(f"{fmt} degrade {op}", ["degrade", f"x{ext}", "--op", op, "--out", "y.npy"], d, ["y.npy"])
            shutil.rmtree(d)
        counts[fmt] = a.cases

    # 2. BART coil maps (.cfl/.hdr).
    base = work / "maps"
    base.mkdir()
    maps = (np.ones((16, 16, 1, 2)) * (0.6 + 0.2j)).astype(np.complex64)
    hdr = "# Dimensions\n16 16 1 2 1 1 1 1 1 1 1 1 1 1 1 1\n"
    cfl = maps.flatten(order="F").tobytes()
    for k in range(a.cases):
        d = work / f"cfl-{k}"
        d.mkdir()
        shutil.copy(work / "img16.npy", d)
        if rng.random() < 0.5:
            (d / "m.hdr").write_text(mutate_text(hdr, rng))
            (d / "m.cfl").write_bytes(cfl)
        else:
            (d / "m.hdr").write_text(hdr)
            (d / "m.cfl").write_bytes(mutate_binary(cfl, len(cfl), rng))
        c.run("cfl degrade mri:sens", ["degrade", "img16.npy", "--op", "mri:sens=m.cfl,accel=2", "--out", "y.npy"], d, ["y.npy"])
        shutil.rmtree(d)
    counts["cfl"] = a.cases

    # 3. Sidecars through reconstruct.
    ops = ["blur:sigma=1", "mri:coils=2,accel=2", "ct:views=8", "phase", "sr:factor=2", "inpaint:mask=random"]
    for k in range(a.cases):
        d = work / f"side-{k}"
        d.mkdir()
        shutil.copy(work / "img16.npy", d)
        op = rng.choice(ops)
        r = c.run("sidecar setup", ["degrade", "img16.npy", "--op", op, "--out", "y.npy"], d)
        c.rows.pop()
        text = (d / "y.json").read_text()
        (d / "y.json").write_text(mutate_text(text, rng))
        method = "gd" if op == "phase" else rng.choice(["adjoint", "cg", "tv", "gd"])
        c.run(f"sidecar reconstruct {method}", ["reconstruct", "y.npy", "--method", method, "--out", "x.npy"], d, ["x.npy"])
        shutil.rmtree(d)
    counts["sidecar"] = a.cases

    # 4. Model cards and safetensors through a sampler (2 steps, the 16x16 test network).
    src = DATA / "adm" / "plain_conv_f16"
    card = (src / "model.json").read_text()
    weights = (src / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", weights[:8])[0]
    setup = work / "prior-setup"
    setup.mkdir()
    shutil.copy(work / "img16.npy", setup)
    c.run("prior setup", ["degrade", "img16.npy", "--op", "blur:sigma=1", "--noise", "gaussian:sigma=0.01", "--out", "y.npy"], setup)
    c.rows.pop()
    for k in range(2 * a.cases):
        d = work / f"prior-{k}"
        (d / "p").mkdir(parents=True)
        for f in ["y.npy", "y.json"]:
            shutil.copy(setup / f, d)
        if k % 2 == 0:
            (d / "p/model.json").write_text(mutate_text(card, rng))
            (d / "p/model.safetensors").write_bytes(weights)
            label = "card"
        else:
            (d / "p/model.json").write_text(card)
            if rng.random() < 0.5:
                head = mutate_text(weights[8:8 + n].decode(), rng).encode()
                (d / "p/model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + weights[8 + n:])
            else:
                (d / "p/model.safetensors").write_bytes(mutate_binary(weights, 8 + n, rng))
            label = "safetensors"
        sampler = rng.choice(["dps", "reddiff", "dds"])
        c.run(f"{label} {sampler}", ["reconstruct", "y.npy", "--sampler", sampler, "--steps", "2", "--prior", "p", "--out", "x.npy"], d, ["x.npy"])
        shutil.rmtree(d)
    counts["card"] = counts["safetensors"] = a.cases

    # 5. Suites through bench (a 16x16 image, classical methods).
    suite = f'''name = "s"
range = [0.0, 1.0]
seeds = [0]

[[data]]
name = "img"
kind = "files"
path = "{DATA}"
files = ["example.png"]
size = 16

[[tasks]]
name = "blur"
op = "blur:kernel=gaussian,sigma=1"
noise = "gaussian:sigma=0.01"

[[methods]]
name = "cg"
method = "cg"
iters = 3
lambda = 0.01

[[methods]]
name = "tv"
method = "tv"
iters = 3
'''
    for k in range(a.cases):
        d = work / f"suite-{k}"
        d.mkdir()
        (d / "s.toml").write_text(mutate_text(suite, rng))
        r = c.run("suite bench", ["bench", "s.toml", "--out", "out"], d)
        if r["code"] == 0:
            for line in (d / "out/results.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if rec.get("psnr") is None and "inf" not in line:
                    c.rows[-1]["nonfinite"] = True
        shutil.rmtree(d)
    counts["suite"] = a.cases

    # 6. Numeric cases: extreme spec parameters, image scales and settings.
    num = lambda: rng.choice(["0", "-1", "1e39", "3e38", "1e30", "1e15", "1e-45", "nan", "inf", "-inf", "1e9", "65536", "0.5", "2", "7"])
    templates = ["blur:kernel=gaussian,sigma={}", "blur:kernel=motion,intensity={}", "inpaint:mask=random,fraction={}",
                 "inpaint:mask=boxes,count={},size=3", "sr:factor={}", "mri:accel={},acs=0.1", "mri:coils={},accel=2",
                 "ct:views={}", "ct:geometry=fan,sod={}", "ct:model=beer-lambert,i0={}", "phase:oversampling={}"]
    noises = ["none", "gaussian:sigma={}", "poisson:scale={}"]
    for k in range(a.cases):
        d = work / f"num-{k}"
        d.mkdir()
        scale = rng.choice([1.0, 1e15, 1e20, 1e30, 3e38, -1e30, 1e-30])
        np.save(d / "img.npy", (img16 * scale).astype(np.float32))
        op = rng.choice(templates).format(num())
        noise = rng.choice(noises).format(num())
        r = c.run("numeric degrade", ["degrade", "img.npy", "--op", op, "--noise", noise, "--out", "y.npy"], d, ["y.npy"])
        if r["code"] == 0:
            args = ["reconstruct", "y.npy", "--out", "x.npy"]
            m = rng.choice(["adjoint", "cg", "tv", "gd", "fbp", "hio", "smc", "dps"])
            if m in ("smc", "dps"):
                args += ["--sampler", m, "--steps", rng.choice(["0", "1", "3", "1000000000"])]
                if m == "smc":
                    args += ["--particles", rng.choice(["1", "2", "3"])]
            else:
                args += ["--method", m]
                if rng.random() < 0.5:
                    args += ["--iters", rng.choice(["0", "1", "5", "1000000000"])]
                if rng.random() < 0.5:
                    args += [f"--lambda={num()}"]
            c.run(f"numeric reconstruct {m}", args, d, ["x.npy"])
        shutil.rmtree(d)
    counts["numeric"] = a.cases

    # 7. Huge claims at the default cap (their memory must stay small).
    d = work / "claims"
    d.mkdir()
    write_npy_header(d / "huge.npy", "<f4", "(1000000000, 1000000000)")
    write_npy_header(d / "big_ok_header.npy", "<f4", "(16384, 16384)", b"\0" * 1024)
    for f in ["huge.npy", "big_ok_header.npy"]:
        c.run(f"claim {f} (default cap)", ["degrade", f, "--op", "blur", "--out", "y.npy"], d, ["y.npy"], cap=1 << 28)

    # 8. The reference: the valid input of the largest allowed size, same command.
    side = int(np.sqrt(a.cap))
    ref = work / "ref"
    ref.mkdir()
    np.save(ref / "img.npy", np.random.default_rng(0).random((side, side), dtype=np.float32))
    refs = [c.run(f"reference {side}x{side} degrade {op}", ["degrade", "img.npy", "--op", op, "--out", "y.npy"], ref, ["y.npy"])
            for op in ["blur:sigma=1", "mri:accel=2", "sr:factor=2"]]
    ref_rss = max(r["rss_kb"] for r in refs)
    c.rows = [r for r in c.rows if not r["label"].startswith("reference")]

    rows = c.rows
    summary = dict(
        runs=len(rows),
        per_format=counts,
        exit0=sum(r["code"] == 0 for r in rows),
        exit1=sum(r["code"] == 1 for r in rows),
        panics=sum(r["panic"] for r in rows),
        aborts_or_signals=sum(r["signal"] and r["seconds"] < 60 for r in rows),
        hangs_over_60s=sum(r["seconds"] >= 60 for r in rows),
        exit0_nonfinite=sum(r["nonfinite"] for r in rows),
        other_exit_codes=sorted({r["code"] for r in rows} - {0, 1}),
        slowest_s=max(r["seconds"] for r in rows),
        peak_rss_mib=round(max(r["rss_kb"] for r in rows) / 1024, 1),
        peak_rss_label=max(rows, key=lambda r: r["rss_kb"])["label"],
        reference_rss_mib=round(ref_rss / 1024, 1),
        cap_elements=a.cap,
    )
    (a.out / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    bad = [r for r in rows if r["panic"] or r["signal"] or r["nonfinite"] or r["code"] not in (0, 1)]
    for r in bad[:20]:
        print("BAD", r)
    return 1 if bad or summary["peak_rss_mib"] > 2 * summary["reference_rss_mib"] else 0


if __name__ == "__main__":
    sys.exit(main())
