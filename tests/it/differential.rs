//! Differential tests against GNU tar, the reference implementation: for
//! every archive of the corpus (and mutations of it), import either refuses
//! or installs exactly the files, with exactly the bytes, that `tar -xS`
//! extracts from it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use msb_registry::NoProgress;
use msb_registry::Registry;
use msb_registry::model::digest::Digest;
use msb_registry::{ImportOptions, ImportSource};

use crate::chaos::{content_tree, file_digest};
use crate::corpus::{self, Archive};

/// What a reference reader extracted: the files as the registry would
/// hold them, what it printed on stderr, and whether it exited 0.
pub struct View {
    pub files: BTreeMap<String, Digest>,
    pub stderr: String,
    pub ok: bool,
}

/// What GNU tar extracts from `bytes` (zstd decompressed first), as the
/// registry would hold it: `sha256-…/<file>` under `snapshots/`, `cache/…`
/// as is; `None` when the bytes are not a zstd stream the zstd tool reads.
pub fn gnu_tar_view(bytes: &[u8], out: &Path) -> Option<View> {
    extract_view(&["tar", "-xSf", "-", "-C"], bytes, out)
}

/// What bsdtar (libarchive, the other reference reader) extracts, likewise.
pub fn bsdtar_view(bytes: &[u8], out: &Path) -> Option<View> {
    extract_view(&["bsdtar", "-xf", "-", "-C"], bytes, out)
}

fn extract_view(command: &[&str], bytes: &[u8], out: &Path) -> Option<View> {
    let tar = corpus::plain_tar(bytes)?;
    std::fs::create_dir_all(out).unwrap();
    let mut child = Command::new(command[0])
        .args(&command[1..])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{} (scripts/test-deps.sh installs it): {e}", command[0]));
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&tar);
    });
    let done = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let mut files = BTreeMap::new();
    walk(out, out, &mut files);
    Some(View {
        files,
        stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
        ok: done.status.success(),
    })
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Digest>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = p.symlink_metadata().unwrap();
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if m.is_dir() {
            walk(root, &p, out);
        } else if m.is_file() {
            let key = if rel.starts_with("cache/") {
                rel
            } else {
                format!("snapshots/{rel}")
            };
            out.insert(key, file_digest(&p));
        } else {
            out.insert(format!("{rel} (not a regular file)"), Digest::of(b""));
        }
    }
}

/// Import `bytes` into a fresh registry at `root` through the library.
pub fn import(root: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Digest>, String> {
    let file = root.with_extension("archive");
    std::fs::write(&file, bytes).unwrap();
    let mut registry = Registry::open(root).unwrap();
    let r = registry.import(
        &ImportSource::Path(file.clone()),
        &ImportOptions::default(),
        &NoProgress,
    );
    std::fs::remove_file(&file).unwrap();
    match r {
        Ok(_) => Ok(content_tree(root)),
        Err(e) => Err(e.to_string()),
    }
}

/// Import either refuses `a` or installs exactly GNU tar's view of it, and
/// then GNU tar exited 0 and bsdtar extracted the same files and bytes
/// (where the two reference readers differ, or GNU tar fails, import must
/// refuse); returns whether it was accepted.
pub fn agrees_with_gnu_tar(work: &Path, tag: &str, a: &Archive) -> bool {
    let root = work.join(format!("reg-{tag}"));
    let ours = import(&root, &a.bytes);
    let accepted = ours.is_ok();
    if let Ok(ours) = ours {
        let Some(gnu) = gnu_tar_view(&a.bytes, &work.join(format!("gnu-{tag}"))) else {
            panic!("{}: import accepted what zstd cannot decompress", a.name);
        };
        assert_eq!(
            ours, gnu.files,
            "{}: import installed other files or bytes than GNU tar extracts (tar said: {})",
            a.name, gnu.stderr
        );
        assert!(
            gnu.ok && gnu.stderr.is_empty(),
            "{}: import accepted what GNU tar fails or warns on: {}",
            a.name,
            gnu.stderr
        );
        let bsd = bsdtar_view(&a.bytes, &work.join(format!("bsd-{tag}"))).unwrap();
        assert_eq!(
            ours, bsd.files,
            "{}: import accepted an archive bsdtar reads otherwise than GNU tar (bsdtar said: {})",
            a.name, bsd.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(work.join(format!("gnu-{tag}")));
    let _ = std::fs::remove_dir_all(work.join(format!("bsd-{tag}")));
    accepted
}

#[test]
fn import_refuses_or_agrees_with_gnu_tar_on_the_corpus() {
    let work = tempfile::tempdir().unwrap();
    let archives = corpus::corpus(work.path(), true);
    if let Some(dump) = std::env::var_os("MSB_CORPUS_DUMP") {
        std::fs::create_dir_all(&dump).unwrap();
        for a in &archives {
            std::fs::write(Path::new(&dump).join(a.name.replace(':', "-")), &a.bytes).unwrap();
        }
    }
    let mut accepted = Vec::new();
    for (i, a) in archives.iter().enumerate() {
        let ok = agrees_with_gnu_tar(work.path(), &i.to_string(), a);
        eprintln!("{}: {}", a.name, if ok { "accepted" } else { "refused" });
        if ok {
            accepted.push(a.name.clone());
        }
    }
    for must in [
        "gnu-tar-sparse-0-extents",
        "gnu-tar-sparse-1-extents",
        "gnu-tar-sparse-4-extents",
        "gnu-tar-sparse-5-extents",
        "gnu-tar-sparse-25-extents",
        "gnu-tar-sparse-26-extents",
        "gnu-tar-sparse-2566-extents",
        "gnu-tar-sparse-2567-extents",
        "gnu-tar-sparse-3000-extents",
        "export-zst-sparse",
        "export-tar-dense",
        "handmade-dense",
        "handmade-sparse",
        "handmade-base256-size",
        "handmade-zero-padding-after-end",
        "handmade-pax-path-and-size",
        "handmade-gnu-long-name",
        "smuggling-forged-headers-in-sparse-data",
    ] {
        assert!(
            accepted.iter().any(|n| n == must),
            "{must} was refused; accepted: {accepted:?}"
        );
    }
}

/// The smuggling archive imports exactly GNU tar's view: the second upper
/// holds the forged headers as data, and no `evil.sh` is installed.
#[test]
fn regression_forged_headers_inside_sparse_data_stay_data() {
    let work = tempfile::tempdir().unwrap();
    let (archive, target) = corpus::smuggling(work.path());
    let root = work.path().join("reg");
    let installed = import(&root, &archive.bytes).expect("the smuggling archive imports");
    let names: Vec<&str> = installed
        .keys()
        .map(|k| k.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["manifest.json", "upper.ext4", "manifest.json", "upper.ext4"]
    );
    assert!(!root.join(format!("snapshots/{target}/evil.sh")).exists());
    let forged = corpus::forged_header(&format!("{target}/evil.sh"), 11);
    let carrier = installed
        .keys()
        .find(|k| k.ends_with("upper.ext4") && !k.contains(&target))
        .unwrap();
    let upper = std::fs::read(root.join(carrier)).unwrap();
    assert_eq!(&upper[..512], &forged[..], "the forged header is data");
    assert!(agrees_with_gnu_tar(work.path(), "smuggle", &archive));
}

/// The fuzz target `differential`, bounded: deterministic mutations of the
/// small archives of the corpus (bytes flipped in headers and data,
/// truncations, blocks duplicated or dropped), each refused or read as GNU
/// tar reads it.
#[test]
fn mutated_archives_are_refused_or_agree_with_gnu_tar() {
    let work = tempfile::tempdir().unwrap();
    let cases: usize = std::env::var("MSB_DIFFERENTIAL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let bases: Vec<Archive> = corpus::corpus(work.path(), false)
        .into_iter()
        .filter(|a| a.bytes.len() <= 512 << 10)
        .filter_map(|a| {
            corpus::plain_tar(&a.bytes).map(|bytes| Archive {
                name: a.name,
                bytes,
            })
        })
        .collect();
    let mut rng = 0x5eed_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut accepted = 0;
    for case in 0..cases {
        let base = &bases[next() as usize % bases.len()];
        let mut bytes = base.bytes.clone();
        let blocks = bytes.len() / 512;
        let how = next() % 5;
        match how {
            // A byte in a header-like position of some block.
            0 | 1 => {
                let block = next() as usize % blocks;
                let at = block * 512
                    + [124, 130, 135, 156, 345, 386, 400, 482, 483, 494, 504][next() as usize % 11];
                if at < bytes.len() {
                    bytes[at] = next() as u8;
                    // Reseal, so the checksum does not hide the change.
                    let h: &mut [u8; 512] = (&mut bytes[block * 512..block * 512 + 512])
                        .try_into()
                        .unwrap();
                    if h.iter().any(|&b| b != 0) {
                        crate::tarcraft::seal(h);
                    }
                }
            }
            2 => bytes.truncate(next() as usize % bytes.len().max(1)),
            3 => {
                let block = next() as usize % blocks;
                let copy = bytes[block * 512..block * 512 + 512].to_vec();
                let at = (next() as usize % blocks) * 512;
                bytes.splice(at..at, copy);
            }
            _ => {
                let block = next() as usize % blocks;
                bytes.drain(block * 512..block * 512 + 512);
            }
        }
        let a = Archive {
            name: format!("{} mutation {case} ({how})", base.name),
            bytes,
        };
        accepted += usize::from(agrees_with_gnu_tar(work.path(), &format!("m{case}"), &a));
    }
    eprintln!("{accepted} of {cases} mutated archives accepted, all as GNU tar reads them");
}
