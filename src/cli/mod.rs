//! Command-line definitions and rendering: clap types, the text tables and
//! the `--json` output of every report, and the terminal progress bar.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::progress::Progress;

/// A registry for microsandbox VM disk snapshots.
#[derive(Debug, Parser)]
#[command(name = "msb-registry", version, about, propagate_version = true)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Whether `--root` came from `MSB_REGISTRY_ROOT` rather than the command line.
    #[arg(skip)]
    pub root_from_env: bool,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parse the process arguments (exiting with clap's message on a usage error).
    pub fn parse_args() -> Self {
        let matches = Self::command()
            .try_get_matches()
            .unwrap_or_else(|e| usage_exit(e));
        let mut cli = Self::from_arg_matches(&matches).unwrap_or_else(|e| usage_exit(e));
        cli.root_from_env = matches.value_source("root") == Some(ValueSource::EnvVariable);
        cli
    }
}

/// Help and version go out as clap prints them; a usage error becomes one
/// line on stderr (clap's first paragraph, which names the argument) and
/// exit 2, like every other error.
fn usage_exit(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit()
    }
    eprintln!("{}; see --help", usage_line(&e.render().to_string()));
    std::process::exit(crate::error::exit::USAGE)
}

/// The first paragraph of a rendered clap error, on one line.
fn usage_line(rendered: &str) -> String {
    rendered
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Registry root [default: $MSB_REGISTRY_ROOT, else $XDG_DATA_HOME/msb-registry]
    #[arg(long, global = true, env = "MSB_REGISTRY_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// More detail on stderr.
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register an existing snapshot directory (copied in, verified, hashed).
    Add {
        /// The snapshot directory (holding manifest.json and the upper file).
        dir: PathBuf,
        /// Name in the registry [default: the directory's name].
        #[arg(long)]
        name: Option<String>,
        /// A microsandbox cache directory to take the pinned image's artifacts from.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
    },
    /// List every snapshot, newest first.
    List,
    /// Show one snapshot: files, labels, image, children.
    Show {
        /// Name, full digest, or unique digest prefix (8+ hex digits).
        reference: String,
    },
    /// Ancestors root to head, or the descendant tree.
    Lineage {
        /// Name, full digest, or unique digest prefix.
        reference: String,
        /// Show the snapshots descending from REF instead.
        #[arg(long)]
        descendants: bool,
    },
    /// Run a read-only SQL query on the index.
    Sql {
        /// The query (one statement).
        query: String,
    },
    /// Remove a snapshot.
    Rm {
        /// Name, full digest, or unique digest prefix.
        reference: String,
        /// Remove even when other snapshots name it as parent.
        #[arg(long)]
        force: bool,
    },
    /// Rebuild the index from the artifacts on disk.
    Reindex,
    /// What each snapshot costs: data, bytes unique to it, bytes new beyond its parent.
    Du {
        /// Snapshots to show (name, digest or prefix) [default: all].
        references: Vec<String>,
    },
    /// Remove unreferenced cache artifacts, debris and dead imports.
    Gc {
        /// Print what would be removed and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Check the index against the disk; exit 5 when anything is wrong.
    Verify {
        /// Check only this snapshot (name, digest or prefix) and its image.
        reference: Option<String>,
        /// Also re-hash every file against its recorded digest.
        #[arg(long)]
        content: bool,
    },
    /// Write a snapshot (and optionally its chain and image) as an archive.
    Export {
        /// Name, full digest, or unique digest prefix of the head snapshot.
        reference: String,
        /// The archive file, or `-` for stdout.
        #[arg(short, long, value_name = "FILE|-")]
        output: PathBuf,
        /// Include every ancestor, root first.
        #[arg(long)]
        with_parents: bool,
        /// Include the head's image artifacts from the cache.
        #[arg(long)]
        with_image: bool,
        /// Write a plain tar instead of zstd.
        #[arg(long, conflicts_with = "level")]
        plain_tar: bool,
        /// Regular entries only, holes written as zeros (for older microsandbox loaders).
        #[arg(long)]
        dense: bool,
        /// zstd compression level.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..=19))]
        level: Option<i32>,
        /// Export only the snapshots after REF in the chain; the receiver must hold REF.
        #[arg(long, value_name = "REF")]
        base: Option<String>,
    },
    /// Build a sample chain, export it, import it into a second registry, show its lineage, verify.
    ///
    /// Works in `--root DIR` when given on the command line (MSB_REGISTRY_ROOT is
    /// ignored, so a real registry is never touched), else in a new directory
    /// under the system temporary directory, which is kept for inspection.
    Demo,
    /// Import an archive (zstd or plain tar) written by export or microsandbox's save.
    Import {
        /// The archive file, or - for standard input.
        archive: String,
        /// Name for the head snapshot [default: its archive directory, sha256-<16 hex>].
        #[arg(long)]
        name: Option<String>,
    },
}

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

/// Where command output goes: stdout, JSON or aligned text.
pub struct Printer {
    /// Print JSON instead of text.
    pub json: bool,
    out: std::io::BufWriter<std::io::Stdout>,
}

impl Printer {
    /// A printer to stdout.
    pub fn new(json: bool) -> Self {
        Printer {
            json,
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    /// Write a report as pretty JSON.
    pub fn json(&mut self, value: &impl Serialize) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut self.out, value)?;
        writeln!(self.out)
    }

    /// Write one line of text.
    pub fn line(&mut self, text: impl std::fmt::Display) -> std::io::Result<()> {
        writeln!(self.out, "{text}")
    }

    /// Write rows as a table with aligned columns under a header.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        let all: Vec<Vec<String>> = std::iter::once(header)
            .chain(rows.iter().cloned())
            .collect();
        aligned(&all).into_iter().try_for_each(|l| self.line(l))
    }

    /// Flush stdout.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Rows rendered as lines with each column padded to its widest cell and
/// two spaces between columns (the last column is not padded).
pub fn aligned(rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let n = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(n),
                None => widths.push(n),
            }
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
                }
            }
            line
        })
        .collect()
}

/// `n thing` / `n things`.
pub fn plural(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("{n} {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// Bytes in binary units, for humans.
pub fn human_bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}

mod du;
mod run;

pub use run::run;
