//! Benchmark suites: `posterior bench SUITE.toml`.
//!
//! A suite (`problems/*.toml`, see [`suite`]) names held-out images, degradations (operator
//! and noise specs) and methods (classical baselines and posterior samplers with settings).
//! [`run::Plan::new`] loads and checks everything before any work: data paths, method
//! names, operators against the images and the prior. [`run::run`] then reconstructs every
//! (image, task, seed, method) item, appending one JSON line per item to `results.jsonl`
//! (a rerun skips finished items), and writes `results.md` (mean ± std per method) and a
//! PNG grid per image. [`run::merge`] joins the output directories of shards
//! (`--shard K/N`) into the same results an unsharded run gives.

pub mod coverage;
pub mod data;
pub mod results;
pub mod run;
pub mod suite;
pub mod tune;

pub use results::Record;
pub use run::{merge, parse_shard, run, Event, Plan, RunOptions};
pub use suite::{Suite, SuiteFile};
