//! The terminal progress bar: the CLI's [`Progress`], drawn on stderr.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::process::progress::Progress;

/// A progress bar on stderr, shown only on a terminal and without `-q`.
pub struct BarProgress {
    bar: ProgressBar,
}

impl BarProgress {
    /// A bar when stderr is a terminal and `quiet` is off, else a hidden one.
    pub fn new(quiet: bool) -> Self {
        let bar = if quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        BarProgress { bar }
    }

    /// Prints a line on stderr without tearing the bar.
    pub fn notice_printer(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let bar = self.bar.clone();
        move |line: &str| bar.suspend(|| eprintln!("{line}"))
    }
}

impl Progress for BarProgress {
    fn start(&self, phase: &str, total: Option<u64>) {
        let template = match total {
            Some(_) => "{msg:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            None => "{msg:>8} {bytes} {binary_bytes_per_sec}",
        };
        // Style and message before anything that draws, so the first frame
        // is already the phase's bar (no default-style frame flickers by).
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_message(phase.to_string());
        // Each phase starts its own rate and ETA estimate, and the bar
        // redraws on a steady tick, not only when bytes arrive.
        self.bar.reset();
        if let Some(t) = total {
            self.bar.set_length(t);
        }
        if !self.bar.is_hidden() {
            self.bar
                .enable_steady_tick(std::time::Duration::from_millis(100));
        }
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
