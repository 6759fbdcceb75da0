//! The header forms of issue 23, against the two reference readers: GNU
//! tar 1.34 (`tar -xSf`) and bsdtar (libarchive). Each form import refuses
//! is shown to need refusing (GNU tar fails or warns on it, or bsdtar reads
//! it otherwise), and is refused through the real binary with its own
//! error line and the registry untouched; the odd-but-valid forms import
//! exactly what both extract. Then a seeded fuzz loop mutates a real
//! snapshot's archive in exactly these encodings (blanks after pax
//! lengths, pax keywords and values, GNU long names and their padding,
//! sparse extents off 512, numeric fields re-encoded, base-256 checksums)
//! with GNU tar as the oracle: every case is refused, or installs what GNU
//! tar extracts without a word and what bsdtar extracts too.
//!
//! `MSB_FORMS_FUZZ_CASES` asks for more fuzz cases (CI runs the default),
//! `MSB_FORMS_FUZZ_SEED` for another seed.

use std::path::Path;

use crate::corpus::{Archive, extents_snapshot, under_prefix};
use crate::differential::{agrees_with_gnu_tar, bsdtar_view, gnu_tar_view};
use crate::tarcraft::{Tar, pax_record, seal};
use crate::util::Reg;

const BLOCK: usize = 512;

/// A snapshot to build archives of: its prefix, manifest and upper, whose
/// data is `n` extents of `len` bytes every `stride` bytes, then a hole.
struct Snap {
    prefix: String,
    manifest: Vec<u8>,
    upper: Vec<u8>,
    extents: Vec<(u64, u64)>,
}

fn snap(work: &Path, name: &str, n: u64, len: usize, stride: u64) -> Snap {
    let dir = work.join(name);
    let digest = extents_snapshot(&dir, n, len, stride, true);
    let dir = under_prefix(&dir, &digest);
    Snap {
        prefix: digest.archive_prefix(),
        manifest: std::fs::read(dir.join("manifest.json")).unwrap(),
        upper: std::fs::read(dir.join("upper.ext4")).unwrap(),
        extents: (0..n).map(|i| (i * stride, len as u64)).collect(),
    }
}

impl Snap {
    fn manifest_path(&self) -> String {
        format!("{}/manifest.json", self.prefix)
    }

    fn upper_path(&self) -> String {
        format!("{}/upper.ext4", self.prefix)
    }
}

/// Rewrite the header at `at` and reseal its checksum.
fn edit(bytes: &mut [u8], at: usize, f: impl FnOnce(&mut [u8; BLOCK])) {
    let h: &mut [u8; BLOCK] = (&mut bytes[at..at + BLOCK]).try_into().unwrap();
    f(h);
    seal(h);
}

/// The header's checksum written in base-256 (the value right).
fn base256_checksum(bytes: &mut [u8], at: usize) {
    let h = &mut bytes[at..at + BLOCK];
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    h[148..156].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, (sum >> 8) as u8, sum as u8]);
}

/// One form import refuses, and the words of its refusal.
struct Refused {
    name: &'static str,
    bytes: Vec<u8>,
    refusal: &'static str,
}

/// The five forms of issue 23 and the numeric-field garbage of its item 6.
fn refused_forms(work: &Path) -> Vec<Refused> {
    let s = snap(work, "refused", 3, 4096, 16384);
    let manifest_first = || {
        let mut t = Tar::new();
        t.file(&s.manifest_path(), &s.manifest);
        t
    };
    let mut out = Vec::new();
    let mut form = |name, bytes, refusal| {
        out.push(Refused {
            name,
            bytes,
            refusal,
        })
    };

    // GNU tar applies `path` after two blanks; bsdtar ignores " path".
    let mut t = manifest_first();
    t.pax_raw(&pax_record("  ", b"path", s.upper_path().as_bytes()));
    t.file(&format!("{}/decoy", s.prefix), &s.upper);
    form(
        "pax-two-blanks-before-path",
        t.finish(),
        "more than one blank after a record's length",
    );

    let mut t = manifest_first();
    t.pax_raw(&pax_record(" \t", b"size", b"0"));
    t.file(&s.upper_path(), &s.upper);
    form(
        "pax-blank-and-tab-before-size",
        t.finish(),
        "more than one blank after a record's length",
    );

    // GNU tar reads `upper.ext4Z`, to the NUL in the padding; bsdtar `upper.ext4`.
    let mut t = manifest_first();
    let mut data = s.upper_path().into_bytes();
    let size = data.len() as u64;
    data.push(b'Z');
    t.long_name_raw(&data, size).file("short", &s.upper);
    form(
        "gnu-long-name-without-nul-and-bytes-in-padding",
        t.finish(),
        "no NUL within its size and bytes in its padding",
    );

    // 100-byte extents, data back to back: what our own reader and exporter
    // used to write, an upper passing its integrity check; GNU tar reads
    // the second extent from the next block.
    let small = snap(work, "unaligned", 2, 100, 1024);
    let mut t = Tar::new();
    t.file(&small.manifest_path(), &small.manifest);
    let real = small.upper.len() as u64;
    let data: Vec<u8> = small
        .extents
        .iter()
        .flat_map(|&(o, l)| small.upper[o as usize..(o + l) as usize].to_vec())
        .collect();
    let mut map = small.extents.clone();
    map.push((real, 0));
    t.sparse_raw(&small.upper_path(), real, &map, &data, data.len() as u64);
    form(
        "sparse-extent-off-512-before-another",
        t.finish(),
        "an extent whose length is not a multiple of 512 is not the last",
    );

    // GNU tar reads checksums in octal only: a bad header, skipped.
    let mut t = manifest_first();
    let at = t.at();
    t.file(&s.upper_path(), &s.upper);
    let mut bytes = t.finish();
    base256_checksum(&mut bytes, at);
    form(
        "checksum-in-base-256",
        bytes,
        "checksum field is base-256, where GNU tar reads only octal",
    );

    // GNU tar stops decoding at the bad record (and exits 2); a reader that
    // skips it applies `path`.
    let mut t = manifest_first();
    let mut records = pax_record(" ", b"fo\0o", b"bar");
    records.extend(pax_record(" ", b"path", s.upper_path().as_bytes()));
    t.pax_raw(&records)
        .file(&format!("{}/decoy", s.prefix), &s.upper);
    form(
        "pax-nul-in-keyword-then-path",
        t.finish(),
        "a record holds a NUL byte",
    );

    // Garbage in numeric fields of the first header (bsdtar checks them there).
    for (name, at, bytes, refusal) in [
        (
            "mode-garbage",
            100,
            &b"zzzzzzz\0"[..],
            "mode field is not an octal",
        ),
        (
            "mtime-garbage",
            136,
            b"zzzzzzzzzzz\0",
            "mtime field is not an octal",
        ),
        (
            "uid-garbage",
            108,
            b"zzzzzzz\0",
            "uid field is not an octal",
        ),
        (
            "gid-garbage",
            116,
            b"zzzzzzz\0",
            "gid field is not an octal",
        ),
        (
            "devmajor-garbage",
            329,
            b"zzzzzzz\0",
            "devmajor field is not an octal",
        ),
        (
            "mode-trailing-garbage",
            100,
            b"0644 zz\0",
            "mode field is not an octal",
        ),
        (
            "mtime-negative",
            136,
            &[0xff; 12],
            "mtime field is negative",
        ),
    ] {
        let field = bytes;
        let mut bytes = manifest_first().finish();
        edit(&mut bytes, 0, |h| {
            h[at..at + field.len()].copy_from_slice(field);
            h[265..269].copy_from_slice(b"root");
        });
        form(name, bytes, refusal);
    }

    // A ustar header GNU tar takes for star's: it parses atime (exit 2 here).
    let mut bytes = manifest_first().finish();
    edit(&mut bytes, 0, |h| {
        h[257..265].copy_from_slice(b"ustar\x0000");
        h[476..488].copy_from_slice(b"1zzzzzzzzzz ");
        h[488..500].copy_from_slice(b"14524155400 ");
    });
    form("star-atime-garbage", bytes, "atime field is not an octal");

    for (name, key, value, refusal) in [
        (
            "pax-unknown-keyword",
            &b"foo"[..],
            &b"1"[..],
            "pax keyword \"foo\" is not accepted",
        ),
        (
            "pax-malformed-mtime",
            b"mtime",
            b"abc",
            "a time is not a decimal number",
        ),
        (
            "pax-malformed-uid",
            b"uid",
            b"x",
            "a uid or gid is not a decimal number",
        ),
        ("pax-empty-path", b"path", b"", "an empty path"),
    ] {
        let mut t = Tar::new();
        t.pax_raw(&pax_record(" ", key, value))
            .file(&s.manifest_path(), &s.manifest);
        form(name, t.finish(), refusal);
    }
    out
}

/// Why refusing is required: GNU tar fails or warns, or bsdtar disagrees.
fn reference_readers_object(work: &Path, name: &str, bytes: &[u8]) -> String {
    let gnu = gnu_tar_view(bytes, &work.join(format!("gnu-{name}"))).unwrap();
    let bsd = bsdtar_view(bytes, &work.join(format!("bsd-{name}"))).unwrap();
    let mut why = Vec::new();
    if !gnu.ok {
        why.push(format!("GNU tar exits non-zero: {}", gnu.stderr.trim()));
    } else if !gnu.stderr.is_empty() {
        why.push(format!("GNU tar warns: {}", gnu.stderr.trim()));
    }
    if !bsd.ok {
        why.push(format!("bsdtar fails: {}", bsd.stderr.trim()));
    }
    if gnu.files != bsd.files {
        why.push(format!(
            "GNU tar extracts {:?}, bsdtar {:?}",
            gnu.files.keys().collect::<Vec<_>>(),
            bsd.files.keys().collect::<Vec<_>>()
        ));
    }
    why.join("; ")
}

#[test]
fn issue_23_forms_are_refused_where_the_reference_readers_fail_or_differ() {
    let work = tempfile::tempdir().unwrap();
    let reg = Reg::new();
    reg.run(&["gc"]).ok();
    for form in refused_forms(work.path()) {
        let why = reference_readers_object(work.path(), form.name, &form.bytes);
        assert!(
            !why.is_empty(),
            "{}: GNU tar and bsdtar read it alike and without a word, so import must too",
            form.name
        );
        eprintln!("{}: {why}", form.name);
        let before = (reg.tree(), reg.dump());
        let path = reg.path(&format!("{}.tar", form.name));
        std::fs::write(&path, &form.bytes).unwrap();
        let run = reg
            .run(&["import", path.to_str().unwrap()])
            .fails(6, form.refusal);
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
        assert_eq!((reg.tree(), reg.dump()), before, "{}", form.name);
    }
}

/// Forms GNU tar and bsdtar read alike, silently: import takes them and
/// installs exactly what both extract.
fn accepted_forms(work: &Path) -> Vec<Archive> {
    let s = snap(work, "accepted", 3, 4096, 16384);
    let mut out = Vec::new();
    let mut form = |name: &str, bytes| {
        out.push(Archive {
            name: name.into(),
            bytes,
        })
    };
    let mut t = Tar::new();
    t.pax_raw(&pax_record(" ", b"path", s.manifest_path().as_bytes()))
        .file("placeholder", &s.manifest);
    let mut data = s.upper_path().into_bytes();
    let size = data.len() as u64;
    t.long_name_raw(&data, size).file("short", &s.upper);
    form("pax-path-and-long-name-without-nul", t.finish());

    data.extend(b"\0junk");
    let mut t = Tar::new();
    t.file(&s.manifest_path(), &s.manifest);
    t.long_name_raw(&data, data.len() as u64)
        .file("short", &s.upper);
    form("long-name-with-bytes-after-its-nul", t.finish());

    let small = snap(work, "last-unaligned", 2, 100, 1024);
    let mut t = Tar::new();
    t.file(&small.manifest_path(), &small.manifest);
    let real = small.upper.len() as u64;
    let mut data = small.upper[..512].to_vec();
    data.extend_from_slice(&small.upper[1024..1124]);
    t.sparse_raw(
        &small.upper_path(),
        real,
        &[(0, 512), (1024, 100), (real, 0)],
        &data,
        612,
    );
    form("sparse-last-extent-off-512", t.finish());

    let mut t = Tar::new();
    let first = t.at();
    t.file(&s.manifest_path(), &s.manifest);
    let second = t.at();
    t.file(&s.upper_path(), &s.upper);
    let mut bytes = t.finish();
    edit(&mut bytes, first, |h| {
        h[100..108].copy_from_slice(b"   644 \0");
        h[108..116].fill(0);
        h[116..124].copy_from_slice(b"00000000");
        h[136..148].fill(0);
    });
    let upper_size = format!("{:12o}", s.upper.len());
    edit(&mut bytes, second, |h| {
        h[124..136].copy_from_slice(upper_size.as_bytes())
    });
    form("numeric-fields-spaced-unterminated-or-nul", bytes);
    out
}

#[test]
fn odd_but_valid_forms_import_exactly_what_gnu_tar_and_bsdtar_extract() {
    let work = tempfile::tempdir().unwrap();
    for (i, a) in accepted_forms(work.path()).iter().enumerate() {
        assert!(
            agrees_with_gnu_tar(work.path(), &format!("ok{i}"), a),
            "{} was refused",
            a.name
        );
    }
}

/// How the fuzz loop writes the upper's GNU long name.
#[derive(Debug, Clone, Copy)]
enum Long {
    Terminated,
    NoNul,
    NoNulBytesInPadding,
    BytesAfterNul,
    SizeCutsTheName,
}

/// A real snapshot's archive as the fuzz loop varies it: a pax header over
/// the manifest member, a GNU long name over the upper, the upper a GNU
/// sparse member, and numeric fields re-encoded.
#[derive(Debug, Clone)]
struct Plan {
    pax_sep: &'static str,
    pax_extra: Option<(&'static [u8], &'static [u8])>,
    long: Long,
    /// Length of each map extent: the data's own (700, off 512) or whole blocks.
    whole_block_lengths: [bool; 3],
    /// Extents stored in whole blocks each (GNU tar's reading) or back to back.
    whole_block_layout: bool,
    /// (header index, field offset, field length, encoding).
    fields: Vec<(usize, usize, usize, u8)>,
    base256_checksum: Option<usize>,
}

const FUZZ_EXTENT: u64 = 700;
const FUZZ_STRIDE: u64 = 2048;

fn default_plan() -> Plan {
    Plan {
        pax_sep: " ",
        pax_extra: None,
        long: Long::Terminated,
        whole_block_lengths: [true, true, false],
        whole_block_layout: true,
        fields: Vec::new(),
        base256_checksum: None,
    }
}

/// `value` written into a `len`-byte numeric field in encoding `how`: some
/// mean the same number to both reference readers, some to one, some to
/// neither.
fn encode(value: u64, len: usize, how: u8) -> Vec<u8> {
    let digits = len - 1;
    let octal = format!("{value:o}");
    let mut out = match how % 10 {
        0 => format!("{value:0digits$o}\0").into_bytes(),
        1 => format!("{value:>digits$o}\0").into_bytes(),
        2 => format!("{value:0len$o}").into_bytes(),
        3 => format!("\0{value:0w$o}", w = digits - 1).into_bytes(),
        4 => format!("\t{value:0w$o}", w = digits - 1).into_bytes(),
        5 => format!("{octal} zz").into_bytes(),
        6 => vec![0; len],
        7 => vec![b' '; len],
        8 => {
            let mut f = vec![0u8; len];
            f[0] = 0x80;
            let be = value.to_be_bytes();
            let take = (len - 1).min(8);
            f[len - take..].copy_from_slice(&be[8 - take..]);
            f
        }
        _ => [0xffu8].repeat(len),
    };
    out.resize(len, 0);
    out.truncate(len);
    out
}

fn render(s: &Snap, plan: &Plan) -> Vec<u8> {
    let mut t = Tar::new();
    let mut headers = Vec::new();
    let mut records = Vec::new();
    if let Some((k, v)) = plan.pax_extra {
        records.extend(pax_record(" ", k, v));
    }
    records.extend(pax_record(
        plan.pax_sep,
        b"path",
        s.manifest_path().as_bytes(),
    ));
    headers.push(t.at());
    t.pax_raw(&records);
    headers.push(t.at());
    t.file("placeholder", &s.manifest);

    let name = s.upper_path().into_bytes();
    let (data, size) = match plan.long {
        Long::Terminated => ([&name[..], b"\0"].concat(), name.len() + 1),
        Long::NoNul => (name.clone(), name.len()),
        Long::NoNulBytesInPadding => ([&name[..], b"Z"].concat(), name.len()),
        Long::BytesAfterNul => ([&name[..], b"\0junk"].concat(), name.len() + 5),
        Long::SizeCutsTheName => ([&name[..], b"\0"].concat(), name.len() - 4),
    };
    headers.push(t.at());
    t.long_name_raw(&data, size as u64);

    let real = s.upper.len() as u64;
    let mut map: Vec<(u64, u64)> = s
        .extents
        .iter()
        .zip(plan.whole_block_lengths)
        .map(|(&(o, l), whole)| (o, if whole { l.div_ceil(512) * 512 } else { l }))
        .collect();
    let mut stored = Vec::new();
    for &(o, l) in &map {
        stored.extend_from_slice(&s.upper[o as usize..(o + l) as usize]);
        if plan.whole_block_layout {
            stored.resize(stored.len().div_ceil(BLOCK) * BLOCK, 0);
        }
    }
    let stored_size: u64 = map.iter().map(|e| e.1).sum();
    map.push((real, 0));
    headers.push(t.at());
    t.sparse_raw("short", real, &map, &stored, stored_size);
    let mut bytes = t.finish();
    for &(i, at, len, how) in &plan.fields {
        let h = headers[i % headers.len()];
        let value = std::str::from_utf8(&bytes[h + at..h + at + len])
            .ok()
            .and_then(|t| u64::from_str_radix(t.trim_matches(|c| c == '\0' || c == ' '), 8).ok())
            .unwrap_or(0);
        let field = encode(value, len, how);
        edit(&mut bytes, h, |b| b[at..at + len].copy_from_slice(&field));
    }
    if let Some(i) = plan.base256_checksum {
        base256_checksum(&mut bytes, headers[i % headers.len()]);
    }
    bytes
}

/// Change one part of `plan`, chosen by `r`.
fn mutate(plan: &mut Plan, mut r: impl FnMut() -> u64) {
    const EXTRA: &[(&[u8], &[u8])] = &[
        (b"mtime", b"abc"),
        (b"mtime", b"1700000000.5"),
        (b"atime", b"-1.25"),
        (b"uid", b"12"),
        (b"uid", b"x1"),
        (b"gid", b"4294967296"),
        (b"uname", b"root"),
        (b"foo", b"1"),
        (b"hdrcharset", b"BINARY"),
        (b"comment", b"hello"),
        (b"SCHILY.xattr.user.a", b"v"),
        (b"fo\0o", b"1"),
        (b"path", b""),
        (b"size", b"0"),
        (b"GNU.sparse.major", b"1"),
    ];
    const FIELDS: &[(usize, usize)] = &[
        (100, 8),
        (108, 8),
        (116, 8),
        (124, 12),
        (136, 12),
        (329, 8),
        (337, 8),
    ];
    match r() % 7 {
        0 => plan.pax_sep = [" ", "  ", " \t", "\t", "   "][r() as usize % 5],
        1 => plan.pax_extra = Some(EXTRA[r() as usize % EXTRA.len()]),
        2 => {
            plan.long = [
                Long::Terminated,
                Long::NoNul,
                Long::NoNulBytesInPadding,
                Long::BytesAfterNul,
                Long::SizeCutsTheName,
            ][r() as usize % 5]
        }
        3 => plan.whole_block_lengths[r() as usize % 3] ^= true,
        4 => plan.whole_block_layout ^= true,
        5 => {
            let (at, len) = FIELDS[r() as usize % FIELDS.len()];
            plan.fields.push((r() as usize, at, len, r() as u8));
        }
        _ => plan.base256_checksum = Some(r() as usize),
    }
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} is not a number: {v:?}"))
    })
}

/// The fuzz loop over these encodings (see the module docs); bounded and
/// seeded, so a failure names a case that replays.
#[test]
fn seeded_fuzz_of_header_encodings_agrees_with_gnu_tar() {
    let work = tempfile::tempdir().unwrap();
    let s = snap(work.path(), "fuzz", 3, FUZZ_EXTENT as usize, FUZZ_STRIDE);
    let base = Archive {
        name: "fuzz base".into(),
        bytes: render(&s, &default_plan()),
    };
    assert!(
        agrees_with_gnu_tar(work.path(), "base", &base),
        "the unmutated fuzz archive is refused"
    );
    let cases = env_number("MSB_FORMS_FUZZ_CASES").unwrap_or(120);
    let mut rng = env_number("MSB_FORMS_FUZZ_SEED").unwrap_or(0x23_f0a5);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..cases {
        let mut plan = default_plan();
        for _ in 0..1 + next() % 3 {
            mutate(&mut plan, &mut next);
        }
        let a = Archive {
            name: format!("case {case}: {plan:?}"),
            bytes: render(&s, &plan),
        };
        if agrees_with_gnu_tar(work.path(), &format!("f{case}"), &a) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    eprintln!(
        "{cases} cases: {accepted} accepted as GNU tar and bsdtar read them, {refused} refused"
    );
    if cases >= 100 {
        assert!(
            accepted > 0 && refused > 0,
            "{accepted} accepted, {refused} refused"
        );
    }
}

/// A name from an archive is cut and escaped in the refusal that quotes
/// it: a 1 MB member name and a manifest's JSON turned into a GNU long
/// name give one short line each.
#[test]
fn names_quoted_in_refusals_are_cut_and_escaped() {
    let work = tempfile::tempdir().unwrap();
    let s = snap(work.path(), "names", 1, 4096, 8192);
    let reg = Reg::new();
    reg.run(&["gc"]).ok();
    let huge = format!("{}/{}", s.prefix, "a".repeat(1_000_000));
    let mut json = s.manifest.clone();
    json.extend(b"\n\x1b[2J");
    for (label, name, words) in [
        ("huge", huge.as_bytes(), "longer than 255"),
        ("json", &json[..], "is not a normal file name"),
    ] {
        let mut t = Tar::new();
        t.long_name_raw(name, name.len() as u64).file("short", b"x");
        let path = reg.path(&format!("{label}.tar"));
        std::fs::write(&path, t.finish()).unwrap();
        let run = reg.run(&["import", path.to_str().unwrap()]).fails(6, words);
        let line = run.stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "{label}: {line}");
        assert!(
            line.len() < 600,
            "{label}: a {}-byte error line",
            line.len()
        );
        assert!(!line.contains('\x1b'), "{label}: {line}");
        assert!(
            line.contains(&format!("… ({} bytes)", name.len())),
            "{label}: {line}"
        );
    }
}
