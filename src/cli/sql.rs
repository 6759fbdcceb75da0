//! `sql` output, streamed: JSON objects or text rows are written as SQLite
//! produces them, never collected, so `sql … | head` on an endless query
//! ends at once and memory stays flat.

use std::io::Write;
use std::path::Path;

use super::printer::Printer;
use crate::model::error::Result;
use crate::model::text::escape;
use crate::ops::query::SqlSink;

/// Text rows whose column widths are fixed by the first this many rows.
const WIDTH_ROWS: usize = 1000;

/// Run `query` and stream its rows to the printer.
pub fn run(root: &Path, query: &str, p: &mut Printer) -> Result<std::io::Result<()>> {
    if p.json {
        crate::ops::query::sql(
            root,
            query,
            &mut JsonRows {
                p,
                columns: Vec::new(),
                first: true,
            },
        )
    } else {
        crate::ops::query::sql(
            root,
            query,
            &mut TextRows {
                p,
                pending: Vec::new(),
                widths: None,
            },
        )
    }
}

/// A JSON array of one object per row, written element by element.
struct JsonRows<'a> {
    p: &'a mut Printer,
    columns: Vec<String>,
    first: bool,
}

impl SqlSink for JsonRows<'_> {
    fn columns(&mut self, columns: &[String]) -> std::io::Result<()> {
        self.columns = columns.to_vec();
        self.p.out.write_all(b"[")
    }
    fn row(&mut self, values: Vec<serde_json::Value>) -> std::io::Result<()> {
        let object: serde_json::Map<String, serde_json::Value> =
            self.columns.iter().cloned().zip(values).collect();
        let text = serde_json::to_string_pretty(&object)?;
        let sep = if self.first { "\n  " } else { ",\n  " };
        self.first = false;
        self.p.out.write_all(sep.as_bytes())?;
        self.p.out.write_all(text.replace('\n', "\n  ").as_bytes())
    }
    fn finish(&mut self) -> std::io::Result<()> {
        let end = if self.first { "]\n" } else { "\n]\n" };
        self.p.out.write_all(end.as_bytes())
    }
}

/// An aligned table: the header and the first rows are held until
/// [`WIDTH_ROWS`] have arrived (or the query ended) to size the columns;
/// later rows are written at once with those widths.
struct TextRows<'a> {
    p: &'a mut Printer,
    pending: Vec<Vec<String>>,
    widths: Option<Vec<usize>>,
}

impl TextRows<'_> {
    fn flush_pending(&mut self) -> std::io::Result<()> {
        let mut widths = vec![0; self.pending.first().map_or(0, Vec::len)];
        for row in &self.pending {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::mem::take(&mut self.pending) {
            write_row(self.p, &widths, &row)?;
        }
        self.widths = Some(widths);
        Ok(())
    }
}

fn write_row(p: &mut Printer, widths: &[usize], row: &[String]) -> std::io::Result<()> {
    let mut line = String::new();
    for (i, cell) in row.iter().enumerate() {
        line.push_str(cell);
        if i + 1 < row.len() {
            let w = widths.get(i).copied().unwrap_or(0);
            line.push_str(&" ".repeat(w.saturating_sub(cell.chars().count()) + 2));
        }
    }
    writeln!(p.out, "{line}")
}

impl SqlSink for TextRows<'_> {
    fn columns(&mut self, columns: &[String]) -> std::io::Result<()> {
        self.pending
            .push(columns.iter().map(|c| escape(c).into_owned()).collect());
        Ok(())
    }
    fn row(&mut self, values: Vec<serde_json::Value>) -> std::io::Result<()> {
        let cells: Vec<String> = values
            .into_iter()
            .map(|v| match v {
                serde_json::Value::String(s) => escape(&s).into_owned(),
                serde_json::Value::Null => "NULL".into(),
                other => other.to_string(),
            })
            .collect();
        match &self.widths {
            Some(widths) => write_row(self.p, widths, &cells),
            None => {
                self.pending.push(cells);
                if self.pending.len() > WIDTH_ROWS {
                    self.flush_pending()?;
                }
                Ok(())
            }
        }
    }
    fn finish(&mut self) -> std::io::Result<()> {
        if self.widths.is_none() {
            self.flush_pending()?;
        }
        Ok(())
    }
}
