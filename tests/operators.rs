//! Every operator the CLI can build passes the adjoint test (linear) or the VJP check
//! (nonlinear), at several image shapes, odd and even, gray and colour.
//!
//! The list is every example that `posterior ops` shows plus every operator kind that the
//! examples may not cover, so a new operator is tested as soon as it is listed.

use std::path::PathBuf;

use posterior::spec::{self, BuildContext};
use posterior_operators::forward::vjp_mismatch;
use posterior_operators::{adjoint_test, normal_mismatch, solve_regularized_residual, Operator};

/// Operator kinds not necessarily among the families' examples.
const EXTRA: &[&str] = &[
    "blur:kernel=gaussian,sigma=1.5,size=7",
    "blur:kernel=uniform,size=5",
    "blur:kernel=motion,intensity=0.5,size=9",
    "inpaint:mask=box",
    "inpaint:mask=boxes",
    "inpaint:mask=random,fraction=0.5",
    "inpaint:mask=strokes",
    "sr:factor=2,method=avgpool",
    "sr:factor=4,method=bicubic",
    "mri:accel=4,mask=uniform1d",
    "mri:coils=4,accel=4,mask=random1d",
    "mri:coils=4,accel=3,mask=gaussian2d",
    "mri:coils=2,accel=4,mask=poisson",
    "ct:geometry=parallel,views=18",
    "ct:geometry=parallel,arc=90",
    "ct:geometry=fan,views=30,detector=arc",
    "ct:geometry=fan,views=30,detector=flat",
    "ct:model=beer-lambert,views=20",
    "phase:oversampling=2",
];

/// Image shapes every operator is checked at; SR needs sides divisible by its factor, so
/// the odd shapes are used where the operator accepts them.
const SHAPES: &[[usize; 3]] = &[[1, 32, 32], [1, 24, 40], [1, 33, 31], [3, 32, 32]];

fn specs() -> Vec<String> {
    let mut all: Vec<String> = spec::families()
        .iter()
        .flat_map(|f| f.examples.iter())
        .filter(|e| !e.contains("path=") && !e.contains("sens=") && !e.contains("maps="))
        .map(|s| s.to_string())
        .collect();
    all.extend(EXTRA.iter().map(|s| s.to_string()));
    all
}

#[test]
fn every_operator_passes_the_adjoint_or_vjp_test() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for text in specs() {
        let family = spec::family(spec::Spec::parse(&text).unwrap().family.as_str()).unwrap();
        for shape in SHAPES {
            if family.grayscale_only && shape[0] != 1 {
                continue;
            }
            let ctx = BuildContext::new(shape, 7, PathBuf::from("."));
            let physics = match spec::build(&text, &ctx) {
                Ok(p) => p,
                // Super-resolution rejects sides its factor does not divide; every other
                // operator must build at every shape.
                Err(e) if text.starts_with("sr") && (shape[1] % 8 != 0 || shape[2] % 8 != 0) => {
                    assert!(e.to_string().contains("factor"), "{text} at {shape:?}: {e}");
                    continue;
                }
                Err(e) => {
                    failures.push(format!("{text} at {shape:?} does not build: {e}"));
                    continue;
                }
            };
            match &physics.operator {
                Operator::Linear(op) => {
                    let report = adjoint_test(op.as_ref(), 11);
                    let name = format!("{text} at {shape:?}");
                    if let Err(msg) = report.verdict(&name, 1e-5) {
                        failures.push(msg);
                    }
                    // Closed-form normals agree with apply-then-adjoint (f32 FFTs and
                    // projections of O(1) data: ~1e-6 relative; 1e-4 leaves room).
                    let m = normal_mismatch(op.as_ref(), 13);
                    if m > 1e-4 {
                        failures.push(format!("{name}: normal differs by {m:.2e}"));
                    }
                    // Closed-form (A^T A + g)^-1, where there is one: the condition number
                    // is at most (||A||^2 + g) / g <= 11 for these unit-norm-ish operators.
                    if let Some(r) = solve_regularized_residual(op.as_ref(), 0.1, 17) {
                        if r > 1e-4 {
                            failures.push(format!("{name}: solve_regularized residual {r:.2e}"));
                        }
                    }
                }
                Operator::Nonlinear(op) => {
                    // A random positive image in [0.1, 0.5]: its Fourier magnitudes stay away
                    // from zero (where |F x| is not differentiable) and the Beer-Lambert
                    // transmission away from underflow.
                    let r = posterior_operators::linear::random_array(
                        op.domain_shape(),
                        3,
                        "vjp-point",
                    );
                    let x = r.mapv(|v| 0.3 + 0.2 * v.tanh());
                    let m = vjp_mismatch(op.as_ref(), x.view(), 1e-3, 5);
                    // Central differences in f32 with h = 1e-3: truncation error O(h^2) and rounding
                    // O(eps / h) ~ 1e-4 of the directional derivative; 1e-2 leaves room.
                    if m > 1e-2 {
                        failures.push(format!("{text} at {shape:?}: VJP mismatch {m:.2e}"));
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        checked >= 40,
        "only {checked} operator/shape pairs were checked"
    );
}

#[test]
fn bad_specs_name_the_operator_and_the_key() {
    let ctx = BuildContext::new(&[1, 32, 32], 0, ".");
    let cases = [
        ("blurr:sigma=3", "blurr"),
        ("blur:sigma=abc", "sigma"),
        ("blur:kernel=triangle", "kernel"),
        ("blur:colour=red", "colour"),
        ("mri:accel=0", "accel"),
        ("mri:mask=spiral", "mask"),
        ("inpaint:fraction=1.5,mask=random", "fraction"),
        ("sr:factor=0", "factor"),
        ("ct:views=0", "views"),
        ("ct:geometry=cone", "geometry"),
        ("blur:sigma", "sigma"),
    ];
    for (text, key) in cases {
        match spec::build(text, &ctx) {
            Ok(_) => panic!("`{text}` was accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains(key),
                    "`{text}`: message `{msg}` does not name `{key}`"
                );
            }
        }
    }
}
