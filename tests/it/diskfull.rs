//! The registry on a file system that fills up or turns read-only midway:
//! a clear one-line error, exit 7, and the registry exactly as it was with
//! nothing left in staging. Needs root (to mount a 16 MiB tmpfs); skipped
//! with a message otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::crash::{Rng, State, assert_clean, fixture, state};
use crate::util::*;

/// A tmpfs mounted for the test's lifetime, unmounted on drop.
pub(crate) struct Mount(pub(crate) PathBuf);

impl Mount {
    pub(crate) fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            eprintln!("skipping: mounting a small tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs at {}", dir.display());
            return None;
        }
        Some(Mount(dir.to_path_buf()))
    }

    pub(crate) fn remount(&self, dir: &Path, opts: &str) {
        let status = Command::new("mount")
            .args(["-o", opts])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount -o {opts} {}", dir.display());
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// An archive with 24 MiB of incompressible upper data.
fn big_archive(src: &Reg) -> PathBuf {
    let cache = src.path("big-cache");
    let image = make_image_cache(&cache, "python:3.12", 7, &[32768, 16384]);
    let mut rng = Rng::new(24);
    let data: Vec<u8> = (0..24 << 20).map(|_| rng.next() as u8).collect();
    let mut spec = SnapSpec::new(&image).label("size", "big");
    spec.len = 32 << 20;
    spec.data = vec![(4096, data)];
    let dir = src.path("big");
    make_snapshot(&dir, &spec);
    src.run(&[
        "add",
        dir.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .ok();
    let out = src.path("big.tar.zst");
    src.run(&["export", "big", "--with-image", "-o", out.to_str().unwrap()])
        .ok();
    out
}

#[track_caller]
fn assert_unchanged(reg: &Reg, before: &State) {
    assert_eq!(&state(reg), before, "the registry changed");
    assert_clean(reg);
}

#[test]
fn a_full_disk_fails_cleanly_and_changes_nothing() {
    let f = fixture();
    let reg = Reg::new();
    let Some(mount) = Mount::tmpfs(&reg.root(), "16m") else {
        return;
    };
    reg.run(&["import", f.main.to_str().unwrap(), "--name", "app"])
        .ok();
    let before = state(&reg);
    let src = Reg::new();
    let big = big_archive(&src);

    let run = reg
        .run(&["import", big.to_str().unwrap()])
        .fails(7, "No space left on device");
    assert!(
        run.stderr
            .contains(reg.root().join("staging").to_str().unwrap()),
        "the error names the file: {}",
        run.stderr
    );
    assert_unchanged(&reg, &before);
    reg.run(&["verify", "--content"]).ok();

    mount.remount(&reg.root(), "remount,ro");
    reg.run(&["import", big.to_str().unwrap()])
        .fails(7, "Read-only file system");
    reg.run(&["gc"]).fails(7, "Read-only file system");
    mount.remount(&reg.root(), "remount,rw");
    assert_unchanged(&reg, &before);
}

/// `cache/` refuses the renames (a read-only bind mount: EXDEV for renames
/// into it) after the snapshot directories were renamed: promotion undoes
/// them and the import fails, changing nothing.
#[test]
fn a_promotion_refused_midway_is_undone() {
    let f = fixture();
    let reg = Reg::new();
    let Some(_mount) = Mount::tmpfs(&reg.root(), "64m") else {
        return;
    };
    reg.run(&["gc"]).ok();
    let before = state(&reg);
    let cache = reg.root().join("cache/layers");
    let bind = Command::new("mount")
        .arg("--bind")
        .arg(&cache)
        .arg(&cache)
        .status()
        .unwrap();
    assert!(bind.success());
    let _bind = Mount(cache.clone());
    _bind.remount(&cache, "remount,ro,bind");
    let run = reg.run(&["import", f.main.to_str().unwrap()]);
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(
        run.stderr.contains("rename") && run.stderr.contains("staging/"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
    assert_unchanged(&reg, &before);
}
