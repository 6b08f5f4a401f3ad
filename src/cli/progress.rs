//! A progress bar for iterative work, drawn on stderr only when it is a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// Wraps an indicatif bar; `callback` gives the `FnMut(iteration, figure)` that solvers take.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar of `len` steps labelled `label` (hidden when `len` is 0).
    pub fn new(label: &str, len: usize) -> Self {
        let bar = if len == 0 {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(len as u64)
        };
        let style =
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_string());
        Progress { bar }
    }

    /// Advances to `iteration` and shows `figure`.
    pub fn update(&self, iteration: usize, figure: f64) {
        self.bar.set_position(iteration as u64);
        self.bar.set_message(format!("{figure:.3e}"));
    }

    /// Sets the number of steps (when it is known only once the work starts).
    pub fn set_len(&self, len: usize) {
        self.bar.set_length(len as u64);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A sampler's progress: the step, of `state.total`, and the current time.
impl crate::sample::Observer for Progress {
    fn observe(&mut self, step: usize, state: &crate::sample::State) {
        self.set_len(state.total);
        self.update(step, state.t);
    }
}
