//! Tar headers for the archives export writes (DESIGN §2): GNU-format
//! 512-byte headers with a fixed owner (0/0, no names), fixed mode and a
//! caller-chosen mtime, for regular files and for old-GNU sparse entries
//! (type `S`, sparse map in the header and in extension blocks of 21).
//!
//! Only the header bytes are built here; the caller writes member data, the
//! padding given by [`padding`] and the [`END_OF_ARCHIVE`] blocks itself, so
//! the same code serves the dense and the sparse layout.

use tokio_tar::{EntryType, GnuExtSparseHeader, GnuSparseHeader, Header};

use crate::model::error::{Error, Result};

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// The two zero blocks that end an archive.
pub const END_OF_ARCHIVE: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// Mode of every file member, with the regular-file type bits as
/// microsandbox's own save writes it.
pub const FILE_MODE: u64 = 0o100644;

/// Longest member name a plain GNU header holds; longer names would need a
/// long-name entry, which the archive grammar does not allow.
pub const MAX_NAME: usize = 100;

const HEADER_SPARSE_SLOTS: usize = 4;
const EXTENSION_SPARSE_SLOTS: usize = 21;

/// The header of a regular file member of `size` bytes.
pub fn regular(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK]> {
    let mut header = base(name, size, mtime, EntryType::Regular)?;
    header.set_cksum();
    Ok(*header.as_bytes())
}

/// The header and extension blocks of a GNU sparse member whose data
/// extents are `extents` (`(offset, len)`, in order, within `real_size`).
///
/// The member's data is the extents' bytes concatenated. When the file ends
/// in a hole the map ends with an empty entry at `real_size`, as GNU tar
/// writes it: that entry is what makes GNU tar restore the full length.
pub fn sparse(name: &str, extents: &[(u64, u64)], real_size: u64, mtime: u64) -> Result<Vec<u8>> {
    let mut map: Vec<(u64, u64)> = extents.to_vec();
    if map.last().is_none_or(|&(off, len)| off + len < real_size) {
        map.push((real_size, 0));
    }
    let stored: u64 = extents.iter().map(|e| e.1).sum();
    let mut header = base(name, stored, mtime, EntryType::GNUSparse)?;
    let (in_header, rest) = map.split_at(map.len().min(HEADER_SPARSE_SLOTS));
    {
        let gnu = header
            .as_gnu_mut()
            .expect("built with Header::new_gnu, so it is a GNU header");
        fill_slots(&mut gnu.sparse, in_header);
        gnu.isextended[0] = u8::from(!rest.is_empty());
        put_number(&mut gnu.realsize, real_size);
    }
    header.set_cksum();

    let mut out = Vec::with_capacity(BLOCK * (1 + rest.len().div_ceil(EXTENSION_SPARSE_SLOTS)));
    out.extend_from_slice(header.as_bytes());
    let mut chunks = rest.chunks(EXTENSION_SPARSE_SLOTS).peekable();
    while let Some(chunk) = chunks.next() {
        let mut ext = GnuExtSparseHeader::new();
        fill_slots(&mut ext.sparse, chunk);
        ext.isextended[0] = u8::from(chunks.peek().is_some());
        out.extend_from_slice(ext.as_bytes());
    }
    Ok(out)
}

/// `extents` (data extents of a file of `size` bytes, in order, not
/// overlapping) made into a map GNU tar and our reader read alike: GNU tar
/// reads each extent of a sparse member from whole blocks, so every extent
/// but the last must be a multiple of 512 bytes long. Each is lengthened to
/// one (into the hole after it, whose bytes read as zeros; never past
/// `size`), and extents that then touch are joined. File systems report
/// extents in whole file-system blocks, so this changes something only on
/// one that does not.
pub fn gnu_extents(extents: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(extents.len());
    for &(off, len) in extents.iter().filter(|e| e.1 > 0) {
        match out.last_mut() {
            Some(last) if last.0 + last.1 >= off => {
                last.1 = (off + len).max(last.0 + last.1) - last.0
            }
            _ => out.push((off, len)),
        }
        let last = out.last_mut().expect("just pushed or extended");
        last.1 = (last.1.div_ceil(BLOCK as u64) * BLOCK as u64).min(size - last.0);
    }
    out
}

/// A pax extended header (type `x`) for the member `name`, holding one
/// record `<key>=<value>`, its data padded to whole blocks. The header's own
/// name is `<dir>/PaxHeaders/<file>`, as GNU tar writes it.
pub fn pax(name: &str, key: &str, value: &str, mtime: u64) -> Result<Vec<u8>> {
    let body = format!("{key}={value}\n");
    let mut len = body.len() + 2;
    while format!("{len} {body}").len() != len {
        len += 1;
    }
    let record = format!("{len} {body}");
    let (dir, file) = name.rsplit_once('/').unwrap_or((".", name));
    let mut header = base(
        &format!("{dir}/PaxHeaders/{file}"),
        record.len() as u64,
        mtime,
        EntryType::XHeader,
    )?;
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(record.as_bytes());
    out.resize(out.len() + padding(record.len() as u64), 0);
    Ok(out)
}

/// Zero bytes that follow `len` bytes of member data to end its last block.
pub fn padding(len: u64) -> usize {
    (BLOCK - (len % BLOCK as u64) as usize) % BLOCK
}

fn base(name: &str, size: u64, mtime: u64, kind: EntryType) -> Result<Header> {
    if name.len() > MAX_NAME || name.as_bytes().contains(&0) {
        return Err(Error::rejected(
            name,
            "member name is longer than 100 bytes or holds a NUL byte",
        ));
    }
    let mut header = Header::new_gnu();
    let gnu = header
        .as_gnu_mut()
        .expect("Header::new_gnu is a GNU header");
    gnu.name[..name.len()].copy_from_slice(name.as_bytes());
    put_number(&mut gnu.mode, FILE_MODE);
    put_number(&mut gnu.uid, 0);
    put_number(&mut gnu.gid, 0);
    put_number(&mut gnu.size, size);
    put_number(&mut gnu.mtime, mtime);
    put_number(&mut gnu.dev_major, 0);
    put_number(&mut gnu.dev_minor, 0);
    gnu.typeflag = [kind.as_byte()];
    Ok(header)
}

fn fill_slots(slots: &mut [GnuSparseHeader], entries: &[(u64, u64)]) {
    for (slot, &(offset, len)) in slots.iter_mut().zip(entries) {
        put_number(&mut slot.offset, offset);
        put_number(&mut slot.numbytes, len);
    }
}

/// A numeric field: zero-padded octal and a NUL when it fits, else the GNU
/// base-256 form (high bit set, big-endian value) GNU tar reads for sizes and
/// offsets of 8 GiB and more.
fn put_number(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    if value < 1u64 << (3 * digits) {
        let text = format!("{value:0digits$o}");
        field[..digits].copy_from_slice(text.as_bytes());
        field[digits] = 0;
    } else {
        field.fill(0);
        let n = field.len();
        field[n - 8..].copy_from_slice(&value.to_be_bytes());
        field[0] |= 0x80;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;

    use super::*;

    fn member(out: &mut Vec<u8>, header: &[u8], data: &[u8]) {
        out.extend_from_slice(header);
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0, padding(data.len() as u64)));
    }

    async fn read_back(bytes: Vec<u8>) -> Vec<(String, u8, u64, u64, Vec<u8>)> {
        let mut archive = tokio_tar::Archive::new(std::io::Cursor::new(bytes));
        let mut entries = archive.entries().unwrap();
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let mut entry = entry.unwrap();
            let h = entry.header().clone();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).await.unwrap();
            out.push((
                h.path().unwrap().to_string_lossy().into_owned(),
                h.entry_type().as_byte(),
                h.mtime().unwrap(),
                h.mode().unwrap() as u64,
                data,
            ));
        }
        out
    }

    #[test]
    fn extents_are_made_whole_blocks_but_the_last() {
        assert_eq!(
            gnu_extents(&[(0, 4096), (8192, 100)], 8292),
            [(0, 4096), (8192, 100)]
        );
        assert_eq!(
            gnu_extents(&[(0, 100), (1024, 100)], 2048),
            [(0, 512), (1024, 512)]
        );
        // Lengthened into the next extent: joined.
        assert_eq!(gnu_extents(&[(0, 100), (300, 100)], 400), [(0, 400)]);
        assert_eq!(
            gnu_extents(&[(0, 100), (512, 10), (600, 1)], 601),
            [(0, 601)]
        );
        assert_eq!(gnu_extents(&[(10, 5)], 100), [(10, 90)]);
        assert_eq!(gnu_extents(&[], 100), []);
        for extents in [
            vec![(0u64, 1u64), (513, 7), (2000, 700), (4096, 4096), (9000, 3)],
            vec![(100, 412), (1000, 24)],
        ] {
            let aligned = gnu_extents(&extents, 9003);
            let (last, rest) = aligned.split_last().unwrap();
            assert!(rest.iter().all(|e| e.1 % 512 == 0), "{aligned:?}");
            assert!(last.0 + last.1 <= 9003);
            for &(off, len) in &extents {
                assert!(aligned.iter().any(|a| a.0 <= off && off + len <= a.0 + a.1));
            }
        }
    }

    #[test]
    fn numbers_switch_to_base256_when_octal_overflows() {
        let mut f = [0u8; 12];
        put_number(&mut f, 0o777);
        assert_eq!(&f, b"00000000777\0");
        put_number(&mut f, (1 << 33) - 1);
        assert_eq!(&f, b"77777777777\0");
        put_number(&mut f, 1 << 33);
        assert_eq!(f[0], 0x80);
        assert_eq!(u64::from_be_bytes(f[4..].try_into().unwrap()), 1 << 33);
    }

    #[test]
    fn regular_header_is_fixed_and_checksummed() {
        let h = regular("sha256-0123456789abcdef/manifest.json", 468, 1_700_000_000).unwrap();
        let header = Header::from_byte_slice(&h);
        assert_eq!(header.entry_type(), EntryType::Regular);
        assert_eq!(header.raw_file_size().unwrap(), 468);
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.username_bytes(), Some(&b""[..]));
        assert_eq!(header.mode().unwrap(), 0o100644);
        assert_eq!(
            header.cksum().unwrap(),
            h.iter()
                .enumerate()
                .map(|(i, &b)| if (148..156).contains(&i) {
                    32
                } else {
                    b as u32
                })
                .sum::<u32>()
        );
        assert!(regular(&"x".repeat(101), 0, 0).is_err());
    }

    #[test]
    fn pax_headers_hold_one_record_of_the_right_length() {
        // Record lengths around 10 and 100 change the length's own digits.
        for n in 0..120 {
            let value = "v".repeat(n);
            let p = pax(
                "sha256-0123456789abcdef/manifest.json",
                "comment",
                &value,
                7,
            )
            .unwrap();
            let header = Header::from_byte_slice(&p[..BLOCK]);
            assert_eq!(header.entry_type(), EntryType::XHeader);
            assert_eq!(
                header.path_bytes().as_ref(),
                b"sha256-0123456789abcdef/PaxHeaders/manifest.json"
            );
            let size = header.raw_file_size().unwrap() as usize;
            assert_eq!(p.len(), BLOCK + size.div_ceil(BLOCK) * BLOCK);
            let parsed = super::super::tar_reader::pax_records(&p[BLOCK..BLOCK + size]).unwrap();
            assert_eq!(parsed.comment.as_deref(), Some(value.as_bytes()));
        }
    }

    #[tokio::test]
    async fn sparse_members_read_back_with_holes() {
        let extents: Vec<(u64, u64)> = (0..30).map(|i| (i * 8192, 512)).collect();
        let real = 30 * 8192 + 100_000;
        let headers = sparse("s/upper.ext4", &extents, real, 42).unwrap();
        assert_eq!(
            headers.len(),
            BLOCK * 3,
            "26 map entries need two extensions"
        );
        let data: Vec<u8> = (0..30 * 512).map(|i| (i % 251) as u8 + 1).collect();
        let mut out = Vec::new();
        member(&mut out, &headers, &data);
        let small = sparse("s/b", &[(4096, 3)], 10_000, 42).unwrap();
        member(&mut out, &small, b"abc");
        out.extend_from_slice(&END_OF_ARCHIVE);

        let members = read_back(out).await;
        assert_eq!(members.len(), 2);
        let (name, kind, mtime, mode, logical) = &members[0];
        assert_eq!(
            (name.as_str(), *kind, *mtime, *mode),
            ("s/upper.ext4", b'S', 42, 0o100644)
        );
        assert_eq!(logical.len() as u64, real);
        for (i, &(off, len)) in extents.iter().enumerate() {
            assert_eq!(
                &logical[off as usize..(off + len) as usize],
                &data[i * 512..(i + 1) * 512]
            );
            assert!(
                logical[(off + len) as usize..(off + 8192) as usize]
                    .iter()
                    .all(|&b| b == 0)
            );
        }
        let mut expected = vec![0u8; 10_000];
        expected[4096..4099].copy_from_slice(b"abc");
        assert_eq!(members[1].4, expected);
    }
}
