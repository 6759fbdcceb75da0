//! All command output goes through [`Printer`]: JSON, or text lines and
//! aligned tables, on stdout.

use std::io::Write;

use serde::Serialize;

/// Where command output goes: stdout, JSON or aligned text.
pub struct Printer {
    /// Print JSON instead of text.
    pub json: bool,
    /// `-q`: leave out summary lines (data and JSON still print).
    pub quiet: bool,
    pub(super) out: std::io::BufWriter<std::io::Stdout>,
}

impl Printer {
    /// A printer to stdout.
    pub fn new(json: bool, quiet: bool) -> Self {
        Printer {
            json,
            quiet,
            out: std::io::BufWriter::new(std::io::stdout()),
        }
    }

    /// Write a report as pretty JSON.
    pub fn json(&mut self, value: &impl Serialize) -> std::io::Result<()> {
        serde_json::to_writer_pretty(&mut self.out, value)?;
        writeln!(self.out)
    }

    /// Write bytes as they are (completion scripts, the man page).
    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)
    }

    /// Write one line of text, every character a terminal would interpret
    /// escaped (names and labels in the index may predate their refusal).
    pub fn line(&mut self, text: impl std::fmt::Display) -> std::io::Result<()> {
        writeln!(
            self.out,
            "{}",
            crate::model::text::escape(&text.to_string())
        )
    }

    /// Write rows as a table with aligned columns under a header.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        let all: Vec<Vec<String>> = std::iter::once(header)
            .chain(rows.iter().cloned())
            .map(|row| {
                row.iter()
                    .map(|c| crate::model::text::escape(c).into_owned())
                    .collect()
            })
            .collect();
        aligned(&all).into_iter().try_for_each(|l| self.line(l))
    }

    /// Write a hint for the user on stderr (never on stdout, which carries data).
    pub fn hint(&mut self, text: Option<&str>) {
        if let Some(text) = text {
            eprintln!("hint: {text}");
        }
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
