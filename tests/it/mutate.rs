//! Mutation testing of `import` through the real binary. Real exports of a
//! two-snapshot chain with its image cache (plain tar and zstd, sparse and
//! dense) are mutated at random — byte flips, truncation, duplicated and
//! removed ranges, tar header fields rewritten with or without a fresh
//! checksum, zstd bytes damaged after compression — and imported into a
//! fresh registry or one that already holds the chain's root. Every outcome
//! must be one of two:
//!
//! - exit 0, and the registry then passes `verify --content`, holds every
//!   snapshot the report names (new ones exactly the imported ones), and has
//!   no staging left;
//! - a refusal (exit 4, 5 or 6) with a one-line error, the file tree and
//!   the index exactly as before, and no staging left.
//!
//! Never a panic, a signal, another exit code, or a partial import.
//!
//! The run is deterministic: a fixed seed and 64 cases by default.
//! `MSB_PROPTEST_CASES` asks for more cases, `MSB_PROPTEST_SEED` for another
//! seed; failures are recorded in `tests/it/mutate.proptest-regressions`
//! and replayed first on every later run.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::Path;

use msb_registry::model::digest::Digest;
use msb_registry::model::image::CacheFile;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError, TestRunner};

use crate::reports::{ImportReport, ListEntry, VerifyReport};
use crate::tarcraft::{Tar, seal, zstd};
use crate::util::*;

const BLOCK: usize = 512;

/// One export of the chain.
struct Variant {
    label: &'static str,
    /// The archive as export wrote it.
    file: Vec<u8>,
    /// Its tar stream (the same bytes as `file` for a plain tar).
    tar: Vec<u8>,
    compressed: bool,
    /// Offsets of the tar headers (extension blocks included).
    headers: Vec<usize>,
}

/// The archives to mutate and the registry to import some of them into.
struct Fixture {
    /// Holds the source registry and the exported files.
    _scratch: Reg,
    variants: Vec<Variant>,
    /// A registry that already holds the chain's root snapshot and image.
    populated: Reg,
}

/// Logical size of each upper: small, yet with holes and six data extents,
/// so sparse exports need a GNU sparse extension block.
const UPPER_LEN: u64 = 64 * 1024;

/// Build a two-snapshot chain with a small image, export it four ways
/// with the real binary, and import its root into a second registry.
fn fixture() -> Fixture {
    let scratch = Reg::new();
    let cache = scratch.path("src-cache");
    let image = make_image_cache(&cache, "python:3.12", 9, &[8192, 4096]);
    let mut parent = None;
    for (i, name) in ["base", "app"].into_iter().enumerate() {
        let mut spec = SnapSpec::new(&image).label("stage", name);
        spec.len = UPPER_LEN;
        spec.data = vec![(0, b"ext4 superblock".to_vec())];
        spec.data.extend((1..6u64).map(|k| {
            let at = k * 2 * 4096 + i as u64 * 512;
            (at, vec![0x5a ^ (k as u8 + i as u8); 1000])
        }));
        spec.created_at = format!("2026-10-01T09:0{i}:00Z");
        if i == 1 {
            spec.integrity = Some("sha256");
        }
        if let Some(p) = parent {
            spec = spec.parent(p);
        }
        let dir = scratch.path(&format!("src/{name}"));
        parent = Some(make_snapshot(&dir, &spec));
        let mut args = vec!["add", dir.to_str().unwrap(), "--name", name];
        let cache_arg = cache.to_str().unwrap().to_string();
        if i == 0 {
            args.extend(["--cache-dir", &cache_arg]);
        }
        scratch.run(&args).ok();
    }

    let mut variants = Vec::new();
    for (label, flags, compressed) in [
        ("tar-sparse", &["--plain-tar"][..], false),
        ("tar-dense", &["--plain-tar", "--dense"][..], false),
        ("zst-sparse", &[][..], true),
        ("zst-dense", &["--dense"][..], true),
    ] {
        let path = scratch.path(&format!("{label}.archive"));
        let mut args = vec![
            "export",
            "app",
            "--with-parents",
            "--with-image",
            "-o",
            path.to_str().unwrap(),
        ];
        args.extend(flags);
        scratch.run(&args).ok();
        let bytes = std::fs::read(&path).unwrap();
        let tar = if compressed {
            let plain = scratch.path(&format!("{label}.tar"));
            let mut args = args.clone();
            args[5] = plain.to_str().unwrap();
            args.push("--plain-tar");
            scratch.run(&args).ok();
            assert!(zstd_magic(&bytes), "{label} is zstd");
            std::fs::read(&plain).unwrap()
        } else {
            bytes.clone()
        };
        let headers = header_offsets(&tar);
        assert!(headers.len() >= 7, "{label}: {} headers", headers.len());
        variants.push(Variant {
            label,
            file: bytes,
            tar,
            compressed,
            headers,
        });
    }

    let populated = Reg::new();
    let root_only = scratch.path("base.tar.zst");
    scratch
        .run(&[
            "export",
            "base",
            "--with-image",
            "-o",
            root_only.to_str().unwrap(),
        ])
        .ok();
    populated.run(&["import", root_only.to_str().unwrap()]).ok();
    Fixture {
        _scratch: scratch,
        variants,
        populated,
    }
}

fn zstd_magic(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

fn octal_field(field: &[u8]) -> u64 {
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    u64::from_str_radix(text.trim(), 8).unwrap_or(0)
}

/// Walk a well-formed tar and return the offset of every header block,
/// GNU sparse extension blocks included.
fn header_offsets(tar: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + BLOCK <= tar.len() && tar[at..at + BLOCK].iter().any(|&b| b != 0) {
        let h = &tar[at..at + BLOCK];
        out.push(at);
        let size = octal_field(&h[124..136]) as usize;
        let mut extended = h[156] == b'S' && h[482] == 1;
        at += BLOCK;
        while extended {
            out.push(at);
            extended = tar[at + 504] == 1;
            at += BLOCK;
        }
        at += size.div_ceil(BLOCK) * BLOCK;
    }
    out
}

/// A header field: its byte range.
#[derive(Debug, Clone, Copy)]
enum Field {
    Name,
    Mode,
    Uid,
    Gid,
    Size,
    Mtime,
    Checksum,
    Typeflag,
    LinkName,
    Magic,
    DevMajor,
    SparseMap,
    IsExtended,
    RealSize,
}

impl Field {
    fn range(self) -> std::ops::Range<usize> {
        match self {
            Field::Name => 0..100,
            Field::Mode => 100..108,
            Field::Uid => 108..116,
            Field::Gid => 116..124,
            Field::Size => 124..136,
            Field::Mtime => 136..148,
            Field::Checksum => 148..156,
            Field::Typeflag => 156..157,
            Field::LinkName => 157..257,
            Field::Magic => 257..265,
            Field::DevMajor => 329..337,
            Field::SparseMap => 386..482,
            Field::IsExtended => 482..483,
            Field::RealSize => 483..495,
        }
    }
}

/// What to write into a field.
#[derive(Debug, Clone)]
enum Value {
    /// A number in octal, as wide as the field allows (reduced to fit).
    Octal(u64),
    /// A number in GNU base-256 (high bit of the first byte set).
    Base256(u64),
    /// Bytes at an offset inside the field.
    Bytes(Index, Vec<u8>),
    /// Text that means something to the grammar, at the field's start.
    Text(&'static str),
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR one byte (of the tar, or of the compressed file).
    Flip {
        at: Index,
        mask: u8,
        compressed: bool,
    },
    /// Cut the file short.
    Truncate { at: Index, compressed: bool },
    /// Copy a range and insert the copy elsewhere.
    Duplicate {
        from: Index,
        len: usize,
        to: Index,
        compressed: bool,
    },
    /// Remove a range.
    Remove {
        from: Index,
        len: usize,
        compressed: bool,
    },
    /// Rewrite a field of one tar header, resealing the checksum or not.
    Header {
        header: Index,
        field: Field,
        value: Value,
        reseal: bool,
    },
    /// Remove whole blocks (a member's header or data).
    DropBlocks { at: Index, blocks: usize },
}

#[derive(Debug, Clone)]
struct Case {
    variant: Index,
    into_populated: bool,
    mutations: Vec<Mutation>,
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        Just(Field::Name),
        Just(Field::Mode),
        Just(Field::Uid),
        Just(Field::Gid),
        Just(Field::Size),
        Just(Field::Mtime),
        Just(Field::Checksum),
        Just(Field::Typeflag),
        Just(Field::LinkName),
        Just(Field::Magic),
        Just(Field::DevMajor),
        Just(Field::SparseMap),
        Just(Field::IsExtended),
        Just(Field::RealSize),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop_oneof![0u64..4096, 0u64..(1 << 24), any::<u64>()].prop_map(Value::Octal),
        prop_oneof![0u64..(1 << 24), any::<u64>()].prop_map(Value::Base256),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Value::Bytes(i, b)),
        prop::sample::select(vec![
            "0",
            "1",
            "2",
            "3",
            "4",
            "5",
            "6",
            "7",
            "g",
            "x",
            "K",
            "L",
            "S",
            "V",
            "D",
            "M",
            "\0",
            "../",
            "/",
            "./",
            "cache/",
            "cache/layers/",
            "cache/manifests/x.json",
            "sha256-0000000000000000/",
            "sha256-0000000000000000/upper.ext4",
            "1\0",
            "ustar\x0000",
            "ustar  \0",
            // Numbers encoded as GNU tar reads them and bsdtar may not (issue 23).
            "   644 ",
            "\t644",
            "0644 zz",
            "\x000644",
            "       ",
        ])
        .prop_map(Value::Text),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8.., any::<bool>())
            .prop_map(|(at, mask, compressed)| Mutation::Flip { at, mask, compressed }),
        1 => (any::<Index>(), any::<bool>())
            .prop_map(|(at, compressed)| Mutation::Truncate { at, compressed }),
        1 => (any::<Index>(), 1usize..4096, any::<Index>(), any::<bool>()).prop_map(
            |(from, len, to, compressed)| Mutation::Duplicate { from, len, to, compressed }
        ),
        1 => (any::<Index>(), 1usize..4096, any::<bool>())
            .prop_map(|(from, len, compressed)| Mutation::Remove { from, len, compressed }),
        5 => (any::<Index>(), field(), value(), prop::bool::weighted(0.8)).prop_map(
            |(header, field, value, reseal)| Mutation::Header { header, field, value, reseal }
        ),
        1 => (any::<Index>(), 1usize..4)
            .prop_map(|(at, blocks)| Mutation::DropBlocks { at, blocks }),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<Index>(),
        any::<bool>(),
        prop::collection::vec(mutation(), 1..4),
    )
        .prop_map(|(variant, into_populated, mutations)| Case {
            variant,
            into_populated,
            mutations,
        })
}

fn write_number(field: &mut [u8], value: u64, base256: bool) {
    if base256 {
        field.fill(0);
        let n = field.len();
        let bytes = value.to_be_bytes();
        let take = bytes.len().min(n - 1);
        field[n - take..].copy_from_slice(&bytes[8 - take..]);
        field[0] |= 0x80;
    } else {
        let digits = field.len().saturating_sub(1).max(1);
        let fit = if digits >= 22 {
            value
        } else {
            value % (1u64 << (3 * digits as u32))
        };
        let text = format!("{fit:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        if digits < field.len() {
            field[digits] = 0;
        }
    }
}

/// Apply the tar-level mutations, compress when the variant is zstd (the
/// exported file itself when the tar is untouched), then apply the
/// mutations aimed at the compressed bytes.
fn mutated(variant: &Variant, mutations: &[Mutation]) -> Vec<u8> {
    let mut tar = variant.tar.clone();
    let on_tar = |m: &Mutation| !(variant.compressed && m.compressed());
    for m in mutations.iter().filter(|m| on_tar(m)) {
        match m {
            Mutation::Header {
                header,
                field,
                value,
                reseal,
            } => {
                let at = variant.headers[header.index(variant.headers.len())];
                if at + BLOCK > tar.len() {
                    continue;
                }
                let block: &mut [u8; BLOCK] = (&mut tar[at..at + BLOCK]).try_into().unwrap();
                let range = field.range();
                let f = &mut block[range.clone()];
                match value {
                    Value::Octal(v) => write_number(f, *v, false),
                    Value::Base256(v) => write_number(f, *v, true),
                    Value::Bytes(i, b) => {
                        let start = i.index(f.len());
                        let n = b.len().min(f.len() - start);
                        f[start..start + n].copy_from_slice(&b[..n]);
                    }
                    Value::Text(t) => {
                        let n = t.len().min(f.len());
                        f[..n].copy_from_slice(&t.as_bytes()[..n]);
                        if n < f.len() {
                            f[n] = 0;
                        }
                    }
                }
                if *reseal {
                    seal(block);
                }
            }
            Mutation::DropBlocks { at, blocks } => {
                let nblocks = tar.len() / BLOCK;
                let start = at.index(nblocks) * BLOCK;
                let end = (start + blocks * BLOCK).min(tar.len());
                tar.drain(start..end);
            }
            m => apply_bytes(&mut tar, m),
        }
    }
    if !variant.compressed {
        return tar;
    }
    let mut bytes = if mutations.iter().any(on_tar) {
        zstd(&tar)
    } else {
        variant.file.clone()
    };
    for m in mutations.iter().filter(|m| m.compressed()) {
        apply_bytes(&mut bytes, m);
    }
    bytes
}

impl Mutation {
    fn compressed(&self) -> bool {
        match self {
            Mutation::Flip { compressed, .. }
            | Mutation::Truncate { compressed, .. }
            | Mutation::Duplicate { compressed, .. }
            | Mutation::Remove { compressed, .. } => *compressed,
            Mutation::Header { .. } | Mutation::DropBlocks { .. } => false,
        }
    }
}

fn apply_bytes(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    let n = bytes.len();
    match m {
        Mutation::Flip { at, mask, .. } => bytes[at.index(n)] ^= mask,
        Mutation::Truncate { at, .. } => bytes.truncate(at.index(n)),
        Mutation::Duplicate { from, len, to, .. } => {
            let start = from.index(n);
            let copy = bytes[start..(start + len).min(n)].to_vec();
            let to = to.index(n + 1);
            bytes.splice(to..to, copy);
        }
        Mutation::Remove { from, len, .. } => {
            let start = from.index(n);
            bytes.drain(start..(start + len).min(n));
        }
        Mutation::Header { .. } | Mutation::DropBlocks { .. } => {}
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn staging(reg: &Reg) -> Vec<String> {
    std::fs::read_dir(reg.root().join("staging"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn digests(reg: &Reg) -> BTreeSet<Digest> {
    let listed: Vec<ListEntry> = reg.json(&["list"]);
    listed.into_iter().map(|e| e.digest).collect()
}

/// How many cases ended each way.
#[derive(Default)]
struct Tally {
    imported: Cell<u32>,
    refused: Cell<u32>,
}

fn check(fx: &Fixture, case: &Case, tally: &Tally) -> Result<(), TestCaseError> {
    let variant = &fx.variants[case.variant.index(fx.variants.len())];
    let bytes = mutated(variant, &case.mutations);
    let reg = Reg::new();
    if case.into_populated {
        copy_tree(&fx.populated.root(), &reg.root());
    } else {
        reg.run(&["gc"]).ok();
    }
    let archive = reg.path("mutated.archive");
    std::fs::write(&archive, &bytes).unwrap();
    let before = (reg.tree(), reg.dump());
    let known = digests(&reg);

    // --allow-shallow: a mutation that drops a parent tests the rest of import, not the base check.
    let run = reg.run(&[
        "import",
        archive.to_str().unwrap(),
        "--json",
        "--allow-shallow",
    ]);
    let context = format!(
        "{}: exit {}\nstderr: {}",
        variant.label, run.code, run.stderr
    );
    prop_assert!(staging(&reg).is_empty(), "staging left behind; {context}");
    match run.code {
        0 => {
            let report: ImportReport = run.json();
            let verify = reg.run(&["verify", "--content", "--json"]);
            prop_assert_eq!(verify.code, 0, "{}\nverify: {}", context, verify.stdout);
            let verified: VerifyReport = verify.json();
            prop_assert!(verified.ok);
            prop_assert!(verified.debris.is_empty(), "{:?}", verified.debris);
            prop_assert!(verified.unfinished_imports.is_empty());
            let now = digests(&reg);
            let new: BTreeSet<Digest> = now.difference(&known).copied().collect();
            let imported: BTreeSet<Digest> = report.imported.iter().copied().collect();
            prop_assert_eq!(new, imported, "new snapshots vs report; {}", context);
            for d in &report.skipped {
                prop_assert!(known.contains(d), "skipped {d} was not present");
            }
            prop_assert!(now.contains(&report.head));
            tally.imported.set(tally.imported.get() + 1);
        }
        4..=6 => {
            prop_assert!(run.stderr.starts_with("error: "), "{context}");
            prop_assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", context);
            prop_assert!(
                (reg.tree(), reg.dump()) == before,
                "a refused import changed the registry; {context}"
            );
            tally.refused.set(tally.refused.get() + 1);
        }
        _ => prop_assert!(false, "neither success nor refusal; {context}"),
    }
    Ok(())
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {v:?}"))
    })
}

#[test]
fn mutated_exports_import_whole_or_not_at_all() {
    let fx = fixture();
    let config = Config {
        cases: env_number("MSB_PROPTEST_CASES").unwrap_or(64) as u32,
        rng_seed: RngSeed::Fixed(env_number("MSB_PROPTEST_SEED").unwrap_or(0x6d73_6272)),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/it/mutate.proptest-regressions"
        )))),
        max_shrink_iters: 256,
        ..Config::default()
    };
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let tally = Tally::default();
    if let Err(e) = runner.run(&case(), |c| check(&fx, &c, &tally)) {
        panic!("{e}");
    }
    let (imported, refused) = (tally.imported.get(), tally.refused.get());
    eprintln!("{cases} cases: {imported} imported, {refused} refused");
    if cases >= 64 {
        assert!(
            imported > 0 && refused > 0,
            "the mutations should produce both outcomes: {imported} imported, {refused} refused"
        );
    }
}

/// Regenerate the committed fuzz seeds (`fuzz/seeds/`): the four real
/// exports of the chain, its root alone, hostile archives built by hand,
/// and the manifests and image metadata for the `manifest` target.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand when the archive format changes"]
fn write_fuzz_seeds() {
    let fx = fixture();
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let (archives, documents) = (seeds.join("archive"), seeds.join("manifest"));
    for dir in [&archives, &documents] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let put = |dir: &Path, name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).unwrap();
    for v in &fx.variants {
        let ext = if v.compressed { "tar.zst" } else { "tar" };
        put(&archives, &format!("chain-{}.{ext}", v.label), &v.file);
    }
    let scratch = &fx._scratch;
    put(
        &archives,
        "root-with-image.tar.zst",
        &std::fs::read(scratch.path("base.tar.zst")).unwrap(),
    );

    let base = scratch.path("src/base");
    let manifest = std::fs::read(base.join("manifest.json")).unwrap();
    let digest = Digest::of(&manifest);
    let prefix = digest.archive_prefix();
    let upper = std::fs::read(base.join("upper.ext4")).unwrap();
    let extents: Vec<(u64, Vec<u8>)> = upper
        .chunks(BLOCK)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, c)| ((i * BLOCK) as u64, c.to_vec()))
        .collect();
    let upper_path = format!("{prefix}/upper.ext4");
    let with_manifest = || {
        let mut t = Tar::new();
        t.file(&format!("{prefix}/manifest.json"), &manifest);
        t
    };
    let mut t = with_manifest();
    t.sparse(&upper_path, upper.len() as u64, &extents);
    put(&archives, "handmade-sparse-extended.tar", &t.finish());
    let mut bad_sum = t.finish();
    bad_sum[148] ^= 1;
    put(&archives, "hostile-bad-checksum.tar", &bad_sum);
    let mut t = with_manifest();
    t.pax(&[("path", b"../escape")]).file(&upper_path, b"x");
    put(&archives, "hostile-pax-dotdot.tar", &t.finish());
    let mut t = with_manifest();
    t.pax(&[("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")])
        .file(&upper_path, b"x");
    put(&archives, "hostile-pax-sparse.tar", &t.finish());
    let mut t = with_manifest();
    t.long_name(format!("{prefix}/{}/x", "d".repeat(120)).as_bytes())
        .file(&upper_path, b"x");
    put(&archives, "hostile-long-name.tar", &t.finish());
    let mut t = Tar::new();
    t.global_pax(&[("comment", b"x")])
        .file(&format!("{prefix}/manifest.json"), &manifest);
    put(&archives, "hostile-global-pax.tar", &t.finish());
    for (name, typeflag, link) in [
        ("symlink", b'2', &b"/etc/passwd"[..]),
        ("hardlink", b'1', &b"cache/x"[..]),
        ("fifo", b'6', &b""[..]),
    ] {
        let mut t = with_manifest();
        t.entry(typeflag, upper_path.as_bytes(), b"", link);
        put(&archives, &format!("hostile-{name}.tar"), &t.finish());
    }
    let zst = &fx
        .variants
        .iter()
        .find(|v| v.label == "zst-sparse")
        .unwrap()
        .file;
    put(
        &archives,
        "hostile-truncated.tar.zst",
        &zst[..zst.len() / 2],
    );
    put(
        &archives,
        "hostile-zstd-of-garbage.tar.zst",
        &zstd(&[0x55; 4096]),
    );

    let app = scratch.path("src/app");
    put(&documents, "manifest-base.json", &manifest);
    put(
        &documents,
        "manifest-app.json",
        &std::fs::read(app.join("manifest.json")).unwrap(),
    );
    let metadata = CacheFile::metadata_for_ref("python:3.12");
    let meta_bytes = std::fs::read(scratch.path("src-cache").join(metadata.rel_path())).unwrap();
    put(&documents, "image-metadata.json", &meta_bytes);
    put(&documents, "cache-path.txt", metadata.rel_path().as_bytes());
    put(
        &documents,
        "image-ref.txt",
        b"localhost:5000/team/python:3.12@sha256:00",
    );
}
