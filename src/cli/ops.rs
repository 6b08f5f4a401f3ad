//! `posterior ops`: every operator family with its parameters and defaults.

use std::fmt::Write;

use crate::recon::Method;
use crate::spec;

/// The text `posterior ops` prints.
pub fn listing() -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Operators (--op NAME:key=value,...):\n");
    for f in spec::families() {
        let _ = writeln!(s, "{}  {}", f.name, f.summary);
        if f.grayscale_only {
            let _ = writeln!(
                s,
                "    (single-channel: colour images are converted to grayscale)"
            );
        }
        write_params(&mut s, f.params);
        for e in f.examples {
            let _ = writeln!(s, "    e.g. --op {e}");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "Noise models (--noise NAME:key=value):\n");
    for n in spec::noise::NOISE_MODELS {
        let _ = writeln!(s, "{}  {}", n.name, n.summary);
        write_params(&mut s, n.params);
        let _ = writeln!(s);
    }
    let methods: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
    let _ = writeln!(
        s,
        "Reconstruction methods (reconstruct --method): {}",
        methods.join(", ")
    );
    s
}

fn write_params(s: &mut String, params: &[spec::ParamInfo]) {
    for p in params {
        let default = if p.default.is_empty() { "-" } else { p.default };
        let _ = writeln!(s, "    {:<14} default {:<10} {}", p.key, default, p.help);
    }
}
