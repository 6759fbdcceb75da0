//! The command-line front end: argument definitions ([`args`]), dispatch
//! of a parsed command to the library ([`run`]), one text renderer per
//! report ([`render`]), and the printer and progress bar they write through.

mod args;
mod printer;
mod progress;
mod render;
mod run;
mod sql;

pub use args::{Cli, Command, ExportArgs, GlobalArgs, report_usage};
pub use run::run;
