//! Dispatch: run one parsed command against the library and hand its
//! report to the renderer ([`super::render`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;

use super::args::{
    AddArgs, Cli, Command, ExportArgs, ImportArgs, PullArgs, PushArgs, QuarantineAction, RemoteArgs,
};
use super::printer::Printer;
use super::progress::BarProgress;
use super::render::{self, Rendered, emit, summary};
use crate::model::error::{Error, Result};
use crate::ops::add::AddOptions;
use crate::ops::export::plan::Selection;
use crate::ops::export::{Compression, ExportOptions, ExportTarget};
use crate::ops::gc::GcOptions;
use crate::ops::import::{ImportOptions, ImportSource};
use crate::ops::pull::PullOptions;
use crate::ops::push::PushOptions;
use crate::ops::registry::{FreshRoot, Registry};
use crate::remote::deadline::Limits;
use crate::remote::retry::RetryPolicy;
use crate::remote::{ClientOptions, Credentials, Notices, RemoteRef};
use crate::store::layout::Layout;

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
    if let Some(n) = cli.global.threads {
        crate::process::threads::set_limit(n.into());
    }
    let mut p = Printer::new(cli.global.json, cli.global.quiet);
    let progress = BarProgress::new(cli.global.quiet);
    match cli.command {
        Command::Demo => {
            let explicit = cli.global.root.filter(|_| !cli.root_from_env);
            let rendered = demo(explicit, &mut p, &progress)?;
            return Ok(rendered.and_then(|()| p.flush()));
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "msb-registry", &mut out);
            return Ok(p.raw(&out).and_then(|()| p.flush()));
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .map_err(|e| Error::io("render the man page", "-", e))?;
            return Ok(p.raw(&out).and_then(|()| p.flush()));
        }
        _ => {}
    }
    refuse_terminals(&cli.command)?;
    crate::db::check_wait_limit()?;
    let root = root_of(&cli)?;
    let rendered = match cli.command {
        Command::Sql { query } => super::sql::run(&root, &query, &mut p)?,
        Command::Reindex => match reindex(&root, false, &mut p, &progress) {
            Err(e) if e.is_damaged_index() => {
                eprintln!(
                    "the index holds rows the registry cannot decode ({}); rebuilding it",
                    e.report_line()
                );
                reindex(&root, true, &mut p, &progress)?
            }
            other => other?,
        },
        command if command.only_reads() => {
            let mut registry = Registry::open_read(&root)?;
            dispatch(&mut registry, command, &mut p, &progress)?
        }
        command => {
            let fresh = FreshRoot::note(&root);
            // Push only reads snapshots: it works on a read-only root.
            let open = match command {
                Command::Push(_) => Registry::open_caching,
                _ => Registry::open,
            };
            let result = open(&root)
                .and_then(|mut registry| dispatch(&mut registry, command, &mut p, &progress));
            if result.is_err()
                && let Some(fresh) = fresh
            {
                fresh.undo();
            }
            result?
        }
    };
    Ok(rendered.and_then(|()| p.flush()))
}

/// `reindex`, in place or (`rebuild`) into a new index.
fn reindex(
    root: &std::path::Path,
    rebuild: bool,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    let (mut registry, rebuild) = Registry::open_for_reindex(root, rebuild)?;
    if let Some(aside) = &rebuild.moved_aside {
        eprintln!(
            "moved what was left of the index aside to {}; rebuilding it from the files",
            aside.display()
        );
    }
    let rendered = dispatch(&mut registry, Command::Reindex, p, progress)?;
    registry.install_rebuilt(rebuild)?;
    Ok(rendered)
}

/// An archive is never written to a terminal nor read from one (as zstd
/// and tar refuse): checked before the registry is opened.
fn refuse_terminals(command: &Command) -> Result<()> {
    match command {
        Command::Export(args)
            if args.output.as_os_str() == "-" && std::io::stdout().is_terminal() =>
        {
            Err(Error::Usage(
                "export -o -: standard output is a terminal; redirect it to a file or a pipe"
                    .into(),
            ))
        }
        Command::Import(args) if args.archive == "-" && std::io::stdin().is_terminal() => {
            Err(Error::Usage(
                "import -: standard input is a terminal; pipe an archive in or name a file".into(),
            ))
        }
        _ => Ok(()),
    }
}

fn dispatch(
    registry: &mut Registry,
    command: Command,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    Ok(match command {
        Command::Add(args) => add(registry, args, p, progress)?,
        Command::List => emit(p, &registry.list()?, |p, e| render::list(p, e)),
        Command::Show { reference } => emit(p, &registry.show(&reference)?, render::show),
        Command::Lineage {
            reference,
            descendants,
        } => {
            let rows = registry.lineage(&reference, descendants)?;
            emit(p, &rows, |p, rows| render::lineage(p, rows, descendants))
        }
        Command::Rm { references, force } => rm(registry, &references, force, p)?,
        Command::Rename {
            reference,
            new_name,
        } => rename(registry, &reference, &new_name, p)?,
        Command::Reindex => summary(p, &registry.reindex(progress)?, render::reindex),
        Command::Gc {
            dry_run,
            unsafe_ignore_unreadable_msb_db,
            grace,
        } => {
            let opts = GcOptions {
                dry_run,
                ignore_unreadable_msb_db: unsafe_ignore_unreadable_msb_db,
                grace,
            };
            gc(registry, &opts, p, progress)?
        }
        Command::Du { references } => du(registry, &references, p)?,
        Command::Quarantine {
            action: QuarantineAction::List,
        } => emit(p, &registry.quarantine_list()?, |p, q| {
            render::quarantine(p, q)
        }),
        Command::Quarantine {
            action: QuarantineAction::Rm { entries, all },
        } => summary(
            p,
            &registry.quarantine_remove(&entries, all)?,
            render::quarantine_removed,
        ),
        Command::Verify {
            reference,
            signatures: true,
            trust,
            ..
        } => verify_signatures(registry, reference.as_deref(), trust, p)?,
        Command::Verify {
            reference, content, ..
        } => verify(registry, reference.as_deref(), content, p, progress)?,
        Command::Sign {
            reference,
            key,
            principal,
        } => sign(registry, &reference, &key, principal.as_deref(), p)?,
        Command::Export(args) => {
            crate::process::interrupt::install();
            export(registry, args, p, progress)?
        }
        Command::Import(args) => import(registry, args, p, progress)?,
        Command::Push(args) => {
            crate::process::interrupt::install();
            push(registry, args, p, progress)?
        }
        Command::Pull(args) => {
            crate::process::interrupt::install();
            pull(registry, args, p, progress)?
        }
        Command::Sql { .. } => unreachable!("handled before the registry is opened"),
        Command::Demo | Command::Completions { .. } | Command::Man => {
            unreachable!("handled before the registry root is chosen")
        }
    })
}

/// `add`, interruptible, with the hint a shared microsandbox home needs.
fn add(
    registry: &mut Registry,
    args: AddArgs,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    crate::process::interrupt::install();
    let opts = AddOptions {
        name: args.name,
        cache_dir: args.cache_dir,
        signatures: args.signature,
        trust: args.trust.options(),
        repair: args.repair,
        allow_shallow: args.allow_shallow,
    };
    if let [dir] = args.dirs.as_slice() {
        let r = registry.add(dir, &opts, progress)?;
        report_repairs(&r.repaired);
        p.hint(r.microsandbox_hint.as_deref());
        return Ok(summary(p, &r, render::add));
    }
    let r = registry.add_many(&args.dirs, &opts, progress)?;
    report_repairs(&r.repaired);
    p.hint(r.microsandbox_hint.as_deref());
    Ok(summary(p, &r, render::add_many))
}

/// `sign`: the signature on stdout; a key that had already signed is said on stderr.
fn sign(
    registry: &mut Registry,
    reference: &str,
    key: &Path,
    principal: Option<&str>,
    p: &mut Printer,
) -> Result<Rendered> {
    let r = registry.sign(reference, key, principal)?;
    if !r.added {
        eprintln!(
            "{} ({}) was already signed by key {}; kept that signature",
            r.name, r.snapshot, r.fingerprint
        );
    }
    Ok(emit(p, &r, render::sign))
}

/// `rename`, with the hint a shared microsandbox home needs.
fn rename(
    registry: &mut Registry,
    reference: &str,
    new_name: &str,
    p: &mut Printer,
) -> Result<Rendered> {
    let r = registry.rename(reference, new_name)?;
    p.hint(r.microsandbox_hint.as_deref());
    Ok(summary(p, &r, render::rename))
}

/// `rm`: one REF keeps the single-object shape scripts already read.
fn rm(
    registry: &mut Registry,
    references: &[String],
    force: bool,
    p: &mut Printer,
) -> Result<Rendered> {
    let r = registry.remove_all(references, force)?;
    p.hint(r.first().and_then(|r| r.microsandbox_hint.as_deref()));
    Ok(match r.as_slice() {
        [one] => summary(p, one, render::remove),
        all => summary(p, &all, |p, r| {
            r.iter().try_for_each(|r| render::remove(p, r))
        }),
    })
}

/// `gc`, with a loud warning when microsandbox's index was overridden.
fn gc(
    registry: &mut Registry,
    opts: &GcOptions,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    let r = registry.gc(opts, progress)?;
    if let Some(home) = r.microsandbox.as_ref().filter(|h| h.overridden) {
        eprintln!(
            "warning: --unsafe-ignore-unreadable-msb-db: {}; the cache was swept as if microsandbox used no image",
            home.detail.as_deref().unwrap_or("db/msb.db is unusable")
        );
    }
    Ok(summary(p, &r, render::gc))
}

/// `du`, with a hint when some snapshots predate the chunk index.
fn du(registry: &Registry, references: &[String], p: &mut Printer) -> Result<Rendered> {
    let r = registry.du(references)?;
    if r.unindexed > 0 {
        p.hint(Some(&format!(
            "{} predate the chunk index; `msb-registry reindex` computes their chunk lists",
            super::printer::plural(r.unindexed as usize, "snapshot")
        )));
    }
    Ok(emit(p, &r, render::du))
}

/// `verify`: the report is printed even when it fails, then exit 5.
fn verify(
    registry: &Registry,
    reference: Option<&str>,
    content: bool,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    let r = registry.verify(reference, content, progress)?;
    if r.ok {
        return Ok(summary(p, &r, render::verify));
    }
    // The report is the output; a failed write cannot make the run succeed.
    let _ = emit(p, &r, render::verify).and_then(|()| p.flush());
    Err(Error::VerifyFailed {
        problems: r.problems.len(),
    })
}

/// `verify --signatures`: the report is printed even when it fails, then exit 5.
fn verify_signatures(
    registry: &Registry,
    reference: Option<&str>,
    trust: Option<PathBuf>,
    p: &mut Printer,
) -> Result<Rendered> {
    let trusts = match trust {
        Some(path) => vec![crate::ops::sign::read_trust(&path)?],
        None => Vec::new(),
    };
    let r = registry.verify_signatures(reference, &trusts)?;
    if r.ok {
        return Ok(summary(p, &r, render::signatures));
    }
    let _ = emit(p, &r, render::signatures).and_then(|()| p.flush());
    Err(Error::VerifyFailed {
        problems: r.signatures.iter().filter(|s| s.problem.is_some()).count()
            + r.chain_problems.len(),
    })
}

/// `import`, interruptible, with a warning per carried name that could not be used.
fn import(
    registry: &mut Registry,
    args: ImportArgs,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    crate::process::interrupt::install();
    let opts = ImportOptions {
        name: args.name,
        max_file_bytes: args.max_file_size,
        max_hole_bytes: args.max_hole_bytes,
        allow_shallow: args.allow_shallow,
        trust: args.trust.options(),
        repair: args.repair,
    };
    let r = registry.import(&ImportSource::from_arg(&args.archive), &opts, progress)?;
    report_repairs(&r.repaired);
    report_name_fallbacks(&r.name_fallbacks);
    p.hint(r.microsandbox_hint.as_deref());
    Ok(summary(p, &r, render::import))
}

/// Say on stderr which carried names were not used, and why.
fn report_name_fallbacks(fallbacks: &[crate::archive::names::NameFallback]) {
    for f in fallbacks {
        eprintln!(
            "warning: {} came named {:?}, but {}; it is named {}",
            f.digest, f.carried, f.reason, f.name
        );
    }
}

/// One line on stderr per damaged copy an install moved to the quarantine.
fn report_repairs(repaired: &[crate::ops::repair::Repaired]) {
    for r in repaired {
        eprintln!("{}", r.line());
    }
}

fn export(
    registry: &Registry,
    args: ExportArgs,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    let target = ExportTarget::from_arg(&args.output);
    if p.json && target == ExportTarget::Stdout {
        return Err(Error::Usage(
            "--json needs -o FILE: with -o - stdout carries the archive".into(),
        ));
    }
    let opts = ExportOptions {
        selection: Selection {
            with_parents: args.with_parents,
            base: args.base,
            with_image: args.with_image,
        },
        compression: if args.plain_tar {
            Compression::None
        } else {
            Compression::Zstd(args.level)
        },
        dense: args.dense,
    };
    let r = registry.export(&args.reference, &opts, &target, progress)?;
    if let Some(missing) = &r.missing_parent
        && opts.selection.base.is_none()
    {
        eprintln!(
            "warning: the archive is not self-contained: {} names parent {missing}, which is not in it; \
             it imports only where that parent is present (or with import --allow-shallow); \
             use --with-parents for a self-contained archive",
            r.snapshots
                .first()
                .map(|d| d.to_string())
                .unwrap_or_default()
        );
    }
    if target == ExportTarget::Stdout {
        return Ok(Ok(()));
    }
    Ok(summary(p, &r, render::export))
}

/// Run the demo in `dir`, or in a new kept directory under the system temp dir.
fn demo(dir: Option<PathBuf>, p: &mut Printer, progress: &BarProgress) -> Result<Rendered> {
    let dir = match dir {
        Some(dir) if Layout::new(dir.clone()).db().exists() => {
            return Err(Error::Usage(format!(
                "demo --root {}: that directory is a registry; demo needs a work directory of its own (it creates source-registry/ and registry/ in it)",
                dir.display()
            )));
        }
        Some(dir) => dir,
        None => tempfile::Builder::new()
            .prefix("msb-registry-demo-")
            .tempdir()
            .map_err(|e| Error::io("create a demo directory", std::env::temp_dir(), e))?
            .keep(),
    };
    let r = crate::ops::demo::run(&dir, progress)?;
    Ok(summary(p, &r, |p, r| render::demo(p, r, &dir)))
}

/// `push`.
fn push(
    registry: &mut Registry,
    args: PushArgs,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    let target = RemoteRef::parse(&args.target)?;
    let opts = PushOptions {
        with_parents: args.with_parents,
        with_image: args.with_image,
        jobs: usize::from(args.jobs),
        client: client_options(&target, args.remote, progress)?,
    };
    let r = registry.push(&args.reference, &target, &opts, progress)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    Ok(summary(p, &r, render::push))
}

/// `pull`.
fn pull(
    registry: &mut Registry,
    args: PullArgs,
    p: &mut Printer,
    progress: &BarProgress,
) -> Result<Rendered> {
    let source = RemoteRef::parse(&args.source)?;
    let opts = PullOptions {
        name: args.name,
        jobs: usize::from(args.jobs),
        max_file_bytes: args.max_file_size,
        repair: args.repair,
        client: client_options(&source, args.remote, progress)?,
        trust: args.trust.options(),
    };
    let r = registry.pull(&source, &opts, progress)?;
    report_repairs(&r.repaired);
    report_name_fallbacks(&r.name_fallbacks);
    p.hint(r.microsandbox_hint.as_deref());
    Ok(summary(p, &r, render::pull))
}

/// Transport and credentials: `--username` with the password on stdin,
/// else the docker config's for the registry, else none; the deadline and
/// retry settings; retries said on stderr, above the bar.
fn client_options(
    remote: &RemoteRef,
    args: RemoteArgs,
    progress: &BarProgress,
) -> Result<ClientOptions> {
    let credentials = match args.username {
        Some(username) => {
            use std::io::Read;
            if std::io::stdin().is_terminal() {
                return Err(Error::Usage(
                    "--password-stdin: standard input is a terminal; pipe the password in".into(),
                ));
            }
            let mut password = String::new();
            std::io::stdin()
                .take(64 * 1024)
                .read_to_string(&mut password)
                .map_err(|e| Error::io("read the password from", "standard input", e))?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            if password.is_empty() {
                return Err(Error::Usage(
                    "--password-stdin: standard input is empty".into(),
                ));
            }
            Credentials::Basic { username, password }
        }
        None => Credentials::from_docker_config(&remote.registry)?,
    };
    if args.insecure {
        eprintln!(
            "warning: --insecure: plain HTTP to {}: nothing is encrypted, and the registry is not authenticated{}",
            remote.registry,
            if credentials.is_anonymous() {
                ""
            } else {
                "; credentials cross the network in the clear"
            }
        );
    }
    Ok(ClientOptions {
        insecure: args.insecure,
        ca_cert: args.ca_cert,
        credentials,
        limits: Limits {
            timeout: args.timeout.map(Duration::from_secs),
            stall: Duration::from_secs(args.stall_timeout),
            min_rate: args.min_rate,
        },
        retry: RetryPolicy {
            retries: args.retries,
            ..RetryPolicy::default()
        },
        notices: Notices::new(progress.notice_printer()),
    })
}
