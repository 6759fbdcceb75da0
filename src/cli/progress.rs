//! The terminal progress bar: the CLI's [`Progress`], drawn on stderr.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::progress::Progress;

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
}

impl Progress for BarProgress {
    fn start(&self, phase: &str, total: Option<u64>) {
        let style = match total {
            Some(t) => {
                self.bar.set_length(t);
                ProgressStyle::with_template(
                    "{msg:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
            }
            None => ProgressStyle::with_template("{msg:>8} {bytes} {binary_bytes_per_sec}"),
        };
        if let Ok(style) = style {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_position(0);
        self.bar.set_message(phase.to_string());
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
