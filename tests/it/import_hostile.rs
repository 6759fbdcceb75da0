//! `import` through the real binary, hostile input: one test per hostile
//! class, refused with the right exit code and a one-line message, the
//! registry and staging unchanged.

use std::path::{Path, PathBuf};

use msb_registry::model::digest::Digest;
use msb_registry::model::image::{CacheFile, CacheKind};

use crate::archives::*;
use crate::tarcraft::{Flavour, Tar, header, zstd};
use crate::util::*;

/// A registry that already holds one imported snapshot, so "unchanged" means something.
fn populated() -> Reg {
    let reg = Reg::new();
    let src = source(&reg, "base", 1, 3);
    let path = write(&reg, "base.tar", &full_archive(&src, false).finish());
    reg.run(&["import", &path]).ok();
    reg
}

/// Import `bytes` and assert it is refused with `code` and `text`, leaving
/// the registry and staging exactly as they were.
#[track_caller]
fn refused(reg: &Reg, bytes: &[u8], code: i32, text: &str) {
    let before = (reg.tree(), reg.dump());
    let path = write(reg, "hostile.tar", bytes);
    reg.run(&["import", &path]).fails(code, text);
    assert_eq!((reg.tree(), reg.dump()), before, "registry changed");
    assert_eq!(
        staging_entries(reg),
        Vec::<String>::new(),
        "staging left behind"
    );
    let live: Vec<serde_json::Value> = reg.json(&[
        "sql",
        "SELECT id FROM imports WHERE state NOT IN ('done', 'failed')",
    ]);
    assert!(live.is_empty(), "an import was left open: {live:?}");
}

fn one_snapshot(reg: &Reg, tag: &str) -> (Digest, PathBuf, Source) {
    let src = source(reg, tag, 1, 21);
    let (d, dir) = src.snaps[0].clone();
    (d, dir, src)
}

fn manifest_of(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("manifest.json")).unwrap()
}

fn upper_of(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("upper.ext4")).unwrap()
}

#[test]
fn refuses_absolute_paths() {
    let reg = populated();
    let mut t = Tar::new();
    t.file("/etc/passwd", b"x");
    refused(
        &reg,
        &t.finish(),
        6,
        "/etc/passwd: absolute paths are not allowed",
    );
}

#[test]
fn refuses_dotdot_in_plain_paths_pax_records_and_gnu_long_names() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let prefix = d.archive_prefix();
    let mut t = Tar::new();
    t.file(&format!("{prefix}/../evil"), b"x");
    refused(&reg, &t.finish(), 6, "'..' components are not allowed");

    let mut t = Tar::new();
    t.pax(&[("path", b"../x")]);
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    refused(
        &reg,
        &t.finish(),
        6,
        "../x: '..' components are not allowed",
    );

    let long = format!("{prefix}/{}/../../../../etc/cron.d/x", "a".repeat(120));
    let mut t = Tar::new();
    t.entry(b'0', long.as_bytes(), b"x", b"");
    refused(&reg, &t.finish(), 6, "'..' components are not allowed");
}

#[test]
fn refuses_non_utf8_names() {
    let reg = populated();
    let mut t = Tar::new();
    t.entry(b'0', b"sha256-0123456789abcdef/\xff\xfe", b"x", b"");
    refused(&reg, &t.finish(), 6, "path is not UTF-8");
}

#[test]
fn refuses_links_devices_fifos_and_unknown_types() {
    let reg = populated();
    for (flag, text) in [
        (b'2', "symbolic links are not allowed"),
        (b'1', "hard links are not allowed"),
        (b'3', "character devices are not allowed"),
        (b'4', "block devices are not allowed"),
        (b'6', "FIFOs are not allowed"),
        (b'7', "entry type '7' is not allowed"),
        (b'Z', "entry type 'Z' is not allowed"),
    ] {
        let mut t = Tar::new();
        t.entry(
            flag,
            b"sha256-0123456789abcdef/upper.ext4",
            b"",
            b"/etc/shadow",
        );
        refused(&reg, &t.finish(), 6, text);
    }
}

#[test]
fn refuses_pax_global_headers() {
    let reg = populated();
    let mut t = Tar::new();
    t.global_pax(&[("path", b"sha256-0123456789abcdef/manifest.json")]);
    refused(&reg, &t.finish(), 6, "pax global headers are not allowed");
}

#[test]
fn refuses_paths_outside_the_grammar() {
    let reg = populated();
    for (path, text) in [
        ("upper.ext4", "files at the top level are not allowed"),
        ("sha256-0123456789abcdef/a/b", "nesting is not allowed"),
        ("etc/passwd", "members live under"),
        ("SHA256-0123456789abcdef/x", "members live under"),
    ] {
        let mut t = Tar::new();
        t.file(path, b"x");
        refused(&reg, &t.finish(), 6, text);
    }
    let mut t = Tar::new();
    t.dir("sha256-0123456789abcdef/sub/");
    refused(
        &reg,
        &t.finish(),
        6,
        "directories are allowed only at depth 1",
    );
}

#[test]
fn refuses_cache_members_of_unknown_kind_or_wrong_extension() {
    let reg = populated();
    let hex = Digest::of(b"x").hex();
    for (path, text) in [
        (
            format!("cache/blobs/sha256_{hex}.erofs"),
            "unknown cache kind \"blobs\"",
        ),
        (
            format!("cache/layers/sha256_{hex}.vmdk"),
            "is not valid in cache/layers/",
        ),
        (
            format!("cache/vmdk/sha256_{hex}.erofs"),
            "is not valid in cache/vmdk/",
        ),
        (
            format!("cache/manifests/{hex}.txt"),
            "is not valid in cache/manifests/",
        ),
    ] {
        let mut t = Tar::new();
        t.file(&path, b"x");
        refused(&reg, &t.finish(), 6, text);
    }
}

#[test]
fn refuses_duplicate_members() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    t.file(
        &format!("./{}/upper.ext4", d.archive_prefix()),
        &upper_of(&dir),
    );
    refused(&reg, &t.finish(), 6, "duplicate member");
}

#[test]
fn refuses_bad_header_checksums() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let mut bytes = t.finish();
    bytes[10] ^= 0x20;
    refused(&reg, &bytes, 6, "checksum mismatch");
}

/// Found by the `archive` fuzz target: a member name starting with a
/// newline came back verbatim in the tar reader's message, so the error
/// took two lines and an archive could forge stderr output.
#[test]
fn regression_fuzz_control_characters_in_names_stay_on_one_line() {
    let reg = populated();
    let prefix = "sha256-0123456789abcdef";
    let mut h = header(
        Flavour::Gnu,
        b'0',
        format!("\n{prefix}/manifest.json").as_bytes(),
        2,
        b"",
    );
    h[148..156].copy_from_slice(b"\x01\x1b[2J\r\n ");
    let mut bytes = h.to_vec();
    bytes.extend_from_slice(b"{}");
    bytes.resize(2 * 512, 0);
    bytes.extend([0u8; 1024]);
    refused(
        &reg,
        &bytes,
        6,
        "corrupt tar stream: checksum field is not an octal or base-256 number",
    );

    let mut t = Tar::new();
    t.file(&format!("{prefix}/up\nper\x1b[2J"), b"x");
    refused(&reg, &t.finish(), 6, "up\\nper\\u{1b}[2J");
    reg.run(&["verify", "--content"]).ok();
}

#[test]
fn refuses_extension_headers_that_desynchronise_entries() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let prefix = d.archive_prefix();
    // A pax size record that lies: the file's data is then read as headers.
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    t.pax(&[("size", b"512")]);
    let vmdk = CacheFile {
        kind: CacheKind::Vmdk,
        key: d,
    };
    t.file(&format!("cache/{}", vmdk.rel_path()), &[b'x'; 2048]);
    refused(
        &reg,
        &t.finish(),
        6,
        "corrupt tar stream: checksum field is not an octal or base-256 number after member cache/vmdk/",
    );

    // A GNU long name that is never followed by a member.
    let mut t = Tar::new();
    t.long_name(format!("{prefix}/manifest.json").as_bytes());
    refused(&reg, &t.finish(), 6, "corrupt tar stream");

    // Two pax headers for one member.
    let mut t = Tar::new();
    t.pax(&[("path", format!("{prefix}/manifest.json").as_bytes())]);
    t.pax(&[("path", b"x")]);
    t.file("y", b"");
    refused(&reg, &t.finish(), 6, "corrupt tar stream");

    // An oversized GNU long name: refused before it is buffered.
    let mut t = Tar::new();
    t.long_name(&vec![b'a'; 3 << 20]);
    t.file("x", b"");
    refused(&reg, &t.finish(), 6, "exceed");

    // pax GNU.sparse records (formats 0.x/1.0) are not part of the format.
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    t.pax(&[
        ("GNU.sparse.size", b"8388608"),
        ("GNU.sparse.map", b"0,4096"),
    ]);
    t.file(&format!("{prefix}/upper.ext4"), &[1u8; 4096]);
    refused(
        &reg,
        &t.finish(),
        6,
        "pax GNU.sparse records are not supported",
    );
}

#[test]
fn refuses_truncated_streams_and_random_bytes() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let whole = t.finish();

    refused(&reg, &whole[..whole.len() / 2], 6, "truncated");
    refused(&reg, &t.bytes, 6, "no end-of-archive marker");
    refused(&reg, &whole[..700], 6, "truncated");
    refused(&reg, b"", 6, "it is empty");

    let mut noise = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.push(x as u8);
    }
    refused(&reg, &noise, 6, "corrupt tar stream");
}

#[test]
fn refuses_corrupt_and_truncated_zstd() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let z = zstd(&t.finish());
    refused(&reg, &z[..z.len() / 2], 6, "zstd stream");
    let mut bad = z.clone();
    for i in (20..bad.len() - 20).step_by(97) {
        bad[i] ^= 0x5a;
    }
    refused(&reg, &bad, 6, "rejected archive");
    let mut garbage = crate::tarcraft::zstd(b"").to_vec();
    garbage.truncate(4);
    garbage.extend([0xffu8; 64]);
    refused(&reg, &garbage, 6, "zstd stream");
}

#[test]
fn refuses_a_zstd_window_over_the_limit_naming_the_limit() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    // A 128 MiB window, as `zstd --long=27` reading a pipe declares.
    let long = crate::tarcraft::zstd_with(
        &t.finish(),
        &[async_compression::zstd::CParameter::window_log(27)],
    );
    refused(
        &reg,
        &long,
        6,
        "/hostile.tar: zstd frame needs a window larger than 32 MiB (compressed with --long?)",
    );
}

#[test]
fn refuses_an_archive_without_a_manifest() {
    let reg = populated();
    let src = source(&reg, "h", 1, 21);
    let mut t = Tar::new();
    add_cache(&mut t, &src.cache, &image_files(&src.image));
    refused(&reg, &t.finish(), 6, "no snapshot manifest found");
    refused(&reg, &Tar::new().finish(), 6, "no snapshot manifest found");
}

#[test]
fn refuses_files_before_their_manifest() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let prefix = d.archive_prefix();
    let mut t = Tar::new();
    t.file(&format!("{prefix}/upper.ext4"), &upper_of(&dir));
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    refused(
        &reg,
        &t.finish(),
        6,
        "the manifest must be the first member",
    );
}

/// The manifest of `dir` with `edit` applied, under the prefix of its new digest.
fn edited_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> (String, Vec<u8>) {
    let mut v: serde_json::Value = serde_json::from_slice(&manifest_of(dir)).unwrap();
    edit(&mut v);
    let bytes = serde_json::to_vec(&v).unwrap();
    (format!("sha256-{}", &Digest::of(&bytes).hex()[..16]), bytes)
}

#[test]
fn refuses_manifests_that_break_the_schema() {
    let reg = populated();
    let (_, dir, _) = one_snapshot(&reg, "h");
    for (edit, text) in [
        (
            Box::new(|v: &mut serde_json::Value| v["extra"] = 1.into())
                as Box<dyn Fn(&mut serde_json::Value)>,
            "unknown field `extra`",
        ),
        (
            Box::new(|v: &mut serde_json::Value| {
                v.as_object_mut().unwrap().remove("parent");
            }),
            "missing field `parent`",
        ),
        (Box::new(|v| v["schema"] = 2.into()), "unsupported schema 2"),
        (
            Box::new(|v| v["image"]["manifest_digest"] = "sha256:abc".into()),
            "malformed digest",
        ),
        (
            Box::new(|v| v["upper"]["file"] = "../upper.ext4".into()),
            "is not a single normal file name",
        ),
    ] {
        let (prefix, bytes) = edited_manifest(&dir, edit);
        let mut t = Tar::new();
        t.file(&format!("{prefix}/manifest.json"), &bytes);
        t.file(&format!("{prefix}/upper.ext4"), &upper_of(&dir));
        refused(&reg, &t.finish(), 5, text);
    }
    let mut t = Tar::new();
    t.file("sha256-0123456789abcdef/manifest.json", b"{");
    let run = {
        let path = write(&reg, "eof.tar", &t.finish());
        reg.run(&["import", &path]).fails(5, "EOF while parsing")
    };
    assert_eq!(
        run.stderr.matches("EOF while parsing").count(),
        1,
        "cause printed once"
    );
    let mut t = Tar::new();
    t.file(
        "sha256-0123456789abcdef/manifest.json",
        &vec![b' '; (1 << 20) + 1],
    );
    refused(&reg, &t.finish(), 6, "the limit is 1 MiB");
}

#[test]
fn refuses_oversized_metadata_before_buffering_it() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let meta = CacheFile::metadata_for_ref("python:3.12");
    let h = header(
        Flavour::Gnu,
        b'0',
        format!("cache/{}", meta.rel_path()).as_bytes(),
        (16 << 20) + 1,
        b"",
    );
    // The header alone: the size is refused before any data is read.
    t.raw(h, &[]);
    refused(&reg, &t.bytes, 6, "the limit is 16 MiB");
}

#[test]
fn refuses_a_manifest_under_the_wrong_prefix() {
    let reg = populated();
    let (_, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    t.file("sha256-0123456789abcdef/manifest.json", &manifest_of(&dir));
    refused(&reg, &t.finish(), 5, "so its directory must be sha256-");
}

#[test]
fn refuses_upper_size_and_integrity_mismatches() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let prefix = d.archive_prefix();
    let upper = upper_of(&dir);

    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    t.file(&format!("{prefix}/upper.ext4"), &upper[..upper.len() / 2]);
    refused(
        &reg,
        &t.finish(),
        5,
        "size is 4194304 bytes, manifest records 8388608",
    );

    let mut flipped = upper.clone();
    flipped[5] ^= 1;
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &manifest_of(&dir));
    t.file(&format!("{prefix}/upper.ext4"), &flipped);
    refused(&reg, &t.finish(), 5, "msb-sparse-sha256-v1 integrity is");

    let (prefix, bytes) = edited_manifest(&dir, |v| {
        v["upper"]["integrity"]["algorithm"] = "md5".into();
    });
    let mut t = Tar::new();
    t.file(&format!("{prefix}/manifest.json"), &bytes);
    t.file(&format!("{prefix}/upper.ext4"), &upper);
    refused(
        &reg,
        &t.finish(),
        5,
        "unsupported integrity algorithm \"md5\"",
    );
}

#[test]
fn refuses_a_missing_upper() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    t.file(
        &format!("{}/manifest.json", d.archive_prefix()),
        &manifest_of(&dir),
    );
    refused(
        &reg,
        &t.finish(),
        5,
        "upper file named by the manifest is missing",
    );
}

#[test]
fn refuses_metadata_whose_digests_do_not_match() {
    let reg = populated();
    let (d, dir, src) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let meta_file = CacheFile::metadata_for_ref("python:3.12");
    let mut meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.cache.join(meta_file.rel_path())).unwrap())
            .unwrap();
    meta["raw_config_json"] = "{}".into();
    t.file(
        &format!("cache/{}", meta_file.rel_path()),
        &serde_json::to_vec(&meta).unwrap(),
    );
    add_cache(&mut t, &src.cache, &src.image.artifact_files());
    refused(&reg, &t.finish(), 5, "raw_config_json hashes to");
}

#[test]
fn refuses_metadata_pinning_another_image() {
    let reg = populated();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let other_cache = reg.path("other-cache");
    let other = make_image_cache(&other_cache, "python:3.12", 99, &[8192]);
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &other_cache, &image_files(&other));
    refused(&reg, &t.finish(), 5, "metadata describes image");
}

#[test]
fn refuses_missing_and_extra_cache_files() {
    let reg = populated();
    let (d, dir, src) = one_snapshot(&reg, "h");
    let files = image_files(&src.image);

    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &src.cache, &files[..files.len() - 1]);
    refused(&reg, &t.finish(), 5, "missing from the archive");

    let extra = CacheFile {
        kind: CacheKind::Layers,
        key: Digest::of(b"stray"),
    };
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &src.cache, &files);
    t.file(&format!("cache/{}", extra.rel_path()), &[7u8; 4096]);
    refused(&reg, &t.finish(), 5, "not needed by any image metadata");

    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &src.cache, &files[1..]);
    refused(&reg, &t.finish(), 5, "not needed by any image metadata");
}

#[test]
fn refuses_misaligned_erofs() {
    let reg = populated();
    let cache = reg.path("odd-cache");
    let image = make_image_cache(&cache, "python:3.12", 23, &[5000]);
    let spec = SnapSpec::new(&image);
    let dir = reg.path("odd/s");
    let d = make_snapshot(&dir, &spec);
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &cache, &image_files(&image));
    refused(
        &reg,
        &t.finish(),
        5,
        "EROFS image of 5000 bytes is not a non-empty multiple of 4096",
    );
}

#[test]
fn refuses_a_cache_file_that_would_replace_an_installed_one() {
    let reg = Reg::new();
    let src = source(&reg, "a", 1, 29);
    let path = write(&reg, "a.tar", &full_archive(&src, false).finish());
    reg.run(&["import", &path]).ok();

    let mut spec = SnapSpec::new(&src.image).label("other", "yes");
    spec.integrity = None;
    let dir = reg.path("b/s");
    let d = make_snapshot(&dir, &spec);
    let vmdk = CacheFile {
        kind: CacheKind::Vmdk,
        key: src.image.manifest_digest,
    };
    std::fs::write(
        src.cache.join(vmdk.rel_path()),
        b"# Disk DescriptorFile tampered\n",
    )
    .unwrap();
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    add_cache(&mut t, &src.cache, &image_files(&src.image));
    refused(&reg, &t.finish(), 4, "conflict: cache/vmdk/");
}

#[test]
fn refuses_a_head_name_already_taken() {
    let reg = populated();
    let taken = list(&reg)[0].name.clone();
    let (d, dir, _) = one_snapshot(&reg, "h");
    let mut t = Tar::new();
    add_snapshot(&mut t, &d, &dir, false);
    let before = (reg.tree(), reg.dump());
    let path = write(&reg, "n.tar", &t.finish());
    reg.run(&["import", &path, "--name", &taken])
        .fails(4, "conflict: snapshot name");
    assert_eq!((reg.tree(), reg.dump()), before);
    assert!(staging_entries(&reg).is_empty());
}

#[test]
fn refuses_children_before_parents() {
    let reg = populated();
    let src = source(&reg, "o", 2, 31);
    let mut t = Tar::new();
    for (d, dir) in src.snaps.iter().rev() {
        add_snapshot(&mut t, d, dir, false);
    }
    refused(&reg, &t.finish(), 6, "parents must come first");
}

#[test]
fn refuses_a_directory_entry_with_data() {
    let reg = populated();
    let mut t = Tar::new();
    let h = header(Flavour::Gnu, b'5', b"cache/", 512, b"");
    t.raw(h, &[0u8; 512]);
    refused(&reg, &t.finish(), 6, "a directory entry may not carry data");
}
