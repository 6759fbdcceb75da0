//! Differential fuzzing against GNU tar, the reference implementation:
//! arbitrary bytes go through `Registry::import` into a fresh registry; when
//! the import is accepted, `tar -xSf` (after `zstd -dc` for a zstd stream)
//! must extract exactly the same regular files with exactly the same bytes
//! as the registry installed (`<prefix>/<file>` as `snapshots/<prefix>/<file>`,
//! `cache/…` as is). A refusal is always an agreement. Needs GNU tar and
//! zstd on PATH.
#![no_main]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use libfuzzer_sys::fuzz_target;
use msb_registry::Registry;
use msb_registry::{ImportOptions, ImportSource};
use msb_registry::model::digest::{Digest, LogicalSink, PlainSha256};
use msb_registry::NoProgress;

fn digest(path: &Path) -> Digest {
    let mut f = std::fs::File::open(path).expect("open");
    let mut h = PlainSha256::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            return h.finish();
        }
        h.data(&buf[..n]);
    }
}

/// Regular files under `dir` by path relative to `root`; anything else is
/// recorded as such, so it can never match an installed file.
fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<Digest>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("entry").path();
        let m = p.symlink_metadata().expect("stat");
        let rel = p.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
        if m.is_dir() {
            walk(root, &p, out);
        } else if m.is_file() {
            out.insert(rel, Some(digest(&p)));
        } else {
            out.insert(rel, None);
        }
    }
}

fn installed(root: &Path) -> BTreeMap<String, Option<Digest>> {
    let mut out = BTreeMap::new();
    walk(&root.join("snapshots"), &root.join("snapshots"), &mut out);
    let mut cache = BTreeMap::new();
    walk(root, &root.join("cache"), &mut cache);
    out.extend(cache);
    out
}

fn pipe(cmd: &mut Command, input: Vec<u8>) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer");
    out
}

fn gnu_tar_view(data: &[u8], out: &Path) -> BTreeMap<String, Option<Digest>> {
    let tar = if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let unzstd = pipe(Command::new("zstd").args(["-dc", "-q"]), data.to_vec());
        assert!(unzstd.status.success(), "import accepted what zstd cannot decompress");
        unzstd.stdout
    } else {
        data.to_vec()
    };
    std::fs::create_dir_all(out).expect("mkdir");
    pipe(Command::new("tar").args(["-xSf", "-", "-C"]).arg(out), tar);
    let mut view = BTreeMap::new();
    walk(out, out, &mut view);
    view
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir_in(if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    })
    .expect("sandbox");
    let input = dir.path().join("input");
    std::fs::write(&input, data).expect("write input");
    let root = dir.path().join("root");
    let mut registry = Registry::open(&root).expect("open registry");
    let result = registry.import(
        &ImportSource::Path(input),
        &ImportOptions::default(),
        &NoProgress,
    );
    if result.is_err() {
        return;
    }
    let ours = installed(&root);
    let gnu = gnu_tar_view(data, &dir.path().join("gnu"));
    assert_eq!(ours, gnu, "import installed other files or bytes than GNU tar extracts");
});
