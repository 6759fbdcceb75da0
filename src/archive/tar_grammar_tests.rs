//! The systematic check of the tar header grammar (issue 23): for every
//! field GNU tar 1.34 parses, odd-but-valid encodings, each read as GNU tar
//! reads it (`tar -xSf`, checked by hand and by the differential suite in
//! tests/it/differential.rs) or refused with a typed [`ReadError`]. Where
//! GNU tar warns or exits non-zero, or where it and bsdtar read a form
//! differently, the expected outcome is a refusal.

use super::tar_reader::*;

/// The integration tests' raw tar writer: both suites build their headers
/// with it.
#[path = "../../tests/it/tarcraft.rs"]
mod tarcraft;

use tarcraft::{Flavour, Tar, header, pax_record, seal};

const GNU: &[u8] = b"ustar  \0";
const USTAR: &[u8] = b"ustar\x0000";

/// A sealed header block of `magic` for a regular file.
fn block_with(
    magic: &[u8],
    name: &[u8],
    size: u64,
    edit: impl FnOnce(&mut [u8; BLOCK]),
) -> [u8; BLOCK] {
    let mut b = header(Flavour::Gnu, b'0', name, size, b"");
    b[257..265].fill(0);
    b[257..257 + magic.len()].copy_from_slice(magic);
    edit(&mut b);
    seal(&mut b);
    b
}

fn gnu(name: &[u8], size: u64) -> [u8; BLOCK] {
    block_with(GNU, name, size, |_| {})
}

/// `header` (sealed again) followed by `data`, padded to a block.
fn with_data(header: [u8; BLOCK], data: &[u8]) -> Vec<u8> {
    Tar::new().raw(header, data).bytes.clone()
}

/// A pax header (`x`) holding `records` as they are.
fn pax(records: &[u8]) -> Vec<u8> {
    let h = header(
        Flavour::Ustar,
        b'x',
        b"PaxHeaders/f",
        records.len() as u64,
        b"",
    );
    with_data(h, records)
}

/// Read every member of `archive` (end marker appended): its header and
/// logical content, holes as zeros.
fn read(mut archive: Vec<u8>) -> Result<Vec<(MemberHeader, Vec<u8>)>, ReadError> {
    archive.extend([0u8; 2 * BLOCK]);
    let spill = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut reader = TarReader::new(std::io::Cursor::new(archive), spill.path());
        let mut out = Vec::new();
        while let Some(member) = reader.next().await? {
            let mut content = Vec::new();
            let mut buf = [0u8; 700];
            while let Some(chunk) = reader.read_data(&mut buf).await? {
                match chunk {
                    Chunk::Data(n) => content.extend_from_slice(&buf[..n]),
                    Chunk::Zeros(n) => content.resize(content.len() + n as usize, 0),
                }
            }
            out.push((member, content));
        }
        reader.finish().await?;
        Ok(out)
    })
}

/// The path and content of each member GNU tar would extract.
fn paths(archive: Vec<u8>) -> Result<Vec<(String, Vec<u8>)>, ReadError> {
    Ok(read(archive)?
        .into_iter()
        .map(|(m, c)| (String::from_utf8_lossy(&m.path).into_owned(), c))
        .collect())
}

fn one(path: &str, content: &[u8]) -> Vec<(String, Vec<u8>)> {
    vec![(path.to_string(), content.to_vec())]
}

// name / prefix ----------------------------------------------------------

#[test]
fn name_and_prefix_fields_read_to_their_first_nul_or_their_end() {
    // A full 100-byte name with no NUL: GNU tar reads all 100 bytes.
    let full = [b'n'; 100];
    let got = decode_header(&gnu(&full, 0)).unwrap();
    assert_eq!(got.name, full);
    // Trailing spaces are part of the name for GNU tar too.
    assert_eq!(decode_header(&gnu(b"a.txt  ", 0)).unwrap().name, b"a.txt  ");
    // A ustar prefix of a full 155 bytes, unterminated, is joined whole.
    let prefixed = block_with(USTAR, b"file", 0, |b| b[345..500].fill(b'p'));
    let mut expected = vec![b'p'; 155];
    expected.extend_from_slice(b"/file");
    assert_eq!(decode_header(&prefixed).unwrap().name, expected);
    // Bytes after the name's NUL are not part of it.
    let cut = block_with(GNU, b"a\0zzz", 0, |_| {});
    assert_eq!(decode_header(&cut).unwrap().name, b"a");
    // In a GNU header those bytes are other fields (atime...), never a prefix.
    let gnu_prefix = block_with(GNU, b"file", 0, |b| b[345..348].copy_from_slice(b"dir"));
    assert_eq!(decode_header(&gnu_prefix).unwrap().name, b"file");
}

#[test]
fn link_name_reads_to_its_first_nul_or_its_end() {
    let full = block_with(GNU, b"f", 0, |b| b[157..257].fill(b'l'));
    assert_eq!(decode_header(&full).unwrap().link, [b'l'; 100]);
    let cut = block_with(GNU, b"f", 0, |b| b[157..161].copy_from_slice(b"x\0yz"));
    assert_eq!(decode_header(&cut).unwrap().link, b"x");
}

// size ---------------------------------------------------------------------

#[test]
fn size_field_encodings() {
    let size = |field: &[u8]| {
        decode_header(&block_with(GNU, b"f", 0, |b| {
            b[124..136].fill(0);
            b[124..124 + field.len()].copy_from_slice(field);
        }))
        .map(|h| h.size)
    };
    assert_eq!(size(b"00000000012\0").unwrap(), 10);
    // Leading spaces, space terminator, unterminated full field: as GNU tar.
    assert_eq!(size(b"         12\0").unwrap(), 10);
    assert_eq!(size(b"12 ").unwrap(), 10);
    assert_eq!(size(b"000000000012").unwrap(), 10);
    // GNU tar reads these (leading NUL skipped, tab as blank, anything
    // after the terminator ignored); bsdtar does not all: refused.
    for odd in [
        &b"\x0000000000012"[..],
        b"\t12\0",
        b"12 zz\0",
        b"12\0zz",
        b"+12\0",
    ] {
        assert!(
            matches!(size(odd), Err(ReadError::Number { field: "size", .. })),
            "{odd:?}"
        );
    }
    // All blanks: GNU tar exits 2; all NULs: GNU tar reads 0, refused here.
    assert!(matches!(
        size(b"            "),
        Err(ReadError::Number {
            problem: NumberProblem::Blank,
            ..
        })
    ));
    assert!(matches!(
        size(b""),
        Err(ReadError::Number {
            problem: NumberProblem::Blank,
            ..
        })
    ));
    // Base-256: positive read, negative and over 2^63 - 1 refused.
    let mut b256 = [0u8; 12];
    b256[0] = 0x80;
    b256[11] = 10;
    assert_eq!(size(&b256).unwrap(), 10);
    assert!(matches!(
        size(&[0xff; 12]),
        Err(ReadError::Number {
            problem: NumberProblem::Negative,
            ..
        })
    ));
}

// checksum -------------------------------------------------------------------

#[test]
fn checksum_field_is_octal_only() {
    let good = gnu(b"f", 1);
    assert!(decode_header(&good).is_ok());
    // The signed sum (bytes over 0x7f counted negative), as GNU tar allows.
    let mut signed = block_with(GNU, b"f\xe9", 1, |_| {});
    let sum: i64 = signed
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum();
    signed[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    assert!(decode_header(&signed).is_ok());
    // Leading spaces, a terminating space: GNU tar's own older form.
    let mut spaced = good;
    let sum: u64 = spaced
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    spaced[148..156].copy_from_slice(format!("{sum:7o} ").as_bytes());
    assert!(decode_header(&spaced).is_ok());
    // Base-256: GNU tar calls the header bad and skips to the next one.
    let mut b256 = good;
    b256[148..156].copy_from_slice(&[0x80, 0, 0, 0, 0, 0, (sum >> 8) as u8, sum as u8]);
    assert!(matches!(
        decode_header(&b256),
        Err(ReadError::Number {
            field: "checksum",
            problem: NumberProblem::NotOctal
        })
    ));
    let mut wrong = good;
    wrong[0] ^= 1;
    assert!(matches!(decode_header(&wrong), Err(ReadError::Checksum)));
}

// mode, uid, gid, mtime, devmajor, devminor ------------------------------------

#[test]
fn metadata_fields_are_numbers_or_refused() {
    let set = |at: usize, bytes: &[u8], magic: &[u8]| {
        let bytes = bytes.to_vec();
        decode_header(&block_with(magic, b"f", 0, move |b| {
            b[at..at + bytes.len()].copy_from_slice(&bytes)
        }))
    };
    // Garbage: GNU tar exits 2 (mode, mtime; uid and gid unless the user
    // name resolves here), bsdtar refuses the archive.
    for (at, len, field) in [
        (100, 8, "mode"),
        (108, 8, "uid"),
        (116, 8, "gid"),
        (136, 12, "mtime"),
        (329, 8, "devmajor"),
        (337, 8, "devminor"),
    ] {
        let mut garbage = vec![b'z'; len - 1];
        garbage.push(0);
        let got = set(at, &garbage, GNU);
        assert!(
            matches!(got, Err(ReadError::Number { field: f, .. }) if f == field),
            "{field}: {got:?}"
        );
        // All NULs: both read 0.
        assert!(set(at, &vec![0; len], GNU).is_ok(), "{field}");
        // Trailing garbage after the terminator: GNU tar reads, bsdtar refuses.
        let mut trailing = vec![b'0'; len];
        trailing[len - 3] = b' ';
        trailing[len - 2] = b'z';
        assert!(set(at, &trailing, GNU).is_err(), "{field}");
    }
    // Device numbers are not fields of a v7 header.
    let v7 = block_with(b"", b"f", 0, |b| b[329..337].copy_from_slice(b"zzzzzzz\0"));
    assert!(decode_header(&v7).is_ok());
    // A negative base-256 mtime: GNU tar warns of an implausibly old time.
    assert!(matches!(
        set(136, &[0xff; 12], GNU),
        Err(ReadError::Number {
            field: "mtime",
            problem: NumberProblem::Negative
        })
    ));
    // A uid over uid_t: GNU tar exits 2.
    let got = set(108, &[0x80, 0, 0, 1, 0, 0, 0, 0], GNU);
    assert!(matches!(
        got,
        Err(ReadError::Number {
            field: "uid",
            problem: NumberProblem::OverId
        })
    ));
    // A header GNU tar takes for star's: its atime and ctime are parsed.
    let star = |atime: &[u8; 12]| {
        let atime = *atime;
        decode_header(&block_with(USTAR, b"f", 0, move |b| {
            b[476..488].copy_from_slice(&atime);
            b[488..500].copy_from_slice(b"14524155400 ");
        }))
    };
    assert!(star(b"14524155400 ").is_ok());
    assert!(matches!(
        star(b"1zzzzzzzzzz "),
        Err(ReadError::Number { field: "atime", .. })
    ));
    // User and group names are not parsed by either.
    assert!(set(265, b"\xff\xfe\x01", GNU).is_ok());
}

// pax records ------------------------------------------------------------------

#[test]
fn pax_records_read_as_gnu_tar_and_bsdtar_both_read_them() {
    let applied = pax_records(&pax_record(" ", b"path", b"evil.bin")).unwrap();
    assert_eq!(applied.path.as_deref(), Some(&b"evil.bin"[..]));
    // Later records win, as in GNU tar and bsdtar.
    let mut two = pax_record(" ", b"path", b"a");
    two.extend(pax_record(" ", b"path", b"b"));
    assert_eq!(pax_records(&two).unwrap().path.as_deref(), Some(&b"b"[..]));
    // Leading zeros in the length are digits like any other.
    assert_eq!(
        pax_records(b"012 path=ab\n").unwrap().path.as_deref(),
        Some(&b"ab"[..])
    );
    for (what, bytes) in [
        // GNU tar applies `path` after several blanks; bsdtar ignores " path".
        ("two blanks", pax_record("  ", b"path", b"evil.bin")),
        ("a blank and a tab", pax_record(" \t", b"size", b"0")),
        ("a tab", pax_record("\t", b"path", b"x")),
        ("a leading blank", {
            let mut r = b" ".to_vec();
            r.extend(pax_record(" ", b"path", b"x"));
            r
        }),
        // GNU tar stops decoding the header at the bad record and exits 2.
        ("a NUL in the keyword", {
            let mut r = pax_record(" ", b"fo\0o", b"bar");
            r.extend(pax_record(" ", b"path", b"evil.bin"));
            r
        }),
        ("a NUL in the value", pax_record(" ", b"path", b"ab\0cd")),
        ("no newline", b"9 path=ab".to_vec()),
        ("a short length", b"8 path=ab\n".to_vec()),
        ("a long length", b"12 path=ab\n".to_vec()),
        ("no '='", b"8 pathab\n".to_vec()),
        ("an empty key", b"6 =ab\n".to_vec()),
        ("NUL padding after the records", {
            let mut r = pax_record(" ", b"path", b"ab");
            r.extend([0, 0, 0]);
            r
        }),
        ("an empty path", pax_record(" ", b"path", b"")),
        ("a signed size", pax_record(" ", b"size", b"+1")),
        ("a spaced size", pax_record(" ", b"size", b" 1")),
        (
            "a size with a blank after it",
            pax_record(" ", b"size", b"1 "),
        ),
        (
            "a size over 2^63 - 1",
            pax_record(" ", b"size", b"9223372036854775808"),
        ),
        ("a malformed mtime", pax_record(" ", b"mtime", b"abc")),
        ("a malformed atime", pax_record(" ", b"atime", b"1.5x")),
        ("a malformed uid", pax_record(" ", b"uid", b"abc")),
        (
            "a uid over 2^32 - 1",
            pax_record(" ", b"gid", b"4294967296"),
        ),
        (
            "a uname that is not UTF-8",
            pax_record(" ", b"uname", b"\xff\x01"),
        ),
    ] {
        assert!(
            matches!(pax_records(&bytes), Err(ReadError::Pax(_))),
            "{what}"
        );
    }
    for good in [
        pax_record(" ", b"mtime", b"1700000000.123456789"),
        pax_record(" ", b"atime", b"-1.5"),
        pax_record(" ", b"ctime", b"0"),
        pax_record(" ", b"uid", b"4294967295"),
        pax_record(" ", b"uname", b"root"),
        pax_record(" ", b"charset", b"ISO-IR 10646 2000 UTF-8"),
        pax_record(" ", b"comment", b"anything at all"),
        pax_record(" ", b"linkpath", b""),
        pax_record(" ", b"SCHILY.xattr.user.a", b"1"),
        pax_record(" ", b"SCHILY.acl.access", b"user::rw-"),
        pax_record(" ", b"RHT.security.selinux", b"x"),
    ] {
        assert!(
            pax_records(&good).is_ok(),
            "{}",
            String::from_utf8_lossy(&good)
        );
    }
}

#[test]
fn pax_keywords_gnu_tar_warns_about_or_uses_elsewhere_are_refused() {
    for key in [
        &b"path "[..],
        b"foo",
        b"hdrcharset",
        b"SCHILY.dev",
        b"SCHILY.devmajor",
        b"LIBARCHIVE.xattr.user.a",
        b"GNU.dumpdir",
        b"GNU.volume.label",
    ] {
        assert!(
            matches!(pax_records(&pax_record(" ", key, b"1")), Err(ReadError::PaxKeyword(k)) if k == key),
            "{}",
            String::from_utf8_lossy(key)
        );
    }
    // pax sparse formats 0.0, 0.1 and 1.0 are all GNU.sparse.* records.
    for key in [
        &b"GNU.sparse.size"[..],
        b"GNU.sparse.numblocks",
        b"GNU.sparse.offset",
        b"GNU.sparse.numbytes",
        b"GNU.sparse.map",
        b"GNU.sparse.major",
        b"GNU.sparse.minor",
        b"GNU.sparse.name",
        b"GNU.sparse.realsize",
    ] {
        assert!(matches!(
            pax_records(&pax_record(" ", key, b"1")),
            Err(ReadError::PaxSparse)
        ));
    }
    let long_key = vec![b'k'; 1 << 20];
    let shown = ReadError::PaxKeyword(long_key).to_string();
    assert!(shown.len() < 600, "{} bytes", shown.len());
}

#[test]
fn pax_path_and_size_apply_to_the_next_member() {
    let mut archive = pax(&pax_record(" ", b"path", b"evil.bin"));
    archive.extend(with_data(gnu(b"benign.bin", 5), b"hello"));
    assert_eq!(paths(archive).unwrap(), one("evil.bin", b"hello"));
    // size=0 over a 1,024-byte header size: GNU tar reads an empty file and
    // the next header where the 1,024 bytes were.
    let mut archive = pax(&pax_record(" ", b"size", b"0"));
    archive.extend(gnu(b"decoy.bin", 1024));
    archive.extend(with_data(gnu(b"next.bin", 1), b"n"));
    assert_eq!(
        paths(archive).unwrap(),
        [one("decoy.bin", b""), one("next.bin", b"n")].concat()
    );
    let mut archive = pax(&pax_record("  ", b"path", b"evil.bin"));
    archive.extend(with_data(gnu(b"benign.bin", 5), b"hello"));
    assert!(matches!(paths(archive), Err(ReadError::Pax(_))));
}

// typeflag ---------------------------------------------------------------------

#[test]
fn typeflag_is_read_as_is_and_extension_types_are_consumed() {
    for t in [b'0', 0, b'5', b'S', b'7', b'X', b'V', b'g'] {
        let h = block_with(GNU, b"f", 0, |b| b[156] = t);
        assert_eq!(decode_header(&h).unwrap().typeflag, t);
    }
}

// GNU long names (L) and link names (K) ----------------------------------------

fn long(typeflag: u8, data: &[u8], size: usize) -> Vec<u8> {
    let h = header(Flavour::Gnu, typeflag, b"././@LongLink", size as u64, b"");
    with_data(h, data)
}

#[test]
fn gnu_long_names_read_as_gnu_tar_and_bsdtar_both_read_them() {
    let member = || with_data(gnu(b"short", 1), b"x");
    let cases: [(&str, Vec<u8>, Result<&str, ()>); 6] = [
        (
            "NUL-terminated",
            long(b'L', b"notes.txt\0", 10),
            Ok("notes.txt"),
        ),
        (
            "no NUL, zero padding",
            long(b'L', b"notes.txt", 9),
            Ok("notes.txt"),
        ),
        (
            "a NUL inside the size",
            long(b'L', b"notes.txt\0.sh", 13),
            Ok("notes.txt"),
        ),
        (
            "exactly a block, no NUL",
            long(b'L', &[b'n'; 512], 512),
            Ok(std::str::from_utf8(&[b'n'; 512]).unwrap()),
        ),
        // GNU tar reads `notes.txt.sh` (to the NUL in the padding), bsdtar `notes.txt`.
        (
            "no NUL, bytes in the padding",
            long(b'L', b"notes.txt.sh", 9),
            Err(()),
        ),
        ("empty", long(b'L', b"", 0), Err(())),
    ];
    for (what, mut archive, expected) in cases {
        archive.extend(member());
        match (paths(archive), expected) {
            (Ok(got), Ok(name)) => assert_eq!(got, one(name, b"x"), "{what}"),
            (Err(ReadError::LongName(_)), Err(())) => {}
            (got, _) => panic!("{what}: {got:?}"),
        }
    }
    let mut link = long(b'K', b"target.bin", 10);
    link.extend(member());
    assert_eq!(read(link).unwrap()[0].0.link, b"target.bin");
    let mut link = long(b'K', b"target.binZ", 10);
    link.extend(member());
    assert!(matches!(read(link), Err(ReadError::LongName(_))));
}

// old-GNU sparse maps ----------------------------------------------------------

/// A GNU sparse member `sp.bin` of `real` bytes with `map` (in the header's
/// four slots) storing `data`.
fn sparse(map: &[(u64, u64)], real: u64, data: &[u8], stored: u64) -> Vec<u8> {
    Tar::new()
        .sparse_raw("sp.bin", real, map, data, stored)
        .bytes
        .clone()
}

#[test]
fn sparse_extents_that_gnu_tar_reads_from_whole_blocks() {
    // Every extent a multiple of 512 but the last: back to back is whole
    // blocks, and both readers agree.
    let mut data = vec![b'A'; 512];
    data.extend([b'B'; 100]);
    let got = paths(sparse(&[(0, 512), (1024, 100)], 1124, &data, 612)).unwrap();
    let mut expected = vec![b'A'; 512];
    expected.resize(1024, 0);
    expected.extend([b'B'; 100]);
    assert_eq!(got, one("sp.bin", &expected));
    // A 100-byte extent before another: GNU tar reads the second from the
    // next block, bsdtar right after the first. Refused either way the data
    // is laid out.
    let back_to_back = [vec![b'A'; 100], vec![b'B'; 100]].concat();
    let whole_blocks = [vec![b'A'; 100], vec![0; 412], vec![b'B'; 100]].concat();
    for data in [back_to_back, whole_blocks] {
        let got = paths(sparse(
            &[(0, 100), (1024, 100), (2048, 0)],
            2048,
            &data,
            200,
        ));
        assert!(matches!(got, Err(ReadError::SparseMap(_))), "{got:?}");
    }
    // An unaligned extent followed only by the empty final entry is the last.
    let got = paths(sparse(&[(0, 100), (2048, 0)], 2048, &[b'A'; 100], 100)).unwrap();
    assert_eq!(got[0].1.len(), 2048);
    // Unaligned offsets are fine: GNU tar seeks to them.
    let got = paths(sparse(&[(7, 512), (1000, 3)], 1003, &[b'C'; 515], 515)).unwrap();
    assert_eq!(&got[0].1[7..519], &[b'C'; 512][..]);
}

#[test]
fn sparse_slots_are_read_as_gnu_tar_reads_them() {
    // A slot whose length starts with NUL ends the map for GNU tar; one
    // holding other bytes after that is refused.
    let mut slot = [0u8; 24];
    assert_eq!(sparse_slot(&slot).unwrap(), None);
    slot[..12].copy_from_slice(b"00000001000\0");
    assert!(matches!(sparse_slot(&slot), Err(ReadError::SparseMap(_))));
    // Leading spaces and an unterminated field read as numbers everywhere.
    slot[12..].copy_from_slice(b"      000100");
    assert_eq!(sparse_slot(&slot).unwrap(), Some((0o1000, 0o100)));
    slot[12..].copy_from_slice(b"00000000010z");
    assert!(matches!(sparse_slot(&slot), Err(ReadError::Number { .. })));
    // An extended flag other than 0 or 1 (GNU tar: any non-zero) is refused.
    let mut flagged = sparse(&[(0, 512)], 512, &[1; 512], 512);
    flagged[482] = 2;
    let mut h: [u8; BLOCK] = flagged[..BLOCK].try_into().unwrap();
    seal(&mut h);
    flagged[..BLOCK].copy_from_slice(&h);
    assert!(matches!(read(flagged), Err(ReadError::SparseMap(_))));
}

#[test]
fn what_export_writes_for_unaligned_extents_reads_back_whole() {
    let size = 5000u64;
    let raw = [(0u64, 100u64), (1000, 50), (1100, 3), (3000, 7)];
    let mut logical = vec![0u8; size as usize];
    for (i, &(off, len)) in raw.iter().enumerate() {
        logical[off as usize..(off + len) as usize].fill(i as u8 + 1);
    }
    let member = |extents: &[(u64, u64)]| {
        let mut out = super::tar::sparse("sp.bin", extents, size, 0).unwrap();
        let data: Vec<u8> = extents
            .iter()
            .flat_map(|&(o, l)| logical[o as usize..(o + l) as usize].to_vec())
            .collect();
        out.extend_from_slice(&data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    };
    // The map as the file system might report it, data back to back: the
    // old model, which GNU tar reads otherwise. Refused.
    assert!(matches!(read(member(&raw)), Err(ReadError::SparseMap(_))));
    // The map export writes: whole blocks but the last. Reads back whole.
    let aligned = super::tar::gnu_extents(&raw, size);
    let got = paths(member(&aligned)).unwrap();
    assert_eq!(got, one("sp.bin", &logical));
}
