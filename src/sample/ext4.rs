//! Realistic ext4 uppers: `mkfs.ext4` on a sparse file, then `debugfs -w`
//! writing a package-install-like tree of files of varied sizes. Scratch
//! files written between them are deleted and their blocks punched out of
//! the image, as a VM with discard does, so the upper ends up with the
//! thousands of data extents of a used disk rather than one dense run.
//! A child round starts from a sparse copy of its parent's upper, as
//! microsandbox does when it boots a sandbox from a snapshot.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;

use crate::model::error::{Error, IoContext, Result};
use crate::sample::mixed_bytes;
use crate::store::files::data_extents;

/// ext4 block size used for the images.
pub const BLOCK: u64 = 4096;

/// One round of writes into an ext4 image.
#[derive(Debug, Clone)]
pub struct Round {
    /// Seeds file names, sizes and contents; rounds with different seeds write different trees.
    pub seed: u64,
    /// Directories created (like packages).
    pub dirs: usize,
    /// Files written into each directory.
    pub files_per_dir: usize,
    /// Upper bound on a file's size; sizes follow a log-normal spread below it.
    pub max_file: usize,
    /// Files of earlier rounds rewritten (deleted, then written anew), as an upgrade does.
    pub rewrites: usize,
}

impl Round {
    /// A round of `dirs × files_per_dir` files up to 1 MiB each.
    pub fn new(seed: u64, dirs: usize, files_per_dir: usize) -> Self {
        Round {
            seed,
            dirs,
            files_per_dir,
            max_file: 1 << 20,
            rewrites: 0,
        }
    }
}

/// What an upper holds once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperStats {
    /// Apparent size.
    pub len: u64,
    /// Runs of data between holes, as SEEK_DATA/SEEK_HOLE see them.
    pub extents: usize,
    /// Bytes in those runs.
    pub data_bytes: u64,
}

/// Whether `mkfs.ext4` and `debugfs` can be run here.
pub fn tools_available() -> bool {
    ["mkfs.ext4", "debugfs"].iter().all(|tool| {
        Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success() || !o.stderr.is_empty())
    })
}

/// Create a fresh ext4 image of apparent size `len` at `path` and apply `round`.
pub fn make_upper(path: &Path, len: u64, round: &Round) -> Result<UpperStats> {
    let file = File::create(path).at("create", path)?;
    file.set_len(len).at("truncate", path)?;
    drop(file);
    run(Command::new("mkfs.ext4")
        .args(["-F", "-q", "-b", "4096", "-E"])
        .arg("lazy_itable_init=1,lazy_journal_init=1,nodiscard")
        .arg(path))?;
    apply(path, round, "r0")
}

/// Make `child` a sparse copy of `parent`, then apply `round` to it.
pub fn make_child(parent: &Path, child: &Path, round: &Round, tag: &str) -> Result<UpperStats> {
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(parent)
        .arg(child))?;
    apply(child, round, tag)
}

/// Apparent size, extents and data bytes of `path`.
pub fn stats(path: &Path) -> Result<UpperStats> {
    let file = File::open(path).at("open", path)?;
    let len = file.metadata().at("stat", path)?.len();
    let extents = data_extents(&file, len).at("list extents of", path)?;
    Ok(UpperStats {
        len,
        extents: extents.len(),
        data_bytes: extents.iter().map(|(_, n)| n).sum(),
    })
}

/// Write one round into the image at `path`; `tag` keeps rounds' names apart.
fn apply(path: &Path, round: &Round, tag: &str) -> Result<UpperStats> {
    let work = tempfile::tempdir().at("create temporary directory for", path)?;
    let mut rng = XorShift::new(round.seed);
    let mut writes = Vec::new();
    let mut scratch = Vec::new();
    let host_file = |name: &str, bytes: &[u8]| -> Result<String> {
        let host = work.path().join(name);
        std::fs::write(&host, bytes).at("write", &host)?;
        Ok(host.display().to_string())
    };
    for d in 0..round.dirs {
        let dir = format!("{tag}-pkg{d}");
        writes.push(format!("mkdir {dir}"));
        for f in 0..round.files_per_dir {
            let size = rng.log_normal_size(round.max_file);
            let seed = round.seed ^ ((d as u64) << 32 | f as u64);
            let host = host_file(&format!("{d}-{f}"), &mixed_bytes(seed, size))?;
            writes.push(format!("write {host} {dir}/f{f}"));
            if rng.next().is_multiple_of(2) {
                let len = BLOCK as usize * (1 + (rng.next() % 4) as usize);
                let host = host_file(&format!("{d}-{f}.tmp"), &mixed_bytes(!seed, len))?;
                let name = format!("{dir}/.tmp{f}");
                writes.push(format!("write {host} {name}"));
                scratch.push(name);
            }
        }
    }
    for r in 0..round.rewrites {
        let (d, f) = (
            rng.next() as usize % round.dirs.max(1),
            rng.next() as usize % round.files_per_dir.max(1),
        );
        let size = rng.log_normal_size(round.max_file);
        let host = host_file(&format!("rw{r}"), &mixed_bytes(round.seed ^ r as u64, size))?;
        let name = format!("r0-pkg{d}/f{f}");
        writes.push(format!("rm {name}"));
        writes.push(format!("write {host} {name}"));
    }
    debugfs(path, &writes, true)?;
    let listing = debugfs(
        path,
        &scratch
            .iter()
            .map(|s| format!("blocks {s}"))
            .collect::<Vec<_>>(),
        false,
    )?;
    let blocks: Vec<u64> = listing
        .lines()
        .filter(|l| !l.starts_with("debugfs"))
        .flat_map(|l| l.split_whitespace().filter_map(|b| b.parse().ok()))
        .collect();
    debugfs(
        path,
        &scratch
            .iter()
            .map(|s| format!("rm {s}"))
            .collect::<Vec<_>>(),
        true,
    )?;
    punch_blocks(path, &blocks)?;
    stats(path)
}

/// Run debugfs over `commands` (one per line); its standard output.
fn debugfs(image: &Path, commands: &[String], write: bool) -> Result<String> {
    let script = tempfile::NamedTempFile::new().at("create debugfs script for", image)?;
    std::fs::write(script.path(), commands.join("\n") + "\n").at("write", script.path())?;
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    run(cmd.arg("-f").arg(script.path()).arg(image))
}

/// Punch the image's bytes of the freed `blocks`, as discard does.
fn punch_blocks(path: &Path, blocks: &[u64]) -> Result<()> {
    let file = File::options().write(true).open(path).at("open", path)?;
    for block in blocks {
        // SAFETY: plain syscall on an open descriptor with in-range arguments.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (block * BLOCK) as libc::off_t,
                BLOCK as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "punch hole in",
                path,
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().at("run", &shown)?;
    if !out.status.success() {
        return Err(Error::io(
            "run",
            &shown,
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A small deterministic generator (xorshift64).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Sizes spread like a package's files: many of a few KiB, a few large.
    fn log_normal_size(&mut self, max: usize) -> usize {
        let octave = self.next() % 12;
        let base = 256usize << octave;
        (base + (self.next() as usize % base)).clamp(1, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uppers_are_fragmented_and_children_share_their_parents_blocks() {
        if !tools_available() {
            eprintln!("skipping: mkfs.ext4 and debugfs are needed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().join("parent.ext4");
        let p = make_upper(&parent, 256 << 20, &Round::new(1, 8, 40)).unwrap();
        assert_eq!(p.len, 256 << 20);
        assert!(p.extents > 100, "parent has only {} extents", p.extents);
        let child = dir.path().join("child.ext4");
        let mut round = Round::new(2, 2, 20);
        round.rewrites = 10;
        let c = make_child(&parent, &child, &round, "r1").unwrap();
        eprintln!("parent {p:?}\nchild {c:?}");
        assert!(c.data_bytes > p.data_bytes);
        let listing = debugfs(
            &child,
            &["ls -l r0-pkg0".into(), "ls r1-pkg1".into()],
            false,
        )
        .unwrap();
        assert!(listing.contains("f39"), "{listing}");
        assert!(listing.contains("f19"), "{listing}");
        assert!(
            !listing.contains(".tmp"),
            "scratch files were deleted: {listing}"
        );
        let (a, b) = (
            std::fs::read(&parent).unwrap(),
            std::fs::read(&child).unwrap(),
        );
        let same = a
            .chunks(BLOCK as usize)
            .zip(b.chunks(BLOCK as usize))
            .filter(|(x, y)| x == y && x.iter().any(|&v| v != 0))
            .count() as u64;
        assert!(
            same * BLOCK > p.data_bytes / 2,
            "child shares too little of its parent"
        );
    }
}
