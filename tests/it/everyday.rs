//! Everyday use through the binary: the CLI as an installed tool (version,
//! completions, man page, help, -q), rename, names that cannot shadow
//! digests, actionable errors, archives that are not self-contained, and
//! terminals where a stream belongs. The commands of README.md and docs/
//! are run by `docs.rs`.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::{Reg, Run, bin, chain_in_registry};

fn names(reg: &Reg) -> Vec<String> {
    let mut names: Vec<String> = reg
        .json::<Vec<Value>>(&["list"])
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn dirs(reg: &Reg) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(reg.root().join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    dirs
}

// ------------------------------------------------------------ the CLI as a tool

fn run_bin(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("MSB_REGISTRY_ROOT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Run::from(cmd.output().unwrap())
}

/// Built from this checkout, `--version` names the commit it was built from.
#[test]
fn version_names_the_git_commit() {
    let out = run_bin(&["--version"], &[]).ok();
    let line = out.stdout.trim();
    let expected = format!("msb-registry {}", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected), "{line}");
    let git = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    if let Ok(git) = git
        && git.status.success()
    {
        let head = String::from_utf8(git.stdout).unwrap();
        let commit = line
            .strip_prefix(&expected)
            .unwrap()
            .trim()
            .trim_start_matches('(')
            .trim_end_matches(')');
        assert_eq!(commit.len(), 12, "{line}");
        // A commit made since the build would differ; the stamp is a prefix of some commit.
        let known = Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(known.success(), "{commit} is no commit (HEAD {head})");
    }
}

#[test]
fn completions_and_man_page_are_generated() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef msb-registry"),
        ("fish", "complete -c msb-registry"),
    ] {
        let out = run_bin(&["completions", shell], &[]).ok();
        assert!(out.stdout.contains(marker), "{shell}: {}", out.stdout);
        assert!(out.stdout.contains("rename"), "{shell} lacks rename");
    }
    run_bin(&["completions", "tcsh"], &[]).fails(2, "invalid value 'tcsh'");
    let man = run_bin(&["man"], &[]).ok();
    assert!(man.stdout.starts_with(".ie"), "{}", &man.stdout[..80]);
    assert!(man.stdout.contains(".TH msb-registry 1"), "no .TH line");
    assert!(man.stdout.contains("rename"));
    // When groff is around, the page renders without complaint.
    if let Ok(mut child) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(man.stdout.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
    }
}

#[test]
fn help_texts_say_what_a_person_needs() {
    let export = run_bin(&["export", "--help"], &[]).ok().stdout;
    assert!(
        export.contains("1 (fastest) to 19 (smallest) [default: 3]"),
        "{export}"
    );
    let demo = run_bin(&["demo", "--help"], &[]).ok().stdout;
    assert!(!demo.contains("MSB_REGISTRY_ROOT"), "{demo}");
    assert!(demo.contains("must not be a registry"), "{demo}");
    let top = run_bin(&["--help"], &[]).ok().stdout;
    assert!(top.contains("MSB_REGISTRY_ROOT"), "{top}");
    // -v did nothing and is gone.
    run_bin(&["-v", "list"], &[]).fails(2, "unexpected argument '-v'");
}

/// `MSB_REGISTRY_ROOT=` is unset: the XDG default is used, not a
/// registry in the current directory nor a usage error.
#[test]
fn an_empty_registry_root_variable_means_unset() {
    let scratch = Reg::new();
    let xdg = scratch.path("xdg");
    let cwd = scratch.path("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let out = Command::new(bin())
        .args(["gc", "--json"])
        .current_dir(&cwd)
        .env("MSB_REGISTRY_ROOT", "")
        .env("XDG_DATA_HOME", &xdg)
        .output()
        .unwrap();
    Run::from(out).ok();
    assert!(xdg.join("msb-registry/registry.db").exists());
    assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0);
}

/// `-q` leaves out the summary of a command that acts, keeps data and
/// JSON, and never hides an error.
#[test]
fn quiet_silences_summaries_not_data_or_errors() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let archive = reg.path("app.tar.zst");
    let a = archive.to_str().unwrap();
    let out = reg
        .run(&["export", "app", "--with-parents", "-o", a, "-q"])
        .ok();
    assert_eq!(out.stdout, "");
    assert_eq!(reg.run(&["rename", "app", "web", "-q"]).ok().stdout, "");
    assert_eq!(reg.run(&["import", a, "-q"]).ok().stdout, "");
    assert_eq!(reg.run(&["verify", "-q"]).ok().stdout, "");
    assert!(reg.run(&["list", "-q"]).ok().stdout.contains("web"));
    let json: Value = reg
        .run(&["rename", "web", "app", "-q", "--json"])
        .ok()
        .json();
    assert_eq!(json["name"], "app");
    reg.run(&["rm", "nothing-here", "-q"])
        .fails(3, "snapshot not found: nothing-here");
    reg.run(&["verify", "--content"]).ok();
}

/// `demo --root DIR` is a work directory: a registry there is refused
/// before anything is written into it.
#[test]
fn demo_refuses_a_registry_as_its_work_directory() {
    let reg = Reg::new();
    reg.run(&["gc"]).ok();
    let before = reg.tree();
    let out = Command::new(bin())
        .arg("demo")
        .arg("--root")
        .arg(reg.root())
        .output()
        .unwrap();
    Run::from(out).fails(2, "that directory is a registry");
    assert_eq!(reg.tree(), before);
    assert!(!reg.root().join("source-registry").exists());
}

// ------------------------------------------------------------ names

#[test]
fn rename_moves_row_and_directory_and_refuses_a_taken_name() {
    let reg = Reg::new();
    let (chain, _) = chain_in_registry(&reg);
    let r: Value = reg.json(&["rename", "app", "web"]);
    assert_eq!(r["old_name"], "app");
    assert_eq!(r["name"], "web");
    assert_eq!(r["digest"], chain[2].to_string());
    assert_eq!(names(&reg), ["base", "deps", "web"]);
    assert_eq!(dirs(&reg), ["base", "deps", "web"]);
    let shown: Value = reg.json(&["show", "web"]);
    assert_eq!(shown["digest"], chain[2].to_string());
    reg.run(&["show", "app"])
        .fails(3, "snapshot not found: app");

    // A taken name: exit 4, nothing changes.
    let before = reg.tree();
    reg.run(&["rename", "web", "deps"])
        .fails(4, "the name is taken by snapshot");
    // A directory without a row is in the way too.
    std::fs::create_dir(reg.root().join("snapshots/stray")).unwrap();
    reg.run(&["rename", "web", "stray"])
        .fails(4, "that is not a snapshot (debris)");
    std::fs::remove_dir(reg.root().join("snapshots/stray")).unwrap();
    assert_eq!(reg.tree(), before);
    // Its own name is a no-op; an unknown reference is exit 3.
    reg.run(&["rename", "web", "web"]).ok();
    reg.run(&["rename", "nope", "x"]).fails(3, "not found");
    reg.run(&["rename", &chain[2].to_string()[..19], "app"])
        .ok();
    assert_eq!(names(&reg), ["app", "base", "deps"]);
    assert_eq!(dirs(&reg), ["app", "base", "deps"]);
    reg.run(&["verify", "--content"]).ok();
}

/// Names of 8 or more hex digits would shadow digest prefixes: refused on
/// add, import --name and rename; shorter or mixed ones are fine.
#[test]
fn names_made_of_hex_digits_are_refused() {
    let reg = Reg::new();
    let (chain, _) = chain_in_registry(&reg);
    let archive = reg.path("app.tar.zst");
    let a = archive.to_str().unwrap();
    reg.run(&["export", "app", "--with-parents", "-o", a]).ok();
    let before = reg.tree();
    let prefix = &chain[0].hex()[..8];
    reg.run(&["rename", "app", prefix])
        .fails(2, "8 or more hex digits");
    reg.run(&["rename", "app", "DEADBEEF0"])
        .fails(2, "8 or more hex digits");
    let other = Reg::new();
    other
        .run(&["import", a, "--name", "0123456789"])
        .fails(2, "8 or more hex digits");
    assert_eq!(reg.tree(), before);
    // add: an explicit name, and a directory whose own name is hex.
    let dir = reg.path("abcdef0123");
    let copied = Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(reg.root().join("snapshots/base"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(copied.success());
    let d = dir.to_str().unwrap();
    other.run(&["add", d]).fails(2, "8 or more hex digits");
    other
        .run(&["add", d, "--name", "deadbeef"])
        .fails(2, "8 or more hex digits");
    assert!(
        !other.root().exists(),
        "the failing commands created a registry"
    );
    other.run(&["add", d, "--name", "abc1234"]).ok();
    reg.run(&["rename", "app", "cafe-babe-01"]).ok();
    reg.run(&["verify", "--content"]).ok();
    other.run(&["verify", "--content"]).ok();
}

/// `import --name N` of an archive whose head is already here under
/// another name renames it to N; a taken N is a conflict and nothing changes.
#[test]
fn import_name_renames_a_head_already_present() {
    let reg = Reg::new();
    let (chain, _) = chain_in_registry(&reg);
    let archive = reg.path("app.tar.zst");
    let a = archive.to_str().unwrap();
    reg.run(&["export", "app", "--with-parents", "--with-image", "-o", a])
        .ok();
    let r: Value = reg.json(&["import", a, "--name", "web"]);
    assert_eq!(r["head"], chain[2].to_string());
    assert_eq!(r["name"], "web");
    assert_eq!(r["imported"], Value::Array(vec![]));
    assert_eq!(names(&reg), ["base", "deps", "web"]);
    assert_eq!(dirs(&reg), ["base", "deps", "web"]);

    let before = reg.tree();
    reg.run(&["import", a, "--name", "deps"])
        .fails(4, "already here under another name, and the name is taken");
    assert_eq!(reg.tree(), before);
    assert_eq!(names(&reg), ["base", "deps", "web"]);
    // Without --name a present head keeps its name.
    let r: Value = reg.json(&["import", a]);
    assert_eq!(r["name"], "web");
    reg.run(&["verify", "--content"]).ok();
}

// ------------------------------------------------------------ errors a person can act on

/// Two snapshots whose digests share their first 8 hex digits (found by
/// trying labels), added to `reg` as `twin-a` and `twin-b`; returns the prefix.
fn add_twins(reg: &Reg) -> String {
    let manifest = |n: u32| plain_manifest(n, 4096);
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0u32..)
        .find_map(|n| {
            let prefix = manifest(n).digest().hex()[..8].to_string();
            seen.insert(prefix, n).map(|m| (m, n))
        })
        .unwrap();
    for (n, name) in [(a, "twin-a"), (b, "twin-b")] {
        add_hollow(reg, name, &manifest(n));
    }
    manifest(a).digest().hex()[..8].to_string()
}

/// A root snapshot's manifest with label `n`, a raw upper of `size` bytes
/// and no integrity recorded.
fn plain_manifest(n: u32, size: u64) -> msb_registry::model::manifest::Manifest {
    use msb_registry::model::manifest::{Format, ImagePin, Manifest, Upper};
    Manifest {
        schema: 1,
        format: Format::Raw,
        fstype: "ext4".into(),
        image: ImagePin {
            reference: "python:3.12".into(),
            manifest_digest: format!("sha256:{}", "1".repeat(64)).parse().unwrap(),
        },
        parent: None,
        created_at: "2026-10-01T09:00:00Z".into(),
        labels: [("n".to_string(), n.to_string())].into(),
        upper: Upper {
            file: "upper.ext4".into(),
            size_bytes: size,
            integrity: None,
        },
        source_sandbox: None,
    }
}

/// Add a snapshot of `manifest` whose upper is one hole, named `name`.
fn add_hollow(reg: &Reg, name: &str, manifest: &msb_registry::model::manifest::Manifest) {
    let dir = reg.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join("upper.ext4"))
        .unwrap()
        .set_len(manifest.upper.size_bytes)
        .unwrap();
    std::fs::write(dir.join("manifest.json"), manifest.canonical_bytes()).unwrap();
    reg.run(&["add", dir.to_str().unwrap()]).ok();
}

#[test]
fn an_ambiguous_prefix_lists_names_with_digests() {
    let reg = Reg::new();
    let prefix = add_twins(&reg);
    let err = reg.run(&["show", &prefix]).fails(2, "is ambiguous");
    assert!(err.stderr.contains("twin-a (sha256:"), "{}", err.stderr);
    assert!(err.stderr.contains("twin-b (sha256:"), "{}", err.stderr);
    reg.run(&["verify", "--content"]).ok();
}

/// `rm` refuses a snapshot with children naming them; several references
/// are checked together before any is removed; a chain goes in one call.
#[test]
fn rm_names_children_and_takes_several_references_all_or_nothing() {
    let reg = Reg::new();
    let (chain, _) = chain_in_registry(&reg);
    let before = reg.tree();
    reg.run(&["rm", "deps"]).fails(
        4,
        "has 1 child snapshot(s): app; remove them with it (rm deps app)",
    );
    // One bad reference, or one refused snapshot, removes nothing.
    reg.run(&["rm", "app", "nope"])
        .fails(3, "snapshot not found: nope");
    reg.run(&["rm", "app", "base"]).fails(4, "snapshot base");
    assert_eq!(reg.tree(), before);
    // The whole chain, in any order, a reference given twice counting once.
    let r: Vec<Value> = reg.json(&["rm", "base", "app", "deps", &chain[2].to_string()]);
    let mut removed: Vec<&str> = r.iter().map(|r| r["name"].as_str().unwrap()).collect();
    removed.sort();
    assert_eq!(removed, ["app", "base", "deps"]);
    assert!(r.iter().all(|r| r["orphaned_children"] == 0));
    assert!(names(&reg).is_empty());
    assert!(dirs(&reg).is_empty());
    reg.run(&["verify", "--content"]).ok();
}

// ------------------------------------------------------------ archives that are not self-contained

#[test]
fn a_head_alone_export_warns_and_its_import_needs_the_base() {
    let reg = Reg::new();
    let (chain, _) = chain_in_registry(&reg);
    let alone = reg.path("alone.tar.zst");
    let out = reg
        .run(&["export", "app", "-o", alone.to_str().unwrap()])
        .ok();
    assert!(
        out.stderr
            .starts_with("warning: the archive is not self-contained"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&chain[1].to_string()));
    let json: Value = reg
        .run(&["export", "app", "-o", alone.to_str().unwrap(), "--json"])
        .ok()
        .json();
    assert_eq!(json["missing_parent"], chain[1].to_string());
    // Self-contained and --base exports say nothing.
    let full = reg.path("full.tar.zst");
    let out = reg
        .run(&[
            "export",
            "app",
            "--with-parents",
            "-o",
            full.to_str().unwrap(),
            "--json",
        ])
        .ok();
    assert_eq!(out.stderr, "");
    assert_eq!(out.json::<Value>()["missing_parent"], Value::Null);
    let rest = reg.path("rest.tar.zst");
    let out = reg
        .run(&[
            "export",
            "app",
            "--base",
            "deps",
            "-o",
            rest.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(out.stderr, "");

    // Where the base is absent: exit 3 naming it, nothing lands; then --allow-shallow.
    let dst = Reg::new();
    dst.run(&["gc"]).ok();
    let empty = dst.tree();
    for archive in [&alone, &rest] {
        dst.run(&["import", archive.to_str().unwrap()])
            .fails(3, &format!("base not found: {}", chain[1]));
        assert_eq!(dst.tree(), empty);
    }
    dst.run(&[
        "import",
        rest.to_str().unwrap(),
        "--allow-shallow",
        "--name",
        "app",
    ])
    .ok();
    assert_eq!(dst.json::<Vec<Value>>(&["list"])[0]["shallow"], true);
    dst.run(&["verify", "--content"]).ok();
    // Where the base is present the same archive imports as it is.
    let with_base = Reg::new();
    with_base
        .run(&["import", full.to_str().unwrap(), "--name", "app"])
        .ok();
    with_base.run(&["rm", "app"]).ok();
    with_base.run(&["import", rest.to_str().unwrap()]).ok();
    with_base.run(&["verify", "--content"]).ok();
}

// ------------------------------------------------------------ terminals

/// Run `args` on `reg` under `script`, so stdin and stdout are a terminal;
/// returns the exit code and what the terminal showed. None without `script`.
fn on_a_terminal(reg: &Reg, args: &[&str]) -> Option<(i32, String)> {
    let line = std::iter::once(bin().to_string())
        .chain(["--root".into(), reg.root().to_str().unwrap().into()])
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("MSB_REGISTRY_ROOT")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => Some((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )),
        Err(_) => {
            eprintln!("skipping: util-linux `script` is not installed");
            None
        }
    }
}

#[test]
fn archives_are_never_written_to_or_read_from_a_terminal() {
    // Refused before anything is opened: no registry appears.
    let fresh = Reg::new();
    if let Some((code, _)) = on_a_terminal(&fresh, &["import", "-"]) {
        assert_eq!(code, 2);
        assert!(
            !fresh.root().exists(),
            "import - on a terminal created a registry"
        );
    }
    let reg = Reg::new();
    chain_in_registry(&reg);
    let before = reg.tree();
    let Some((code, shown)) = on_a_terminal(&reg, &["export", "app", "-o", "-"]) else {
        return;
    };
    assert_eq!(code, 2, "{shown}");
    assert!(shown.contains("standard output is a terminal"), "{shown}");
    assert!(!shown.contains("\u{fffd}"), "binary reached the terminal");
    let (code, shown) = on_a_terminal(&reg, &["import", "-"]).unwrap();
    assert_eq!(code, 2, "{shown}");
    assert!(shown.contains("standard input is a terminal"), "{shown}");
    assert_eq!(reg.tree(), before);
    // The same commands in a pipe still work: export -o - | import -.
    let dst = Reg::new();
    let mut export = Command::new(bin())
        .args(["--root", reg.root().to_str().unwrap()])
        .args(["export", "app", "--with-parents", "-o", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let import = Command::new(bin())
        .args(["--root", dst.root().to_str().unwrap(), "import", "-"])
        .stdin(export.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(export.wait().unwrap().success());
    Run::from(import).ok();
    reg.run(&["verify", "--content"]).ok();
    dst.run(&["verify", "--content"]).ok();
}

// ------------------------------------------------------------ progress

/// Every report a progress bar would get.
#[derive(Default)]
struct Recorder {
    events: std::sync::Mutex<Vec<(String, u64)>>,
}

impl msb_registry::Progress for Recorder {
    fn start(&self, phase: &str, total: Option<u64>) {
        // Export and verify know their total; import reads it as it goes (0 here).
        let total = total.unwrap_or(0);
        self.events
            .lock()
            .unwrap()
            .push((format!("start {phase}"), total));
    }
    fn advance(&self, bytes: u64) {
        self.events.lock().unwrap().push(("advance".into(), bytes));
    }
    fn finish(&self) {
        self.events.lock().unwrap().push(("finish".into(), 0));
    }
}

impl Recorder {
    /// The total announced, and the steps reported after it.
    fn phase(&self) -> (u64, Vec<u64>) {
        let events = self.events.lock().unwrap();
        let total = events[0].1;
        assert!(events[0].0.starts_with("start"), "{:?}", events[0]);
        assert_eq!(events.last().unwrap().0, "finish");
        let steps = events[1..events.len() - 1].iter().map(|e| e.1).collect();
        (total, steps)
    }
}

/// Export and `verify --content` announce the bytes they will process and
/// then report them in steps of at most 8 MiB (holes included for verify,
/// which hashes them), adding up exactly to the total: a bar is steady
/// from its first frame and ends full.
#[test]
fn export_verify_and_import_progress_count_the_bytes_processed_in_small_steps() {
    let reg = Reg::new();
    let (chain, _) = chain_in_registry(&reg);
    // A 64 MiB hole: hashed by verify, reported as it goes.
    add_hollow(&reg, "hollow", &plain_manifest(0, 64 << 20));
    let registry = msb_registry::Registry::open(reg.root()).unwrap();

    let rec = Recorder::default();
    let report = registry.verify(None, true, &rec).unwrap();
    assert!(report.ok);
    let (total, steps) = rec.phase();
    assert_eq!(steps.iter().sum::<u64>(), total);
    assert!(total >= 64 << 20, "uppers, holes included: {total}");
    assert!(steps.iter().all(|&s| s > 0 && s <= 8 << 20), "{steps:?}");

    let rec = Recorder::default();
    let archive = reg.path("app.tar");
    let opts = msb_registry::ExportOptions {
        selection: msb_registry::Selection {
            with_parents: true,
            base: None,
            with_image: false,
        },
        compression: msb_registry::Compression::None,
        dense: true,
    };
    let target = msb_registry::ExportTarget::File(archive);
    let exported = registry
        .export(&chain[2].to_string(), &opts, &target, &rec)
        .unwrap();
    let (total, steps) = rec.phase();
    assert_eq!(steps.iter().sum::<u64>(), total);
    assert!(total >= 3 * (8 << 20), "dense: every logical byte: {total}");
    assert!(exported.bytes >= total);
    assert!(steps.iter().all(|&s| s > 0 && s <= 8 << 20), "{steps:?}");
    drop(registry);
    reg.run(&["verify", "--content"]).ok();

    // Import counts the logical bytes it stages (what its hashing time is
    // proportional to), not compressed bytes, with no made-up total.
    let dst = Reg::new();
    dst.run(&["gc"]).ok();
    let mut registry = msb_registry::Registry::open(dst.root()).unwrap();
    let rec = Recorder::default();
    let source = msb_registry::ImportSource::Path(reg.path("app.tar"));
    registry
        .import(&source, &msb_registry::ImportOptions::default(), &rec)
        .unwrap();
    let (total, steps) = rec.phase();
    assert_eq!(total, 0, "import announces no total");
    let logical: u64 = steps.iter().sum();
    assert!(logical >= 3 * (8 << 20), "every logical byte: {logical}");
    assert!(steps.iter().all(|&s| s > 0 && s <= 8 << 20), "{steps:?}");
    drop(registry);
    dst.run(&["verify", "--content"]).ok();
}

/// On a terminal the bar's first frame is already the phase's own bar: no
/// default-style frame (`█… 0/0`) flickers by before it.
#[test]
fn the_first_progress_frame_on_a_terminal_is_the_phase_bar() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let Some((code, shown)) = on_a_terminal(&reg, &["verify", "--content"]) else {
        return;
    };
    assert_eq!(code, 0, "{shown}");
    assert!(
        !shown.contains('█'),
        "a default-style frame was drawn: {shown:?}"
    );
    let first = shown.trim_start();
    assert!(first.starts_with("verify ["), "first frame: {first:?}");
    assert!(shown.contains("ok: checked"), "{shown:?}");
    reg.run(&["verify", "--content"]).ok();
}
