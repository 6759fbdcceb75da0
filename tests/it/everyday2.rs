//! Everyday use, second part, through the binary: snapshot names that
//! travel in archives.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::failclosed::files_of;
use crate::tarcraft::Tar;
use crate::util::{Reg, Run, SnapSpec, bin, chain_in_registry, make_image_cache, make_snapshot};

fn listed(reg: &Reg) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = reg
        .json::<Vec<Value>>(&["list"])
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn sh(script: &str) -> Run {
    Run::from(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    )
}

// ------------------------------------------------------------ names travel

#[test]
fn names_travel_through_a_pipe_and_gnu_tar_reads_the_archive_silently() {
    let src = Reg::new();
    let (digests, _) = chain_in_registry(&src);
    let dst = Reg::new();
    let b = bin();
    let pipe = format!(
        "{b} --root {} export app --with-parents --with-image -o - | {b} --root {} import - --json",
        src.root().display(),
        dst.root().display()
    );
    let r = sh(&pipe).ok();
    let report: Value = r.json();
    assert_eq!(report["name"], "app");
    assert_eq!(report["name_fallbacks"], Value::Array(vec![]));
    assert_eq!(r.stderr, "", "no warning when every name is free");
    let want: Vec<(String, String)> = {
        let mut v: Vec<_> = ["base", "deps", "app"]
            .iter()
            .zip(&digests)
            .map(|(n, d)| (n.to_string(), d.to_string()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(listed(&dst), want);
    dst.run(&["verify", "--content"]).ok();

    // --name still wins for the head; the parents keep their carried names.
    let other = Reg::new();
    let archive = src.export_chain("app", "chain.tar.zst", &[]);
    other
        .run(&["import", archive.to_str().unwrap(), "--name", "py-app"])
        .ok();
    let names: Vec<String> = listed(&other).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["base", "deps", "py-app"]);
    other.run(&["verify", "--content"]).ok();

    // GNU tar lists and extracts it without a word, and the carried names
    // leave no trace on disk.
    let out = src.path("x");
    std::fs::create_dir(&out).unwrap();
    let listing = sh(&format!(
        "zstd -dc {a} | tar tvf - && zstd -dc {a} | tar xf - -C {o}",
        a = archive.display(),
        o = out.display()
    ))
    .ok();
    assert_eq!(listing.stderr, "", "GNU tar warned");
    assert_eq!(listing.stdout.lines().count(), 6, "{}", listing.stdout);
    assert!(!listing.stdout.contains("PaxHeaders"));
    let mut top: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let mut want: Vec<String> = digests
        .iter()
        .map(|d| format!("sha256-{}", &d.to_string()["sha256:".len()..][..16]))
        .collect();
    want.sort();
    assert_eq!(top, want);
}

#[test]
fn dense_archives_carry_no_names() {
    let src = Reg::new();
    chain_in_registry(&src);
    let dense = src.export_chain("app", "dense.tar", &["--dense", "--plain-tar"]);
    let bytes = std::fs::read(&dense).unwrap();
    let types: Vec<u8> = headers(&bytes).iter().map(|h| h[156]).collect();
    assert!(
        types.iter().all(|&t| t == b'0'),
        "dense archives hold regular members only: {types:?}"
    );
    assert!(
        !bytes
            .windows(b"msb-registry.name=".len())
            .any(|w| w == b"msb-registry.name="),
        "a dense archive carries no names"
    );
    let dst = Reg::new();
    dst.run(&["import", dense.to_str().unwrap()]).ok();
    let names: Vec<String> = listed(&dst).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|n| n.starts_with("sha256-")), "{names:?}");
    dst.run(&["verify", "--content"]).ok();
}

/// The headers of a plain tar of regular members and pax headers.
fn headers(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() && bytes[at..at + 512].iter().any(|&b| b != 0) {
        let h = &bytes[at..at + 512];
        let size = u64::from_str_radix(
            std::str::from_utf8(&h[124..135])
                .unwrap()
                .trim_matches('\0'),
            8,
        )
        .unwrap();
        out.push(h);
        at += 512 + (size as usize).div_ceil(512) * 512;
    }
    out
}

#[test]
fn a_carried_name_taken_by_other_content_falls_back_to_the_prefix_and_says_so() {
    let src = Reg::new();
    let (digests, _) = chain_in_registry(&src);
    let archive = src.export_chain("app", "chain.tar.zst", &[]);

    let dst = Reg::new();
    let image = make_image_cache(&dst.path("cache"), "python:3.12", 3, &[8192]);
    let other = make_snapshot(
        &dst.path("other"),
        &SnapSpec::new(&image).label("other", "yes"),
    );
    dst.run(&["add", dst.path("other").to_str().unwrap(), "--name", "deps"])
        .ok();
    let before = listed(&dst);

    let r = dst
        .run(&["import", archive.to_str().unwrap(), "--json"])
        .ok();
    let report: Value = r.json();
    let prefix = format!(
        "sha256-{}",
        &digests[1].to_string()["sha256:".len()..][..16]
    );
    let fallbacks = report["name_fallbacks"].as_array().unwrap();
    assert_eq!(fallbacks.len(), 1, "{report}");
    assert_eq!(fallbacks[0]["digest"], digests[1].to_string());
    assert_eq!(fallbacks[0]["carried"], "deps");
    assert_eq!(fallbacks[0]["name"], prefix);
    assert!(
        fallbacks[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&other.to_string()),
        "{report}"
    );
    assert!(
        r.stderr.contains("came named \"deps\"") && r.stderr.contains(&prefix),
        "{}",
        r.stderr
    );
    let after = listed(&dst);
    assert!(
        before.iter().all(|x| after.contains(x)),
        "deps kept its name"
    );
    assert!(after.contains(&(prefix, digests[1].to_string())));
    assert!(after.contains(&("base".into(), digests[0].to_string())));
    assert!(after.contains(&("app".into(), digests[2].to_string())));
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn a_carried_name_held_by_a_kept_unindexed_directory_falls_back_and_leaves_it() {
    let src = Reg::new();
    let (digests, image) = chain_in_registry(&src);
    let archive = src.export_chain("app", "chain.tar.zst", &[]);

    // Without rows here: an intact snapshot under "deps", and under "base"
    // a manifest.json this msb-registry cannot validate. Neither is moved.
    let dst = Reg::new();
    dst.run(&["gc"]).ok();
    let snapshots = dst.root().join("snapshots");
    let lost = make_snapshot(
        &snapshots.join("deps"),
        &SnapSpec::new(&image).label("lost", "yes"),
    );
    let mine = make_snapshot(
        &snapshots.join("mine"),
        &SnapSpec::new(&image).label("mine", "yes"),
    );
    std::fs::create_dir_all(snapshots.join("base")).unwrap();
    std::fs::write(snapshots.join("base/manifest.json"), br#"{"schema": 2}"#).unwrap();
    let before = dst.tree();
    let kept = || {
        (
            files_of(&snapshots.join("deps")),
            files_of(&snapshots.join("base")),
        )
    };
    let kept_before = kept();

    // A name someone chose is still refused.
    dst.run(&["import", archive.to_str().unwrap(), "--name", "mine"])
        .fails(4, "intact snapshot");
    assert_eq!(dst.tree(), before);

    let r = dst
        .run(&["import", archive.to_str().unwrap(), "--json"])
        .ok();
    let report: Value = r.json();
    let prefix = |d: &msb_registry::model::digest::Digest| d.archive_prefix();
    let fallbacks = report["name_fallbacks"].as_array().unwrap();
    assert_eq!(fallbacks.len(), 2, "{report}");
    for (f, (i, carried, why)) in fallbacks.iter().zip([
        (0, "base", "cannot validate"),
        (1, "deps", "msb-registry reindex"),
    ]) {
        assert_eq!(f["digest"], digests[i].to_string(), "{report}");
        assert_eq!(f["carried"], carried, "{report}");
        assert_eq!(f["name"], prefix(&digests[i]), "{report}");
        assert!(f["reason"].as_str().unwrap().contains(why), "{report}");
        let warning = format!(
            "came named \"{carried}\", but {}; it is named {}",
            f["reason"].as_str().unwrap(),
            prefix(&digests[i])
        );
        assert!(r.stderr.contains(&warning), "{}", r.stderr);
    }
    assert!(
        fallbacks[1]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("intact snapshot {lost}")),
        "{report}"
    );
    assert_eq!(report["name"], "app");
    assert_eq!(kept(), kept_before, "the kept directories are untouched");
    let mut want = vec![
        ("app".to_string(), digests[2].to_string()),
        (prefix(&digests[0]), digests[0].to_string()),
        (prefix(&digests[1]), digests[1].to_string()),
    ];
    want.sort();
    assert_eq!(listed(&dst), want);

    // The intact one is what reindex indexes; the other stays a problem.
    std::fs::remove_dir_all(snapshots.join("base")).unwrap();
    dst.run(&["reindex"]).ok();
    let listed = listed(&dst);
    assert!(
        listed.contains(&("deps".into(), lost.to_string())),
        "{listed:?}"
    );
    assert!(
        listed.contains(&("mine".into(), mine.to_string())),
        "{listed:?}"
    );
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn hostile_carried_names_are_ignored_with_a_warning() {
    let work = Reg::new();
    let image = make_image_cache(&work.path("cache"), "python:3.12", 3, &[8192]);
    let dir = work.path("snap");
    let digest = make_snapshot(&dir, &SnapSpec::new(&image));
    let prefix = format!("sha256-{}", &digest.to_string()["sha256:".len()..][..16]);
    let long = "a".repeat(300);
    let cases: [(&[u8], &str); 6] = [
        (b"../../etc", "invalid snapshot name"),
        (b"deadbeef00", "8 or more hex digits"),
        (b"\xff\xfename", "not UTF-8"),
        (long.as_bytes(), "invalid snapshot name"),
        (b"py\napp", "invalid snapshot name"),
        (b"", "invalid snapshot name"),
    ];
    for (carried, reason) in cases {
        let mut value = b"msb-registry.name=".to_vec();
        value.extend_from_slice(carried);
        let mut t = Tar::new();
        t.pax(&[("comment", &value)]);
        for file in ["manifest.json", "upper.ext4"] {
            t.file(
                &format!("{prefix}/{file}"),
                &std::fs::read(dir.join(file)).unwrap(),
            );
        }
        let archive = work.path("hostile.tar");
        std::fs::write(&archive, t.finish()).unwrap();
        let reg = Reg::new();
        let r = reg
            .run(&["import", archive.to_str().unwrap(), "--json"])
            .ok();
        let report: Value = r.json();
        assert_eq!(report["name"], prefix.as_str(), "{carried:?}");
        let f = &report["name_fallbacks"][0];
        assert!(
            f["reason"].as_str().unwrap().contains(reason),
            "{carried:?}: {report}"
        );
        assert!(f["carried"].as_str().unwrap().chars().count() <= 64);
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(!r.stderr.contains('\n') || r.stderr.ends_with('\n'));
        assert_eq!(listed(&reg), [(prefix.clone(), digest.to_string())]);
        reg.run(&["verify", "--content"]).ok();
    }
}

// ------------------------------------------------------------ interrupts

/// A registry holding one snapshot (`keep`), and a plain-tar archive of
/// another with 24 MiB of data, large enough to be caught mid-stream.
fn registry_and_sizable_archive() -> (Reg, Vec<u8>) {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 3, &[8192]);
    make_snapshot(&reg.path("keep"), &SnapSpec::new(&image));
    reg.run(&["add", reg.path("keep").to_str().unwrap()]).ok();

    let src = Reg::new();
    let mut spec = SnapSpec::new(&image).label("big", "yes");
    spec.len = 64 << 20;
    spec.data = (0..6u64)
        .map(|i| {
            let bytes: Vec<u8> = (0..4 << 20)
                .map(|j| (j % 241) as u8 + 1 + i as u8)
                .collect();
            (i * (8 << 20), bytes)
        })
        .collect();
    make_snapshot(&src.path("big"), &spec);
    src.run(&["add", src.path("big").to_str().unwrap()]).ok();
    let archive = src.path("big.tar");
    src.run(&[
        "export",
        "big",
        "--plain-tar",
        "-o",
        archive.to_str().unwrap(),
    ])
    .ok();
    (reg, std::fs::read(archive).unwrap())
}

/// Bytes in regular files under `dir` (staged data), 0 when it is gone.
fn file_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                file_bytes(&e.path())
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, sig) }, 0);
}

#[test]
fn a_signal_during_import_removes_its_staging_and_exits_128_plus_the_signal() {
    use std::io::Write;
    let (reg, archive) = registry_and_sizable_archive();
    let before = (reg.tree(), listed(&reg));
    for (sig, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let mut child = Command::new(bin())
            .arg("--root")
            .arg(reg.root())
            .args(["import", "-"])
            .env_remove("MSB_REGISTRY_ROOT")
            .env_remove("MSB_FAILPOINT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Half the archive, then a pipe that stays open and silent.
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&archive[..archive.len() / 2]).unwrap();
        let staging = reg.root().join("staging");
        let mut polls = 0;
        while file_bytes(&staging) < 4 << 20 {
            polls += 1;
            assert!(polls < 6000, "the import never staged 4 MiB");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        signal(child.id(), sig);
        let out = Run::from(child.wait_with_output().unwrap());
        drop(stdin);
        assert_eq!(out.code, code, "{name}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "interrupted by {name}; removed this import's staging staging/"
            )) && out.stderr.contains("the registry is unchanged"),
            "{}",
            out.stderr
        );
        assert_eq!(
            std::fs::read_dir(&staging).unwrap().count(),
            0,
            "staging is empty"
        );
        assert_eq!((reg.tree(), listed(&reg)), before, "{name}");
        reg.run(&["verify", "--content"]).ok();
    }
}

#[test]
fn a_signal_during_export_removes_its_partial_file() {
    let (reg, archive) = registry_and_sizable_archive();
    let file = reg.path("big.tar");
    std::fs::write(&file, &archive).unwrap();
    reg.run(&["import", file.to_str().unwrap()]).ok();
    let out_dir = reg.path("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("big.tar.zst");
    let mut child = Command::new(bin())
        .arg("--root")
        .arg(reg.root())
        .args(["export", "big", "-o", target.to_str().unwrap()])
        .env_remove("MSB_REGISTRY_ROOT")
        .env("MSB_FAILPOINT", "export.before-rename:stop")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("stopped") {
        line.clear();
        use std::io::BufRead;
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "export ended early"
        );
    }
    // The line comes just before SIGSTOP: wait until it is stopped, or the
    // SIGCONT below could come first and leave it stopped for ever.
    let stat = format!("/proc/{}/stat", child.id());
    let mut polls = 0;
    while std::fs::read_to_string(&stat)
        .unwrap()
        .rsplit_once(')')
        .is_none_or(|(_, rest)| !rest.trim_start().starts_with('T'))
    {
        polls += 1;
        assert!(polls < 6000, "the export never stopped");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let partials: Vec<_> = std::fs::read_dir(&out_dir).unwrap().flatten().collect();
    assert_eq!(partials.len(), 1, "the partial archive is there");
    signal(child.id(), libc::SIGTERM);
    signal(child.id(), libc::SIGCONT);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(143), "{rest}");
    assert_eq!(rest.lines().count(), 1, "{rest}");
    assert!(
        rest.contains("interrupted by SIGTERM; removed the partial archive ")
            && rest.contains(".partial")
            && rest.contains("was not written"),
        "{rest}"
    );
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        0,
        "nothing left"
    );
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn a_later_import_clears_the_staging_of_an_import_that_died() {
    let (reg, archive) = registry_and_sizable_archive();
    let file = reg.path("big.tar");
    std::fs::write(&file, &archive).unwrap();
    let killed = reg.run_env(
        &["import", file.to_str().unwrap()],
        &[("MSB_FAILPOINT", "import.member-staged@2:abort")],
    );
    assert_ne!(killed.code, 0);
    let staging = reg.root().join("staging");
    assert!(file_bytes(&staging) > 0, "the dead import left its staging");

    // Any later import clears it, whatever it imports.
    let src = Reg::new();
    chain_in_registry(&src);
    let small = src.path("base.tar.zst");
    src.run(&["export", "base", "-o", small.to_str().unwrap()])
        .ok();
    reg.run(&["import", small.to_str().unwrap()]).ok();
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "staging is empty"
    );
    let states: Vec<Value> = reg.json(&[
        "sql",
        "SELECT state, error FROM imports ORDER BY started_at",
    ]);
    assert_eq!(states.len(), 3, "{states:?}");
    assert_eq!(states[1]["state"], "failed");
    assert!(
        states[1]["error"]
            .as_str()
            .unwrap()
            .contains("died while staging")
    );
    reg.run(&["verify", "--content"]).ok();
}

// ------------------------------------------------------------ errors a person can act on

#[test]
fn import_says_what_a_file_is_when_it_is_not_an_archive() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let before = (reg.tree(), listed(&reg));
    let work = reg.path("inputs");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("notes.txt"), "hello, this is not a tar archive\n").unwrap();
    std::fs::write(work.join("empty"), b"").unwrap();
    let made = sh(&format!(
        "cd {w} && tar czf a.tgz notes.txt && tar cJf a.txz notes.txt && tar cjf a.tbz notes.txt",
        w = work.display()
    ));
    made.ok();
    let mut zip = b"PK\x03\x04".to_vec();
    zip.extend_from_slice(&[0u8; 100]);
    std::fs::write(work.join("a.zip"), zip).unwrap();
    for (file, says) in [
        ("a.tgz", "it is a gzip-compressed file, not a tar archive"),
        ("a.txz", "it is an xz-compressed file, not a tar archive"),
        ("a.tbz", "it is a bzip2-compressed file, not a tar archive"),
        ("a.zip", "it is a zip file, not a tar archive"),
        ("notes.txt", "it is a text file, not a tar archive"),
        ("empty", "it is empty"),
    ] {
        let path = work.join(file);
        let r = reg.run(&["import", path.to_str().unwrap()]).fails(6, says);
        assert!(
            r.stderr.contains("import takes a tar archive"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains(path.to_str().unwrap()), "{}", r.stderr);
    }
    let piped = sh(&format!(
        "{} --root {} import - < {}",
        bin(),
        reg.root().display(),
        work.join("a.tgz").display()
    ))
    .fails(6, "stdin: it is a gzip-compressed file");
    assert!(
        piped
            .stderr
            .contains("gzip -dc FILE | msb-registry import -")
    );
    assert_eq!((reg.tree(), listed(&reg)), before);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn sql_refuses_empty_queries_attach_and_extensions_as_usage_errors() {
    let reg = Reg::new();
    chain_in_registry(&reg);
    let attached = reg.path("other.db");
    for (query, says) in [
        ("", "the query is empty"),
        ("  -- just a comment\n", "the query is empty"),
        (";", "the query is empty"),
        (
            &format!("ATTACH DATABASE '{}' AS x", attached.display()),
            "ATTACH is not allowed",
        ),
        ("/* c */ detach main", "DETACH is not allowed"),
        (
            "SELECT load_extension('/nonexistent/x')",
            "loading extensions is not allowed",
        ),
    ] {
        reg.run(&["sql", query]).fails(2, says);
    }
    assert!(!attached.exists(), "ATTACH created nothing");
    let rows: Vec<Value> = reg.json(&["sql", "SELECT count(*) AS n FROM snapshots"]);
    assert_eq!(rows[0]["n"], 3);
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn a_root_that_is_a_file_is_a_usage_error() {
    let work = Reg::new();
    let file = work.path("afile");
    std::fs::write(&file, b"not a registry").unwrap();
    for args in [&["list"][..], &["gc"], &["import", "-"], &["reindex"]] {
        let mut cmd = Command::new(bin());
        cmd.arg("--root").arg(&file).args(args).stdin(Stdio::null());
        cmd.env_remove("MSB_REGISTRY_ROOT");
        Run::from(cmd.output().unwrap()).fails(2, "the root must be a directory");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a registry");
}

// ------------------------------------------------------------ disk usage

#[test]
fn list_and_show_give_allocated_bytes_next_to_apparent_size() {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("cache"), "python:3.12", 3, &[8192]);
    let mut spec = SnapSpec::new(&image);
    spec.len = 256 << 20;
    spec.data = vec![(1 << 20, vec![7u8; 1 << 20])];
    make_snapshot(&reg.path("sparse"), &spec);
    reg.run(&["add", reg.path("sparse").to_str().unwrap()]).ok();
    let dir = reg.root().join("snapshots/sparse");
    let on_disk: u64 = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::os::unix::fs::MetadataExt::blocks(&e.unwrap().metadata().unwrap()) * 512)
        .sum();

    let list: Vec<Value> = reg.json(&["list"]);
    assert_eq!(list[0]["size_bytes"], 256u64 << 20);
    assert_eq!(list[0]["allocated_bytes"], on_disk);
    assert!((1 << 20..8 << 20).contains(&on_disk), "sparse: {on_disk}");
    let show: Value = reg.json(&["show", "sparse"]);
    assert_eq!(show["allocated_bytes"], on_disk);

    let text = reg.run(&["list"]).ok().stdout;
    assert!(text.lines().next().unwrap().contains("ON DISK"), "{text}");
    assert!(text.contains("256.00 MiB"), "{text}");
    let shown = reg.run(&["show", "sparse"]).ok().stdout;
    assert!(shown.contains("on disk:"), "{shown}");
    reg.run(&["verify", "--content"]).ok();
}

/// gc says what it frees on disk next to the apparent size: a sparse
/// debris file of 256 MiB holding 1 MiB of data frees about 1 MiB.
#[test]
fn gc_reports_the_disk_space_it_frees_next_to_the_apparent_size() {
    use std::os::unix::fs::FileExt;
    let reg = Reg::new();
    chain_in_registry(&reg);
    let name = format!("sha256_{}.erofs", "d".repeat(64));
    let debris = reg.root().join("cache/layers").join(&name);
    let file = std::fs::File::create(&debris).unwrap();
    file.set_len(256 << 20).unwrap();
    file.write_all_at(&vec![7u8; 1 << 20], 64 << 20).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let dry: Value = reg.json(&["gc", "--dry-run", "--grace", "0"]);
    assert_eq!(dry["bytes"], 256u64 << 20, "{dry}");
    let on_disk = dry["allocated_bytes"].as_u64().unwrap();
    assert!(
        (1 << 20..=2 << 20).contains(&on_disk),
        "a sparse file costs its data: {on_disk}"
    );
    let text = reg.run(&["gc", "--dry-run", "--grace", "0"]).ok().stdout;
    assert!(text.contains("256.00 MiB, 1.00 MiB on disk"), "{text}");

    let real: Value = reg.json(&["gc", "--grace", "0"]);
    assert_eq!(real["allocated_bytes"].as_u64().unwrap(), on_disk);
    assert!(!debris.exists());
    reg.run(&["verify", "--content"]).ok();
}

/// A writer pointed at a directory that holds things of its own (not a
/// registry, not a microsandbox home) refuses instead of adopting it.
#[test]
fn a_non_empty_directory_that_is_no_registry_is_never_adopted() {
    let scratch = Reg::new();
    let home = scratch.root().join("Documents");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("notes.txt"), b"mine").unwrap();
    let dir = scratch.root().join("snap");
    make_snapshot(
        &dir,
        &SnapSpec::new(&make_image_cache(
            &scratch.root().join("c"),
            "python:3.12",
            1,
            &[4096],
        )),
    );
    for args in [
        vec!["add", dir.to_str().unwrap()],
        vec!["gc"],
        vec!["reindex"],
    ] {
        let out = Command::new(bin())
            .arg("--root")
            .arg(&home)
            .args(&args)
            .output()
            .unwrap();
        let run = Run::from(out).fails(2, "is not a registry and holds \"notes.txt\"");
        assert!(
            run.stderr.contains("choose another --root"),
            "{}",
            run.stderr
        );
        let names: Vec<_> = std::fs::read_dir(&home)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["notes.txt"], "{args:?} created something");
    }
    // A microsandbox home is adopted: it is what --root ~/.microsandbox is for.
    std::fs::create_dir_all(home.join("sandboxes")).unwrap();
    Command::new(bin())
        .arg("--root")
        .arg(&home)
        .args(["gc"])
        .output()
        .map(Run::from)
        .unwrap()
        .ok();
    assert!(home.join("registry.db").exists());
}
