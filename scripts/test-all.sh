#!/usr/bin/env bash
# The whole test suite, as CI runs it: the Rust workspace (unit, integration and CLI tests,
# the examples), rustdoc without warnings, then the Python bindings built into a virtual environment and their
# pytest suite. Needs Rust and python3 (3.9+, with venv); maturin, numpy and pytest come
# from PyPI into the venv. Environment:
#   CARGO_TARGET_DIR  where cargo builds (default: target/); the extension builds there too,
#                     reusing the workspace's compiled dependencies
#   POSTERIOR_VENV    the virtual environment (default: $CARGO_TARGET_DIR/python-venv)
#   PYTHON            the interpreter that makes the venv (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}

cargo test --workspace
# The API documentation builds without a warning (broken or private links, bad HTML).
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --workspace --quiet

py_start=$(date +%s)
venv=${POSTERIOR_VENV:-$CARGO_TARGET_DIR/python-venv}
if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "maturin>=1.16,<2" "numpy>=1.21" pytest
# The dev profile, as `cargo test` built the library; the registry dependencies it compiled
# are reused (the two local crates and pyo3 compile again: a separate workspace).
build_start=$(date +%s)
VIRTUAL_ENV=$venv PATH="$venv/bin:$PATH" \
    "$venv/bin/maturin" develop --quiet --manifest-path python/Cargo.toml
echo "python extension built in $(( $(date +%s) - build_start )) s"
# The CLI binary `cargo test` built, for the bit-for-bit agreement test.
POSTERIOR_CLI=$CARGO_TARGET_DIR/debug/posterior "$venv/bin/python" -m pytest -q python/tests
echo "python part (venv, build, pytest) took $(( $(date +%s) - py_start )) s"
