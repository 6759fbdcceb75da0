//! Chaos tests: every archive of the corpus read through a source that
//! returns 1-byte reads, short reads and Pending at every position
//! (deterministic from a seed) must mean exactly what a plain read means:
//! the same members, the same bytes, the same refusal. Checked on the tar
//! reader alone (many seeds, and one pattern with a Pending before every
//! single byte), on the whole library import path, and once through the
//! binary with `import -` fed by a pipe that stalls.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::task::{Context, Poll};
use std::time::Duration;

use msb_registry::NoProgress;
use msb_registry::OpenedSource;
use msb_registry::Registry;
use msb_registry::model::digest::Digest;
use msb_registry::{ImportOptions, ImportSource};
use msb_registry::{TarChunk as Chunk, TarReader};
use tokio::io::{AsyncRead, ReadBuf};

use crate::corpus::{self, Archive};
use crate::util::{Reg, bin};

/// How a [`Chaos`] reader hands out bytes.
#[derive(Clone, Copy, Debug)]
pub enum Pattern {
    /// Pending, then one byte, at every position.
    PendingEveryByte,
    /// From a seed: Pending, 1 byte, a short read or as much as asked, at random.
    Seeded(u64),
}

/// A reader over bytes whose reads follow a [`Pattern`].
pub struct Chaos {
    data: Vec<u8>,
    pos: usize,
    pattern: Pattern,
    rng: u64,
    pended: bool,
}

impl Chaos {
    pub fn new(data: Vec<u8>, pattern: Pattern) -> Self {
        let rng = match pattern {
            Pattern::PendingEveryByte => 1,
            Pattern::Seeded(s) => s.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        };
        Chaos {
            data,
            pos: 0,
            pattern,
            rng,
            pended: false,
        }
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl AsyncRead for Chaos {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let left = self.data.len() - self.pos;
        if left == 0 || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let n = match self.pattern {
            Pattern::PendingEveryByte => {
                if !self.pended {
                    self.pended = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                self.pended = false;
                1
            }
            Pattern::Seeded(_) => {
                let r = self.next();
                match r % 8 {
                    0 | 1 => {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    2 | 3 => 1,
                    4..=6 => 1 + (r >> 8) as usize % 700,
                    _ => usize::MAX,
                }
            }
        };
        let n = n.min(left).min(buf.remaining());
        let pos = self.pos;
        buf.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// What the tar reader makes of a stream: every header, every chunk (data
/// by digest), and how it ended.
fn listing(reader: impl AsyncRead + Unpin, spill: &Path) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut tar = TarReader::new(reader, spill);
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tar.next().await {
                Ok(None) => break,
                Ok(Some(h)) => out.push(format!("{h:?}")),
                Err(e) => {
                    out.push(format!("error: {e}"));
                    return out;
                }
            }
            loop {
                match tar.read_data(&mut buf).await {
                    Ok(None) => break,
                    Ok(Some(Chunk::Zeros(n))) => out.push(format!("zeros {n}")),
                    Ok(Some(Chunk::Data(n))) => {
                        out.push(format!("data {n} {}", Digest::of(&buf[..n])))
                    }
                    Err(e) => {
                        out.push(format!("error: {e}"));
                        return out;
                    }
                }
            }
        }
        match tar.finish().await {
            Ok(()) => out.push("end".into()),
            Err(e) => out.push(format!("error after end: {e}")),
        }
        out
    })
}

fn seeds() -> u64 {
    std::env::var("MSB_CHAOS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

#[test]
fn the_tar_reader_means_the_same_whatever_the_read_pattern() {
    let work = tempfile::tempdir().unwrap();
    let spill = work.path().join("spill");
    std::fs::create_dir(&spill).unwrap();
    let archives = corpus::corpus(work.path(), true);
    let mut checked = 0;
    for a in &archives {
        let Some(tar) = corpus::plain_tar(&a.bytes) else {
            continue;
        };
        let plain = listing(&tar[..], &spill);
        if tar.len() <= 1 << 20 {
            let chaos = listing(Chaos::new(tar.clone(), Pattern::PendingEveryByte), &spill);
            assert_eq!(chaos, plain, "{}: Pending before every byte", a.name);
        }
        for seed in 0..seeds() {
            let chaos = listing(Chaos::new(tar.clone(), Pattern::Seeded(seed)), &spill);
            assert_eq!(chaos, plain, "{}: seed {seed}", a.name);
        }
        checked += 1;
    }
    assert!(checked >= 30, "only {checked} archives checked");
    assert!(
        std::fs::read_dir(&spill).unwrap().next().is_none(),
        "spilled sparse maps are unnamed files"
    );
}

/// Outcome of one library import: the refusal, or the installed files with
/// their content digests.
pub fn import_outcome(
    root: &Path,
    source: OpenedSource,
) -> Result<BTreeMap<String, Digest>, (i32, String)> {
    let mut registry = Registry::open(root).unwrap();
    match registry.import_from(
        &ImportSource::Stdin,
        source,
        &ImportOptions::default(),
        &NoProgress,
    ) {
        Err(e) => Err((e.exit_code(), e.to_string())),
        Ok(_) => Ok(content_tree(root)),
    }
}

/// Every file under `snapshots/` and `cache/` of a registry with its content
/// digest. Snapshot directories are keyed by their archive prefix (the
/// digest of their manifest), not by the name they landed under, so a
/// registry compares with what tar extracts whatever names the archive carried.
pub fn content_tree(root: &Path) -> BTreeMap<String, Digest> {
    let mut out = BTreeMap::new();
    for top in ["snapshots", "cache"] {
        walk(root, &root.join(top), &mut out);
    }
    let mut prefixes = BTreeMap::new();
    for (path, digest) in &out {
        if let Some(dir) = path
            .strip_prefix("snapshots/")
            .and_then(|p| p.strip_suffix("/manifest.json"))
        {
            prefixes.insert(dir.to_string(), digest.archive_prefix());
        }
    }
    out.into_iter()
        .map(|(path, digest)| {
            let renamed = path
                .strip_prefix("snapshots/")
                .and_then(|p| p.split_once('/'))
                .and_then(|(dir, file)| Some(format!("snapshots/{}/{file}", prefixes.get(dir)?)));
            (renamed.unwrap_or(path), digest)
        })
        .collect()
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Digest>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            out.insert(rel, file_digest(&p));
        }
    }
}

/// SHA-256 of a file's bytes, streamed.
pub fn file_digest(path: &Path) -> Digest {
    use msb_registry::model::digest::{LogicalSink, PlainSha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = PlainSha256::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.data(&buf[..n]);
    }
    h.finish()
}

fn reader_of(bytes: &[u8], pattern: Option<Pattern>) -> OpenedSource {
    match pattern {
        None => OpenedSource::from_reader(Box::new(std::io::Cursor::new(bytes.to_vec())), None),
        Some(p) => OpenedSource::from_reader(Box::new(Chaos::new(bytes.to_vec(), p)), None),
    }
}

#[test]
fn import_means_the_same_whatever_the_read_pattern() {
    let work = tempfile::tempdir().unwrap();
    let archives: Vec<Archive> = corpus::corpus(work.path(), false);
    let mut accepted = 0;
    for (i, a) in archives.iter().enumerate() {
        let plain = import_outcome(
            &work.path().join(format!("plain-{i}")),
            reader_of(&a.bytes, None),
        );
        accepted += usize::from(plain.is_ok());
        let mut patterns = vec![Pattern::Seeded(i as u64), Pattern::Seeded(1000 + i as u64)];
        if a.bytes.len() <= 256 << 10 {
            patterns.push(Pattern::PendingEveryByte);
        }
        for (j, p) in patterns.into_iter().enumerate() {
            let root = work.path().join(format!("chaos-{i}-{j}"));
            let chaos = import_outcome(&root, reader_of(&a.bytes, Some(p)));
            assert_eq!(chaos, plain, "{}: {p:?}", a.name);
            if chaos.is_err() {
                assert!(
                    std::fs::read_dir(root.join("staging"))
                        .unwrap()
                        .next()
                        .is_none(),
                    "{}: staging left behind",
                    a.name
                );
            }
        }
    }
    assert!(accepted >= 15, "only {accepted} archives accepted");
}

/// An upper of `n` extents of 4 KiB every 8 KiB, added to `reg` and
/// exported (sparse, zstd); returns the archive and the upper's path.
pub fn exported_extents(reg: &Reg, n: u64) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = reg.path(&format!("extents-{n}"));
    corpus::extents_snapshot(&dir, n, 4096, 8192, true);
    reg.run(&["add", dir.to_str().unwrap(), "--name", &format!("e{n}")])
        .ok();
    let archive = reg.path(&format!("extents-{n}.tar.zst"));
    reg.run(&["export", &format!("e{n}"), "-o", archive.to_str().unwrap()])
        .ok();
    (archive, dir.join("upper.ext4"))
}

/// Run `import -` with the archive written into its stdin in pieces: the
/// first 4 KiB, a stall of `first_stall`, then random pieces with random
/// short stalls (seeded).
pub fn import_through_stalling_pipe(
    reg: &Reg,
    archive: &[u8],
    first_stall: Duration,
    seed: u64,
) -> crate::util::Run {
    let mut child = reg
        .command(&["import", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = archive.to_vec();
    let writer = std::thread::spawn(move || {
        let mut rng = Chaos::new(Vec::new(), Pattern::Seeded(seed));
        let first = data.len().min(4096);
        if stdin.write_all(&data[..first]).is_err() {
            return;
        }
        stdin.flush().ok();
        std::thread::sleep(first_stall);
        let mut pos = first;
        while pos < data.len() {
            let r = rng.next();
            let n = (1 + (r % 200_000) as usize).min(data.len() - pos);
            if stdin.write_all(&data[pos..pos + n]).is_err() {
                return;
            }
            pos += n;
            if r.is_multiple_of(8) {
                std::thread::sleep(Duration::from_millis(1 + (r >> 32) % 20));
            }
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    crate::util::Run::from(out)
}

/// The report: a 300-extent export that stalls for a second after
/// its first 4 KiB was refused by `import -`.
#[test]
fn regression_import_from_a_stalling_pipe() {
    let src = Reg::new();
    let (archive, upper) = exported_extents(&src, 300);
    let bytes = std::fs::read(&archive).unwrap();
    let reg = Reg::new();
    let run = import_through_stalling_pipe(&reg, &bytes, Duration::from_secs(1), 7).ok();
    let report: serde_json::Value = run.json();
    let name = report["name"].as_str().unwrap();
    let installed = reg.root().join(format!("snapshots/{name}/upper.ext4"));
    assert_eq!(file_digest(&installed), file_digest(&upper));
    reg.run(&["verify", "--content"]).ok();
    // And the same archive through the library with chaos reads: same bytes.
    let work = tempfile::tempdir().unwrap();
    let chaos = import_outcome(work.path(), reader_of(&bytes, Some(Pattern::Seeded(3)))).unwrap();
    assert_eq!(chaos, content_tree(&reg.root()));
}

/// Run `import <archive> --json` and return its outcome and its peak RSS
/// in KiB, measured by GNU time (`None` when /usr/bin/time is missing). The
/// binary is not waited for directly: a child spawned from this large test
/// process inherits its RSS high-water mark.
pub fn import_measuring_rss(reg: &Reg, archive: &Path) -> (crate::util::Run, Option<u64>) {
    let time = Path::new("/usr/bin/time");
    let rss_file = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = if time.exists() {
        let mut c = Command::new(time);
        c.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(rss_file.path())
            .arg(bin());
        c
    } else {
        Command::new(bin())
    };
    cmd.arg("--root")
        .arg(reg.root())
        .arg("import")
        .arg(archive)
        .arg("--json")
        .env_remove("MSB_REGISTRY_ROOT")
        .env_remove("MSB_FAILPOINT");
    let run = crate::util::Run::from(cmd.output().unwrap());
    let rss = std::fs::read_to_string(rss_file.path())
        .ok()
        .and_then(|s| s.trim().lines().last().and_then(|l| l.parse().ok()));
    (run, rss)
}
