//! Everyday use, second part, through the binary: snapshot names that
//! travel in archives.

use std::process::{Command, Stdio};

use serde_json::Value;

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
    let archive = src.path("chain.tar.zst");
    src.run(&[
        "export",
        "app",
        "--with-parents",
        "-o",
        archive.to_str().unwrap(),
    ])
    .ok();
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
    let dense = src.path("dense.tar");
    src.run(&[
        "export",
        "app",
        "--with-parents",
        "--dense",
        "--plain-tar",
        "-o",
        dense.to_str().unwrap(),
    ])
    .ok();
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
            std::str::from_utf8(&h[124..135]).unwrap().trim_matches('\0'),
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
    let archive = src.path("chain.tar.zst");
    src.run(&[
        "export",
        "app",
        "--with-parents",
        "-o",
        archive.to_str().unwrap(),
    ])
    .ok();

    let dst = Reg::new();
    let image = make_image_cache(&dst.path("cache"), "python:3.12", 3, &[8192]);
    let other = make_snapshot(
        &dst.path("other"),
        &SnapSpec::new(&image).label("other", "yes"),
    );
    dst.run(&["add", dst.path("other").to_str().unwrap(), "--name", "deps"])
        .ok();
    let before = listed(&dst);

    let r = dst.run(&["import", archive.to_str().unwrap(), "--json"]).ok();
    let report: Value = r.json();
    let prefix = format!("sha256-{}", &digests[1].to_string()["sha256:".len()..][..16]);
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
    assert!(before.iter().all(|x| after.contains(x)), "deps kept its name");
    assert!(after.contains(&(prefix, digests[1].to_string())));
    assert!(after.contains(&("base".into(), digests[0].to_string())));
    assert!(after.contains(&("app".into(), digests[2].to_string())));
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
        let r = reg.run(&["import", archive.to_str().unwrap(), "--json"]).ok();
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
