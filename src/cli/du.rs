//! Rendering of `du`.

use super::{Printer, human_bytes, plural};
use crate::du::DuReport;

/// Print a `du` report: JSON, or a table and a totals line (and a hint on
/// stderr when some snapshots have no chunk lists yet).
pub fn render(p: &mut Printer, r: &DuReport) -> std::io::Result<()> {
    if r.unindexed > 0 {
        eprintln!(
            "hint: {} predate the chunk index; `msb-registry reindex` computes their chunk lists",
            plural(r.unindexed as usize, "snapshot")
        );
    }
    if p.json {
        return p.json(r);
    }
    let rows: Vec<Vec<String>> = r
        .snapshots
        .iter()
        .map(|s| {
            let chunked = |n: u64| {
                if s.indexed {
                    human_bytes(n)
                } else {
                    "?".into()
                }
            };
            vec![
                s.name.clone(),
                s.digest.hex()[..16].to_string(),
                human_bytes(s.logical_bytes),
                chunked(s.data_bytes),
                chunked(s.unique_bytes),
                chunked(s.new_bytes),
                human_bytes(s.rm_frees_bytes),
            ]
        })
        .collect();
    p.table(
        &[
            "NAME", "DIGEST", "LOGICAL", "DATA", "UNIQUE", "NEW", "RM FREES",
        ],
        &rows,
    )?;
    let t = &r.totals;
    p.line(format!(
        "total: {}, logical {}, data {}, unique chunks {} ({}), on disk {}, dedup ratio {:.2}",
        plural(t.snapshots as usize, "snapshot"),
        human_bytes(t.logical_bytes),
        human_bytes(t.data_bytes),
        human_bytes(t.unique_chunk_bytes),
        plural(t.unique_chunks as usize, "chunk"),
        human_bytes(t.allocated_bytes),
        t.dedup_ratio
    ))
}
