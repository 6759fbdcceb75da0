//! Dispatch: run one parsed command against the library and render its report.

use std::path::PathBuf;

use super::{BarProgress, Cli, Command, Printer, aligned, human_bytes, plural};
use crate::add::AddOptions;
use crate::archive::export::DEFAULT_LEVEL;
use crate::archive::import::{ImportOptions, ImportSource};
use crate::archive::{Compression, ExportOptions, ExportTarget, Selection};
use crate::error::{Error, Result};
use crate::gc::GcReport;
use crate::layout::Layout;
use crate::query::LineageEntry;
use crate::registry::Registry;
use crate::verify::VerifyReport;

/// Outcome of rendering: an I/O error on stdout (a closed pipe ends quietly).
type Rendered = std::io::Result<()>;

fn root_of(cli: &Cli) -> Result<PathBuf> {
    cli.global
        .root
        .clone()
        .or_else(Layout::default_root)
        .ok_or_else(|| {
            Error::Usage("no registry root: pass --root or set MSB_REGISTRY_ROOT".into())
        })
}

/// Run the command; `Ok(Err(io))` is a failed write to stdout.
pub fn run(cli: Cli) -> Result<Rendered> {
    let mut p = Printer::new(cli.global.json);
    let progress = BarProgress::new(cli.global.quiet);
    if let Command::Demo = cli.command {
        let explicit = cli.global.root.filter(|_| !cli.root_from_env);
        let rendered = demo(explicit, &mut p, &progress)?;
        return Ok(rendered.and_then(|()| p.flush()));
    }
    let root = root_of(&cli)?;
    let rendered = match cli.command {
        Command::Sql { query } => {
            let result = crate::query::sql(&root, &query)?;
            if p.json {
                let objects: Vec<serde_json::Map<String, serde_json::Value>> = result
                    .rows
                    .iter()
                    .map(|row| {
                        result
                            .columns
                            .iter()
                            .cloned()
                            .zip(row.iter().cloned())
                            .collect()
                    })
                    .collect();
                p.json(&objects)
            } else {
                let header: Vec<&str> = result.columns.iter().map(|c| c.as_str()).collect();
                let rows: Vec<Vec<String>> = result
                    .rows
                    .iter()
                    .map(|r| {
                        r.iter()
                            .map(|v| match v {
                                serde_json::Value::String(s) => s.clone(),
                                serde_json::Value::Null => "NULL".into(),
                                other => other.to_string(),
                            })
                            .collect()
                    })
                    .collect();
                p.table(&header, &rows)
            }
        }
        command => {
            let mut registry = Registry::open(&root)?;
            dispatch(&mut registry, command, &mut p, &progress)?
        }
    };
    Ok(rendered.and_then(|()| p.flush()))
}

fn dispatch(
    registry: &mut Registry,
    command: Command,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    Ok(match command {
        Command::Add {
            dir,
            name,
            cache_dir,
        } => {
            let report = registry.add(&dir, &AddOptions { name, cache_dir }, progress)?;
            if p.json {
                p.json(&report)
            } else if report.already_present {
                p.line(format!(
                    "{} ({}) is already in the registry",
                    report.name, report.digest
                ))
            } else {
                p.line(format!(
                    "added {} ({}): {}, {}; cache: {} installed, {} already present",
                    report.name,
                    report.digest,
                    plural(report.files, "file"),
                    human_bytes(report.bytes),
                    report.cache_files_installed,
                    report.cache_files_skipped
                ))
            }
        }
        Command::List => {
            let entries = registry.list()?;
            if p.json {
                p.json(&entries)
            } else {
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
                            e.created_at.clone(),
                        ]
                    })
                    .collect();
                p.table(
                    &["NAME", "DIGEST", "PARENT", "IMAGE", "SIZE", "CREATED"],
                    &rows,
                )
            }
        }
        Command::Show { reference } => {
            let r = registry.show(&reference)?;
            if p.json {
                p.json(&r)
            } else {
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
                for (k, v) in &s.labels {
                    lines.push(format!("label:           {k}={v}"));
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
        }
        Command::Lineage {
            reference,
            descendants,
        } => {
            let rows = registry.lineage(&reference, descendants)?;
            if p.json {
                p.json(&rows)
            } else {
                p.table(
                    &["DEPTH", "NAME", "DIGEST"],
                    &lineage_cells(&rows, descendants),
                )
            }
        }
        Command::Rm { reference, force } => {
            let r = registry.remove(&reference, force)?;
            if p.json {
                p.json(&r)
            } else {
                p.line(format!("removed {} ({})", r.name, r.digest))
            }
        }
        Command::Reindex => {
            let r = registry.reindex(progress)?;
            if p.json {
                p.json(&r)
            } else {
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
        }
        Command::Du { references } => {
            let r = registry.du(&references)?;
            super::du::render(p, &r)
        }
        Command::Gc { dry_run } => {
            let r = registry.gc(dry_run, progress)?;
            if p.json { p.json(&r) } else { render_gc(p, &r) }
        }
        Command::Verify { reference, content } => {
            let r = registry.verify(reference.as_deref(), content, progress)?;
            let rendered = if p.json {
                p.json(&r)
            } else {
                render_verify(p, &r)
            };
            if !r.ok {
                // The report is the output; a failed write cannot make the run succeed.
                let _ = rendered.and_then(|()| p.flush());
                return Err(Error::VerifyFailed {
                    problems: r.problems.len(),
                });
            }
            rendered
        }
        Command::Export {
            reference,
            output,
            with_parents,
            with_image,
            plain_tar,
            dense,
            level,
            base,
        } => {
            let target = ExportTarget::from_arg(&output);
            if p.json && target == ExportTarget::Stdout {
                return Err(Error::Usage(
                    "--json needs -o FILE: with -o - stdout carries the archive".into(),
                ));
            }
            let opts = ExportOptions {
                selection: Selection {
                    with_parents,
                    base,
                    with_image,
                },
                compression: if plain_tar {
                    Compression::None
                } else {
                    Compression::Zstd(level.unwrap_or(DEFAULT_LEVEL))
                },
                dense,
            };
            let r = registry.export(&reference, &opts, &target, progress)?;
            if target == ExportTarget::Stdout {
                Ok(())
            } else if p.json {
                p.json(&r)
            } else {
                p.line(format!(
                    "exported {} (head {}) and {} to {}: {}",
                    plural(r.snapshots.len(), "snapshot"),
                    r.head,
                    plural(r.cache_files.len(), "cache file"),
                    r.archive,
                    human_bytes(r.bytes)
                ))
            }
        }
        Command::Import { archive, name } => {
            let r = registry.import(
                &ImportSource::from_arg(&archive),
                &ImportOptions { name },
                progress,
            )?;
            if p.json {
                p.json(&r)
            } else {
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
                out.into_iter().try_for_each(|l| p.line(l))
            }
        }
        Command::Sql { .. } => unreachable!("handled before the registry is opened"),
        Command::Demo => unreachable!("handled before the registry root is chosen"),
    })
}

fn render_gc(p: &mut Printer, r: &GcReport) -> Rendered {
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
    let verb = if r.dry_run { "would free" } else { "freed" };
    p.line(format!(
        "{verb} {} ({}){}",
        plural(r.files, "file"),
        human_bytes(r.bytes),
        if r.dry_run {
            "; dry run, nothing deleted"
        } else {
            ""
        }
    ))
}

fn render_verify(p: &mut Printer, r: &VerifyReport) -> Rendered {
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
        p.line(format!(
            "debris: {d} (no row; `msb-registry gc` removes it)"
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

/// Run the demo in `dir`, or in a new kept directory under the system temp dir.
fn demo(dir: Option<PathBuf>, p: &mut Printer, progress: &BarProgress) -> Result<Rendered> {
    let dir = match dir {
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("msb-registry-demo-")
            .tempdir()
            .map_err(|e| Error::io("create a demo directory", std::env::temp_dir(), e))?
            .keep(),
    };
    let r = crate::demo::run(&dir, progress)?;
    if p.json {
        return Ok(p.json(&r));
    }
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
    Ok(out.into_iter().try_for_each(|l| p.line(l)))
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
