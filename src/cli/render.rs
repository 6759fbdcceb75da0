//! Text rendering of every report, one function per command; `--json`
//! serializes the same reports instead (see [`emit`]).

use crate::ops::quarantine::QuarantineRemoval;
use crate::store::quarantine::QuarantineEntry;
use std::path::Path;

use serde::Serialize;

use super::printer::{Printer, aligned, human_bytes, plural};
use crate::model::text::escape;
use crate::ops::add::AddReport;
use crate::ops::add_many::AddManyReport;
use crate::ops::demo::DemoReport;
use crate::ops::du::DuReport;
use crate::ops::export::ExportReport;
use crate::ops::gc::{GcReport, Kept, KeptReason};
use crate::ops::import::ImportReport;
use crate::ops::query::{LineageEntry, ListEntry, ShowReport};
use crate::ops::reindex::ReindexReport;
use crate::ops::remove::RemoveReport;
use crate::ops::rename::RenameReport;
use crate::ops::sign::{SignReport, SignaturesReport};
use crate::ops::verify::VerifyReport;
use crate::store::shared_home::HomeReport;

/// Outcome of rendering: an I/O error on stdout (a closed pipe ends quietly).
pub type Rendered = std::io::Result<()>;

/// Print `report` as JSON with `--json`, else through its text renderer.
pub fn emit<T: Serialize>(
    p: &mut Printer,
    report: &T,
    text: impl FnOnce(&mut Printer, &T) -> Rendered,
) -> Rendered {
    if p.json {
        p.json(report)
    } else {
        text(p, report)
    }
}

/// Like [`emit`], for the summary a command that acts prints: `-q` leaves
/// the text out (JSON, which was asked for, still prints).
pub fn summary<T: Serialize>(
    p: &mut Printer,
    report: &T,
    text: impl FnOnce(&mut Printer, &T) -> Rendered,
) -> Rendered {
    if p.quiet && !p.json {
        Ok(())
    } else {
        emit(p, report, text)
    }
}

/// `add`.
pub fn add(p: &mut Printer, report: &AddReport) -> Rendered {
    let mut line = added(
        &report.name,
        &report.digest,
        report.already_present,
        report.files,
        report.bytes,
    );
    if !report.already_present {
        line += &format!(
            "; cache: {} installed, {} already present",
            report.cache_files_installed, report.cache_files_skipped
        );
    }
    p.line(line)
}

/// `add` of several directories: a line per snapshot, parents first, then the cache.
pub fn add_many(p: &mut Printer, report: &AddManyReport) -> Rendered {
    for s in &report.snapshots {
        p.line(added(
            &s.name,
            &s.digest,
            s.already_present,
            s.files,
            s.bytes,
        ))?;
    }
    p.line(format!(
        "cache: {} installed, {} already present",
        report.cache_files_installed, report.cache_files_skipped
    ))
}

/// What `add` says of one snapshot.
fn added(
    name: &str,
    digest: &crate::model::digest::Digest,
    already_present: bool,
    files: usize,
    bytes: u64,
) -> String {
    if already_present {
        format!("{name} ({digest}) is already in the registry")
    } else {
        format!(
            "added {name} ({digest}): {}, {}",
            plural(files, "file"),
            human_bytes(bytes)
        )
    }
}

/// `list`.
pub fn list(p: &mut Printer, entries: &[ListEntry]) -> Rendered {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.digest.hex()[..16].to_string(),
                e.parent
                    .map(|d| {
                        let short = d.hex()[..16].to_string();
                        if e.shallow {
                            format!("{short} (absent)")
                        } else {
                            short
                        }
                    })
                    .unwrap_or_else(|| "-".into()),
                e.image_ref.clone(),
                human_bytes(e.size_bytes),
                human_bytes(e.allocated_bytes),
                e.created_at.clone(),
            ]
        })
        .collect();
    p.table(
        &[
            "NAME", "DIGEST", "PARENT", "IMAGE", "SIZE", "ON DISK", "CREATED",
        ],
        &rows,
    )
}

/// `show`.
pub fn show(p: &mut Printer, r: &ShowReport) -> Rendered {
    let s = &r.snapshot;
    let mut lines = vec![
        format!("name:            {}", s.name),
        format!("digest:          {}", s.digest),
        format!(
            "parent:          {}",
            match (&s.parent, r.shallow) {
                (Some(d), true) => format!("{d} (not in this registry)"),
                (Some(d), false) => d.to_string(),
                (None, _) => "-".into(),
            }
        ),
        format!("children:        {}", r.children),
        format!(
            "image:           {} @ {}",
            s.image_ref, s.image_manifest_digest
        ),
        format!(
            "image cached:    {}",
            if r.image_cached { "yes" } else { "no" }
        ),
        format!("format:          {} ({})", s.format, s.fstype),
        format!(
            "upper:           {} ({})",
            s.upper_file,
            human_bytes(s.size_bytes)
        ),
        format!(
            "on disk:         {} (all its files, allocated)",
            human_bytes(r.allocated_bytes)
        ),
        format!(
            "integrity:       {}",
            match (&s.integrity_algorithm, &s.integrity_digest) {
                (Some(a), Some(d)) => format!("{a} {d}"),
                _ => "none recorded".into(),
            }
        ),
        format!("created:         {}", s.created_at),
        format!(
            "source sandbox:  {}",
            s.source_sandbox.as_deref().unwrap_or("-")
        ),
    ];
    if r.shared_home {
        lines.push("shared home:     yes (microsandbox's db/msb.db or sandboxes/ is here)".into());
    }
    for (k, v) in &s.labels {
        lines.push(format!("label:           {k}={v}"));
    }
    for signer in &r.signers {
        lines.push(format!(
            "signed by:       {} ({})",
            signer.principal.as_deref().unwrap_or("-"),
            signer.fingerprint
        ));
    }
    lines.push("files:".into());
    for f in &r.files {
        lines.push(format!(
            "  {}  {}  {}",
            f.path,
            human_bytes(f.size),
            f.digest
        ));
    }
    lines.into_iter().try_for_each(|l| p.line(l))
}

/// `lineage`: ancestors, or with `descendants` the tree indented by depth.
pub fn lineage(p: &mut Printer, rows: &[LineageEntry], descendants: bool) -> Rendered {
    p.table(
        &["DEPTH", "NAME", "DIGEST"],
        &lineage_cells(rows, descendants),
    )
}

/// `rm`.
pub fn remove(p: &mut Printer, r: &RemoveReport) -> Rendered {
    p.line(format!("removed {} ({})", r.name, r.digest))
}

/// `rename`.
pub fn rename(p: &mut Printer, r: &RenameReport) -> Rendered {
    if r.old_name == r.name {
        p.line(format!("{} ({}) already has that name", r.name, r.digest))
    } else {
        p.line(format!(
            "renamed {} to {} ({})",
            r.old_name, r.name, r.digest
        ))
    }
}

/// `reindex`.
pub fn reindex(p: &mut Printer, r: &ReindexReport) -> Rendered {
    let mut out = vec![format!(
        "adopted {}, {}, {}; dropped {}; skipped {}",
        plural(r.adopted_snapshots.len(), "snapshot"),
        plural(r.adopted_cache_files.len(), "cache file"),
        plural(r.adopted_images.len(), "image"),
        r.dropped.len(),
        r.skipped.len()
    )];
    out.extend(r.dropped.iter().map(|d| format!("dropped {d}")));
    out.extend(
        r.skipped
            .iter()
            .map(|s| format!("skipped {}: {}", s.path, s.reason)),
    );
    out.into_iter().try_for_each(|l| p.line(l))
}

/// `export` to a file (to stdout, the archive is the output).
pub fn export(p: &mut Printer, r: &ExportReport) -> Rendered {
    p.line(format!(
        "exported {} (head {}) and {} to {}: {}",
        plural(r.snapshots.len(), "snapshot"),
        r.head,
        plural(r.cache_files.len(), "cache file"),
        r.archive,
        human_bytes(r.bytes)
    ))
}

/// `import`.
pub fn import(p: &mut Printer, r: &ImportReport) -> Rendered {
    let mut out = vec![format!(
        "imported {} ({}): {} new, {} already present; cache: {} installed, {} already present",
        r.name,
        r.head,
        plural(r.imported.len(), "snapshot"),
        r.skipped.len(),
        r.cache_files_installed,
        r.cache_files_skipped
    )];
    out.extend(r.imported.iter().map(|d| format!("  new      {d}")));
    out.extend(r.skipped.iter().map(|d| format!("  present  {d}")));
    out.extend(
        r.repaired
            .iter()
            .map(|x| format!("  repaired {}", x.digest)),
    );
    out.into_iter().try_for_each(|l| p.line(l))
}

/// Blobs (packs, maps, configs) the repository held or mounted, when any.
fn blobs_found(r: &crate::ops::push::PushReport) -> String {
    match (r.blobs_present, r.blobs_mounted) {
        (0, 0) => String::new(),
        (present, 0) => format!("; {} already there", plural(present as usize, "blob")),
        (present, mounted) => format!(
            "; {} already there, {mounted} mounted from another repository",
            plural(present as usize, "blob")
        ),
    }
}

/// `push`.
pub fn push(p: &mut Printer, r: &crate::ops::push::PushReport) -> Rendered {
    let head = r.snapshots.last();
    let mut out = vec![format!(
        "pushed {} to {}:{} ({}): {} sent in {} ({}); {} already there ({} not sent){}",
        head.map(|s| s.name.as_str()).unwrap_or(""),
        r.repository,
        r.tag,
        plural(r.snapshots.len(), "snapshot"),
        plural(r.chunks_uploaded as usize, "chunk"),
        plural(r.blobs_uploaded as usize, "new blob"),
        human_bytes(r.bytes_uploaded),
        plural(r.chunks_present as usize, "chunk"),
        human_bytes(r.bytes_not_sent),
        blobs_found(r),
    )];
    out.extend(r.snapshots.iter().map(|s| {
        format!(
            "  {}  {}  {}",
            s.digest,
            s.manifest_digest,
            s.tags.join(", ")
        )
    }));
    if let Some(i) = &r.image {
        out.push(format!("  image cache  {}  {}", i.manifest_digest, i.tag));
    }
    out.into_iter().try_for_each(|l| p.line(l))
}

/// `pull`.
pub fn pull(p: &mut Printer, r: &crate::ops::pull::PullReport) -> Rendered {
    let t = &r.transfer;
    let mut out = vec![format!(
        "pulled {} ({}): {} new, {} already present; {} downloaded ({}), {} local ({}){}{}",
        r.name,
        r.head,
        plural(r.imported.len(), "snapshot"),
        r.skipped.len(),
        plural(t.chunks_downloaded as usize, "chunk"),
        human_bytes(t.bytes_downloaded),
        plural(t.chunks_local as usize, "chunk"),
        human_bytes(t.bytes_local),
        if t.chunks_resumed > 0 {
            format!(", {} resumed", plural(t.chunks_resumed as usize, "chunk"))
        } else {
            String::new()
        },
        if r.image_files_installed > 0 {
            format!(
                "; {} installed",
                plural(r.image_files_installed, "cache file")
            )
        } else {
            String::new()
        }
    )];
    out.extend(r.imported.iter().map(|d| format!("  new      {d}")));
    out.extend(r.skipped.iter().map(|d| format!("  present  {d}")));
    out.extend(
        r.repaired
            .iter()
            .map(|x| format!("  repaired {}", x.digest)),
    );
    out.into_iter().try_for_each(|l| p.line(l))
}

/// `gc` and `gc --dry-run`.
pub fn gc(p: &mut Printer, r: &GcReport) -> Rendered {
    let rows: Vec<Vec<String>> = r
        .removed
        .iter()
        .map(|x| {
            vec![
                x.kind.as_str().to_string(),
                x.path.clone(),
                human_bytes(x.bytes),
            ]
        })
        .collect();
    if !rows.is_empty() {
        p.table(&["KIND", "PATH", "SIZE"], &rows)?;
        p.line("")?;
    }
    let totals: Vec<Vec<String>> = r
        .totals
        .iter()
        .map(|t| {
            vec![
                t.kind.as_str().to_string(),
                t.count.to_string(),
                human_bytes(t.bytes),
            ]
        })
        .collect();
    if !totals.is_empty() {
        p.table(&["KIND", "COUNT", "SIZE"], &totals)?;
    }
    for k in &r.kept {
        p.line(kept_line(k))?;
    }
    if let Some(home) = &r.microsandbox {
        p.line(home_line(home))?;
    }
    let verb = if r.dry_run { "would free" } else { "freed" };
    p.line(format!(
        "{verb} {} ({}, {} on disk){}",
        plural(r.files, "file"),
        human_bytes(r.bytes),
        human_bytes(r.allocated_bytes),
        if r.dry_run {
            "; dry run, nothing deleted"
        } else {
            ""
        }
    ))
}

/// `verify`.
pub fn verify(p: &mut Printer, r: &VerifyReport) -> Rendered {
    for x in &r.problems {
        let digest = x
            .digest
            .map(|d| d.to_string())
            .filter(|d| !x.detail.contains(d.as_str()))
            .map(|d| format!(" [{d}]"))
            .unwrap_or_default();
        p.line(format!(
            "problem: {}: {}: {}{digest}",
            x.kind.as_str(),
            x.path,
            x.detail
        ))?;
    }
    for d in &r.debris {
        let lost_manifest = d
            .strip_prefix("snapshots/")
            .is_some_and(|name| !name.contains('/'));
        p.line(if lost_manifest {
            format!(
                "debris: {d} (no row, no manifest that is JSON; `msb-registry gc` removes it; if it is a snapshot whose manifest was lost, import, add or pull a good copy under its name instead: that moves it to quarantine/)"
            )
        } else {
            format!("debris: {d} (no row; `msb-registry gc` removes it)")
        })?;
    }
    if r.microsandbox.shared {
        p.line(home_line(&r.microsandbox))?;
    }
    for q in &r.quarantined {
        p.line(format!(
            "quarantined: {} ({}{} on disk): a damaged copy a repair moved aside; `msb-registry quarantine rm {}` removes it, gc does once it is older than the grace period",
            q.path,
            q.name
                .as_deref()
                .map(|n| format!("from snapshot {n}, "))
                .unwrap_or_default(),
            human_bytes(q.allocated_bytes),
            q.path
        ))?;
    }
    for i in &r.unfinished_imports {
        let state = if i.live { "running" } else { "dead" };
        p.line(format!("import {}: {} ({state})", i.id, i.state.as_str()))?;
    }
    p.line(format!(
        "{}: checked {}, {}{}",
        if r.ok { "ok" } else { "FAILED" },
        plural(r.checked_files as usize, "file"),
        human_bytes(r.checked_bytes),
        if r.content { ", content re-hashed" } else { "" }
    ))?;
    if !r.ok {
        p.line(plural(r.problems.len(), "problem"))?;
    }
    Ok(())
}

/// `sign`: the signature itself on stdout, so `> FILE` keeps it for ssh-keygen.
pub fn sign(p: &mut Printer, r: &SignReport) -> Rendered {
    r.signature.lines().try_for_each(|l| p.line(l.to_string()))
}

/// `verify --signatures`.
pub fn signatures(p: &mut Printer, r: &SignaturesReport) -> Rendered {
    for s in &r.signatures {
        let who = s
            .trusted
            .as_deref()
            .or(s.principal.as_deref())
            .unwrap_or("-");
        match &s.problem {
            None => p.line(format!(
                "ok: {} ({}) signed by {who} ({})",
                s.name, s.snapshot, s.fingerprint
            ))?,
            Some(why) => p.line(format!(
                "problem: signature: {} ({}) by {}: {why}",
                s.name, s.snapshot, s.fingerprint
            ))?,
        }
    }
    for c in &r.chain_problems {
        p.line(format!("problem: chain: {c}"))?;
    }
    p.line(format!(
        "{}: checked {}, {}",
        if r.ok { "ok" } else { "FAILED" },
        plural(r.signatures.len(), "signature"),
        plural(r.links_checked, "chain link")
    ))
}

/// `quarantine list`.
pub fn quarantine(p: &mut Printer, entries: &[QuarantineEntry]) -> Rendered {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|q| {
            vec![
                q.path.clone(),
                q.name.clone().unwrap_or_else(|| "-".into()),
                q.quarantined_at.to_string(),
                human_bytes(q.allocated_bytes),
            ]
        })
        .collect();
    p.table(&["ENTRY", "SNAPSHOT", "SINCE", "ON DISK"], &rows)
}

/// `quarantine rm`.
pub fn quarantine_removed(p: &mut Printer, r: &QuarantineRemoval) -> Rendered {
    for q in &r.removed {
        p.line(format!("removed {}", q.path))?;
    }
    let n = r.removed.len();
    p.line(format!(
        "removed {n} quarantine {} ({} on disk)",
        if n == 1 { "entry" } else { "entries" },
        human_bytes(r.removed.iter().map(|q| q.allocated_bytes).sum())
    ))
}

/// One line saying why gc kept `k` and what to do about it.
fn kept_line(k: &Kept) -> String {
    match k.reason {
        KeptReason::Unindexed if k.path.starts_with("cache/") => format!(
            "kept {}: a pinned image needs it but the index has no row; run `msb-registry reindex` to index it",
            k.path
        ),
        KeptReason::Unindexed => format!(
            "kept {}: holds a valid manifest{} but the index has no row; run `msb-registry reindex` to index it; if reindex leaves it unindexed it is damaged: import, add or pull a good copy of it under this name, which moves it to quarantine/",
            k.path,
            k.digest.map(|d| format!(" ({d})")).unwrap_or_default()
        ),
        KeptReason::Young => format!(
            "kept {}: changed within the grace period (--grace); a later gc removes it",
            k.path
        ),
        _ => match &k.why {
            Some(why) => format!("kept {}: {} ({})", k.path, k.detail, escape(why)),
            None => format!("kept {}: {}", k.path, k.detail),
        },
    }
}

/// One line saying what a shared home's db/msb.db told gc and verify.
fn home_line(home: &HomeReport) -> String {
    match (&home.detail, home.overridden) {
        (None, _) => format!(
            "shared microsandbox home: db/msb.db read, {} in use by microsandbox kept",
            plural(home.in_use, "cache artifact")
        ),
        (Some(why), false) => format!(
            "shared microsandbox home: every cache artifact kept: {why} (gc --unsafe-ignore-unreadable-msb-db overrides)"
        ),
        (Some(why), true) => format!(
            "shared microsandbox home: {why}; OVERRIDDEN, the cache was judged as if microsandbox used nothing"
        ),
    }
}

/// `du`: a table and a totals line.
pub fn du(p: &mut Printer, r: &DuReport) -> Rendered {
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

/// `demo`, run in `dir`.
pub fn demo(p: &mut Printer, r: &DemoReport, dir: &Path) -> Rendered {
    let mut out = vec![
        format!("demo in {}", dir.display()),
        format!(
            "1. built a chain of {} (uppers {} logical, {} of data) and an image cache, added to {} in {:.2} s",
            plural(r.snapshots.len(), "snapshot"),
            human_bytes(r.logical_bytes),
            human_bytes(r.data_bytes),
            r.source_root.display(),
            r.build_seconds
        ),
        format!(
            "2. exported py-app with parents and image: {} ({}, {}) in {:.2} s",
            r.archive.display(),
            human_bytes(r.archive_bytes),
            plural(r.cache_files, "cache file"),
            r.export_seconds
        ),
        format!(
            "3. imported it into {} in {:.2} s; lineage of py-app there:",
            r.imported_root.display(),
            r.import_seconds
        ),
    ];
    for line in aligned(&lineage_cells(&r.lineage, false)) {
        out.push(format!("     {line}"));
    }
    out.push(format!(
        "4. verify --content: {} ({}) re-hashed, no problems",
        plural(r.verified_files as usize, "file"),
        human_bytes(r.verified_bytes)
    ));
    out.push(format!(
        "explore: msb-registry --root {} list",
        r.imported_root.display()
    ));
    out.into_iter().try_for_each(|l| p.line(l))
}

/// Lineage rows as table cells: depth, name (indented by depth in a
/// descendant tree), digest.
fn lineage_cells(rows: &[LineageEntry], descendants: bool) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| {
            let indent = if descendants {
                "  ".repeat(r.depth as usize)
            } else {
                String::new()
            };
            let name = r.name.as_deref().unwrap_or("(missing from this registry)");
            vec![
                r.depth.to_string(),
                format!("{indent}{name}"),
                r.digest.to_string(),
            ]
        })
        .collect()
}
