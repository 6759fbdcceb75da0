//! The tar reader of import: our own, because the archive must mean to us
//! exactly what it means to GNU tar whatever the pattern in which its bytes
//! arrive (astral-tokio-tar 0.7.0 lost its place when a read returned
//! Pending inside a GNU sparse member's extension blocks, and read that
//! member's data as headers).
//!
//! Two halves. Decoding is pure: [`decode_header`], [`number`],
//! [`pax_records`] and [`sparse_slots`] turn 512-byte blocks into values
//! and are tested on bytes. Reading is a small pull loop, [`TarReader`],
//! that asks its source for exactly the bytes the format says come next
//! (with `read_exact`-style awaits, so a short read or a Pending only
//! delays it) and keeps no state but its position in one member.
//!
//! What it accepts is a strict subset of what GNU tar reads, each part
//! decoded as GNU tar decodes it: GNU, ustar and v7 headers (the ustar
//! prefix joined as GNU tar joins it), octal header checksums (unsigned or
//! signed sums), numeric fields in octal or positive base-256, local pax
//! records (`path`, `linkpath`, `size` applied, attribute keywords checked,
//! `GNU.sparse.*` and unknown keywords refused), GNU long names and link
//! names, and old-GNU sparse members (type `S`: four map slots in the
//! header, then extension blocks of 21). Where GNU tar would accept
//! something odd (overlapping sparse extents, a map that stops short of the
//! real size, a lone zero block, bytes after the end of the archive), warns
//! or fails, or reads a form otherwise than bsdtar (several blanks after a
//! pax length, a long name running into its padding, sparse extents off
//! 512 before another), this reader refuses instead: a refusal is always
//! safe, a different reading never is. docs/archives.md lists the rules
//! field by field; `tar_grammar_tests` tests each.
//!
//! The sparse map is streamed: the first [`MAP_IN_MEMORY`] extents are
//! kept in memory, the rest spilled to an unnamed file while the extension
//! blocks are read, and read back one by one as the data arrives.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::model::text::shown_name;

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// Bytes of extension headers (pax records, GNU long names) one member may
/// carry; sparse maps are not counted here (they are streamed).
pub const MAX_EXTENSION_BYTES: u64 = 1024 * 1024;

/// Bytes that may follow the end-of-archive marker: zero padding only, as
/// tar writes to fill its last record (GNU tar pads to 10,240-byte records;
/// this allows blocking factors up to 2,048).
pub const MAX_TRAILING_BYTES: u64 = 1024 * 1024;

/// Sparse map entries held in memory before the rest spill to a file.
pub const MAP_IN_MEMORY: usize = 65_536;

const HEADER_SPARSE_SLOTS: usize = 4;
const EXTENSION_SPARSE_SLOTS: usize = 21;
const GNU_MAGIC: &[u8; 8] = b"ustar  \0";
const USTAR_MAGIC: &[u8; 6] = b"ustar\0";

/// Why a stream is not a tar archive this reader accepts.
#[derive(Debug)]
pub enum ReadError {
    /// The source failed.
    Io(io::Error),
    /// The stream ended inside a header or a member's data.
    Truncated(&'static str),
    /// The stream ended at a header boundary without an end-of-archive marker.
    NoEndMarker,
    /// A header block's checksum does not match its bytes.
    Checksum,
    /// A header's magic is neither GNU, ustar nor v7.
    Magic,
    /// A numeric field GNU tar would not read as a value.
    Number {
        /// The field.
        field: &'static str,
        /// Why.
        problem: NumberProblem,
    },
    /// A GNU sparse entry whose map is not one this reader accepts.
    SparseMap(&'static str),
    /// A GNU sparse type in a header that is not GNU format (GNU tar would
    /// not read it as sparse).
    SparseNotGnu,
    /// pax `GNU.sparse.*` records (sparse formats 0.x and 1.0).
    PaxSparse,
    /// Malformed pax records.
    Pax(&'static str),
    /// A pax keyword this reader does not accept (GNU tar ignores unknown
    /// ones with a warning, and uses others for members import refuses).
    PaxKeyword(Vec<u8>),
    /// A GNU long name or link name GNU tar and bsdtar would read differently.
    LongName(&'static str),
    /// Two extension headers of the same kind, or a pax path with a GNU long name.
    ExtensionTwice,
    /// Extension headers with no member after them.
    DanglingExtension,
    /// Extension headers over [`MAX_EXTENSION_BYTES`].
    ExtensionTooLarge,
    /// A zero block followed by a non-zero one.
    LoneZeroBlock,
    /// Non-zero bytes after the end-of-archive marker.
    TrailingData,
    /// More than [`MAX_TRAILING_BYTES`] after the end-of-archive marker.
    TrailingTooLong,
}

/// Why a numeric field was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberProblem {
    /// Empty or all blanks.
    Blank,
    /// Not octal digits, nor base-256.
    NotANumber,
    /// Base-256 with the sign bit set.
    Negative,
    /// Larger than GNU tar's range (2^63 - 1), including base-256 with high bytes set.
    OutOfRange,
    /// A uid or gid over 2^32 - 1 (GNU tar's uid_t and gid_t range).
    OverId,
    /// Base-256 in the checksum field, which GNU tar reads as octal only.
    NotOctal,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Truncated(inside) => {
                write!(f, "truncated tar stream: it ends inside {inside}")
            }
            ReadError::NoEndMarker => f.write_str("truncated tar stream: no end-of-archive marker"),
            ReadError::Checksum => f.write_str("corrupt tar stream: header checksum mismatch"),
            ReadError::Magic => f.write_str("corrupt tar stream: header magic is not tar's"),
            ReadError::Number { field, problem } => {
                let why = match problem {
                    NumberProblem::Blank => "is blank",
                    NumberProblem::NotANumber => "is not an octal or base-256 number",
                    NumberProblem::Negative => "is negative (base-256 with the sign bit)",
                    NumberProblem::OutOfRange => "is out of range (over 2^63 - 1)",
                    NumberProblem::OverId => "is out of range (over 2^32 - 1)",
                    NumberProblem::NotOctal => "is base-256, where GNU tar reads only octal",
                };
                write!(f, "corrupt tar stream: {field} field {why}")
            }
            ReadError::SparseMap(why) => write!(f, "invalid GNU sparse map: {why}"),
            ReadError::SparseNotGnu => {
                f.write_str("a GNU sparse ('S') entry needs a GNU-format header")
            }
            ReadError::PaxSparse => f.write_str(
                "pax GNU.sparse records are not supported; use GNU sparse ('S') entries",
            ),
            ReadError::Pax(why) => write!(f, "corrupt tar stream: malformed pax records: {why}"),
            ReadError::PaxKeyword(key) => write!(
                f,
                "pax keyword \"{}\" is not accepted; only {} are",
                shown_name(key),
                PAX_KEYWORDS
            ),
            ReadError::LongName(why) => write!(f, "corrupt tar stream: GNU long name: {why}"),
            ReadError::ExtensionTwice => {
                f.write_str("corrupt tar stream: two extension headers name the same member field")
            }
            ReadError::DanglingExtension => {
                f.write_str("corrupt tar stream: extension headers are not followed by a member")
            }
            ReadError::ExtensionTooLarge => write!(
                f,
                "tar headers and extensions of one member exceed {MAX_EXTENSION_BYTES} bytes"
            ),
            ReadError::LoneZeroBlock => f.write_str(
                "corrupt tar stream: a lone zero block inside the archive (GNU tar stops there)",
            ),
            ReadError::TrailingData => {
                f.write_str("non-zero bytes after the end-of-archive marker")
            }
            ReadError::TrailingTooLong => write!(
                f,
                "more than {MAX_TRAILING_BYTES} bytes after the end-of-archive marker"
            ),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// Read a numeric header field as GNU tar does, strictly: octal digits
/// (leading spaces allowed) ended by NUL or space with only NULs and spaces
/// after, or base-256 (first byte 0x80, big-endian). Values over 2^63 - 1,
/// negative base-256 (first byte 0xff) and anything else are refused.
pub fn number(field: &[u8]) -> Result<u64, NumberProblem> {
    match field.first() {
        Some(0x80) => {
            let (high, low) = field[1..].split_at(field.len().saturating_sub(9));
            if high.iter().any(|&b| b != 0) {
                return Err(NumberProblem::OutOfRange);
            }
            let mut value = 0u64;
            for &b in low {
                value = (value << 8) | u64::from(b);
            }
            if value > i64::MAX as u64 {
                return Err(NumberProblem::OutOfRange);
            }
            Ok(value)
        }
        Some(0xff) => Err(NumberProblem::Negative),
        Some(b) if b & 0x80 != 0 => Err(NumberProblem::NotANumber),
        _ => {
            let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
            let digits = field[start..]
                .iter()
                .position(|b| !(b'0'..=b'7').contains(b))
                .unwrap_or(field.len() - start);
            if digits == 0 {
                return Err(if field[start..].iter().all(|&b| b == 0 || b == b' ') {
                    NumberProblem::Blank
                } else {
                    NumberProblem::NotANumber
                });
            }
            if !field[start + digits..].iter().all(|&b| b == 0 || b == b' ') {
                return Err(NumberProblem::NotANumber);
            }
            let mut value = 0u64;
            for &d in &field[start..start + digits] {
                value = value
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(u64::from(d - b'0')))
                    .ok_or(NumberProblem::OutOfRange)?;
            }
            if value > i64::MAX as u64 {
                return Err(NumberProblem::OutOfRange);
            }
            Ok(value)
        }
    }
}

fn field(block: &[u8], at: usize, len: usize, name: &'static str) -> Result<u64, ReadError> {
    number(&block[at..at + len]).map_err(|problem| ReadError::Number {
        field: name,
        problem,
    })
}

/// Bytes of a NUL-terminated (or full) text field.
fn text(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// The name a GNU long name or link name header (`L`, `K`) holds, from its
/// data of `size` bytes followed by its padding. GNU tar reads the name to
/// the first NUL of the whole blocks, padding included; bsdtar to the first
/// NUL within the size. They agree when a NUL comes within the size or the
/// padding is zeros; anything else is refused, as is an empty name (GNU tar
/// substitutes '.', bsdtar skips the member).
pub fn gnu_long_name(padded: &[u8], size: usize) -> Result<&[u8], ReadError> {
    let (data, padding) = padded.split_at(size);
    let name = text(data);
    if name.len() == data.len() && padding.iter().any(|&b| b != 0) {
        return Err(ReadError::LongName(
            "no NUL within its size and bytes in its padding (GNU tar and bsdtar read it differently)",
        ));
    }
    if name.is_empty() {
        return Err(ReadError::LongName("it is empty"));
    }
    Ok(name)
}

/// One header block, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// The name (with the ustar prefix joined as GNU tar joins it).
    pub name: Vec<u8>,
    /// The link name field.
    pub link: Vec<u8>,
    /// The type flag byte.
    pub typeflag: u8,
    /// The size field: bytes of data stored after the header.
    pub size: u64,
    /// GNU-format header (`ustar  \0`).
    pub gnu: bool,
}

/// Whether `block` is all zeros (an end-of-archive block).
pub fn is_zero_block(block: &[u8; BLOCK]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Decode a header block (not a zero block): checksum, magic, name, type, size.
pub fn decode_header(block: &[u8; BLOCK]) -> Result<RawHeader, ReadError> {
    if block[148] & 0x80 != 0 {
        return Err(ReadError::Number {
            field: "checksum",
            problem: NumberProblem::NotOctal,
        });
    }
    let recorded = field(block, 148, 8, "checksum")?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if recorded != unsigned && recorded as i64 != signed {
        return Err(ReadError::Checksum);
    }
    let magic = &block[257..265];
    let gnu = magic == GNU_MAGIC;
    let ustar = &magic[..6] == USTAR_MAGIC;
    if !gnu && !ustar && magic.iter().any(|&b| b != 0) {
        return Err(ReadError::Magic);
    }
    metadata(block, gnu || ustar, ustar && looks_like_star(block))?;
    let mut name = Vec::new();
    let prefix = text(&block[345..500]);
    if ustar && !prefix.is_empty() {
        name.extend_from_slice(prefix);
        name.push(b'/');
    }
    name.extend_from_slice(text(&block[..100]));
    Ok(RawHeader {
        name,
        link: text(&block[157..257]).to_vec(),
        typeflag: block[156],
        size: field(block, 124, 12, "size")?,
        gnu,
    })
}

/// The numeric fields GNU tar parses besides size and checksum: mode, uid,
/// gid and mtime, and the device numbers of ustar and GNU headers. Their
/// values are not used (import installs files with its own owner, mode and
/// time), but garbage in them makes GNU tar exit 2 (mode, mtime; uid and gid
/// when the user or group name does not resolve on the machine at hand) and
/// bsdtar refuse the archive (device numbers too), so each must be a number
/// [`number`] reads or all NULs (which both read as 0); a uid or gid over
/// 2^32 - 1 is refused (GNU tar exits 2), and so is a negative base-256
/// mtime (GNU tar warns of an implausibly old time stamp). In a header GNU
/// tar takes for star's format (`star`), atime and ctime are parsed too.
pub fn metadata(block: &[u8; BLOCK], extended: bool, star: bool) -> Result<(), ReadError> {
    let mut fields = vec![
        (100, 8, "mode"),
        (108, 8, "uid"),
        (116, 8, "gid"),
        (136, 12, "mtime"),
    ];
    if extended {
        fields.extend([(329, 8, "devmajor"), (337, 8, "devminor")]);
    }
    if star {
        fields.extend([(476, 12, "atime"), (488, 12, "ctime")]);
    }
    for (at, len, name) in fields {
        let bytes = &block[at..at + len];
        if bytes.iter().all(|&b| b == 0) {
            continue;
        }
        match (number(bytes), name) {
            (Ok(v), "uid" | "gid") if v > u64::from(u32::MAX) => Err(NumberProblem::OverId),
            (Ok(_), _) => Ok(()),
            (Err(problem), _) => Err(problem),
        }
        .map_err(|problem| ReadError::Number {
            field: name,
            problem,
        })?;
    }
    Ok(())
}

/// Whether GNU tar reads a ustar header as star's format, whose prefix is
/// 131 bytes followed by atime and ctime: the prefix's last byte NUL, and
/// each time starting with an octal digit and ending in a space.
pub fn looks_like_star(block: &[u8; BLOCK]) -> bool {
    let octal = |b: u8| (b'0'..=b'7').contains(&b);
    block[475] == 0
        && octal(block[476])
        && block[487] == b' '
        && octal(block[488])
        && block[499] == b' '
}

/// One slot of a sparse map: `None` for an empty slot (its length field
/// starts with NUL, which ends the map for GNU tar).
pub fn sparse_slot(slot: &[u8]) -> Result<Option<(u64, u64)>, ReadError> {
    if slot[12] == 0 {
        return if slot.iter().all(|&b| b == 0) {
            Ok(None)
        } else {
            Err(ReadError::SparseMap("an empty slot holds bytes"))
        };
    }
    Ok(Some((
        field(slot, 0, 12, "sparse offset")?,
        field(slot, 12, 12, "sparse length")?,
    )))
}

/// The slots of a header's (4) or extension block's (21) sparse map and its
/// "extended" flag.
pub fn sparse_slots(block: &[u8; BLOCK], in_header: bool) -> (Vec<&[u8]>, u8) {
    if in_header {
        let slots = (0..HEADER_SPARSE_SLOTS)
            .map(|i| &block[386 + 24 * i..386 + 24 * (i + 1)])
            .collect();
        (slots, block[482])
    } else {
        let slots = (0..EXTENSION_SPARSE_SLOTS)
            .map(|i| &block[24 * i..24 * (i + 1)])
            .collect();
        (slots, block[504])
    }
}

/// The pax records this reader applies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pax {
    /// `path`.
    pub path: Option<Vec<u8>>,
    /// `linkpath`.
    pub linkpath: Option<Vec<u8>>,
    /// `size`.
    pub size: Option<u64>,
    /// `comment`: ignored by tar, read by import for a carried name.
    pub comment: Option<Vec<u8>>,
}

/// The pax keywords [`pax_records`] accepts, as refusals list them.
pub const PAX_KEYWORDS: &str = "path, linkpath, size, comment, mtime, atime, ctime, uid, gid, \
uname, gname, charset, SCHILY.xattr.*, SCHILY.acl.* and RHT.security.selinux";

/// Parse local pax records (`<len> <key>=<value>\n` each, see
/// [`pax_record`]). `path`, `linkpath` and `size` are applied, `comment`
/// kept; the attribute keywords GNU tar decodes are checked as it checks
/// them (a value it calls malformed makes it exit 2) and otherwise ignored;
/// `GNU.sparse.*` and every other keyword are refused (GNU tar warns about
/// unknown ones, and uses `GNU.dumpdir` and `GNU.volume.*` for members import
/// does not take).
pub fn pax_records(mut data: &[u8]) -> Result<Pax, ReadError> {
    let mut pax = Pax::default();
    while !data.is_empty() {
        let (key, value, rest) = pax_record(data)?;
        apply_pax(&mut pax, key, value)?;
        data = rest;
    }
    Ok(pax)
}

/// A pax record's key and value, and the records after it.
pub type RecordSplit<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// Split the first record off `data`: its key, its value and the rest. The
/// grammar is where GNU tar 1.34 and bsdtar read a record alike: decimal
/// digits, exactly one space (GNU tar skips a run of blanks there and
/// applies the record; bsdtar reads the extra blanks into the keyword and
/// ignores it), the key up to the first `=`, the value, a newline as the
/// record's last byte, and no NUL anywhere in it (GNU tar stops decoding the
/// header at a NUL in a keyword and cuts a value at one).
pub fn pax_record(data: &[u8]) -> Result<RecordSplit<'_>, ReadError> {
    let digits = data.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(ReadError::Pax("a record does not start with its length"));
    }
    if data.get(digits) != Some(&b' ') {
        return Err(ReadError::Pax(
            "a record's length is not followed by a space",
        ));
    }
    if matches!(data.get(digits + 1), Some(b' ' | b'\t')) {
        return Err(ReadError::Pax(
            "more than one blank after a record's length (GNU tar and bsdtar read it differently)",
        ));
    }
    let len = std::str::from_utf8(&data[..digits])
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&len| len > digits + 2 && len <= data.len())
        .ok_or(ReadError::Pax("a record's length does not match it"))?;
    let (record, rest) = data.split_at(len);
    if record[len - 1] != b'\n' {
        return Err(ReadError::Pax("a record does not end in a newline"));
    }
    if record.contains(&0) {
        return Err(ReadError::Pax("a record holds a NUL byte"));
    }
    let body = &record[digits + 1..len - 1];
    let eq = body
        .iter()
        .position(|&b| b == b'=')
        .ok_or(ReadError::Pax("a record has no '='"))?;
    if eq == 0 {
        return Err(ReadError::Pax("a record has an empty key"));
    }
    Ok((&body[..eq], &body[eq + 1..], rest))
}

/// Apply one record to `pax`, or refuse it (see [`pax_records`]).
fn apply_pax(pax: &mut Pax, key: &[u8], value: &[u8]) -> Result<(), ReadError> {
    match key {
        b"path" if value.is_empty() => {
            return Err(ReadError::Pax(
                "an empty path (GNU tar substitutes '.', bsdtar keeps the header's)",
            ));
        }
        b"path" => pax.path = Some(value.to_vec()),
        b"linkpath" => pax.linkpath = Some(value.to_vec()),
        b"comment" => pax.comment = Some(value.to_vec()),
        b"size" => {
            let size = decimal(value)
                .filter(|&v| v <= i64::MAX as u64)
                .ok_or(ReadError::Pax("size is not a decimal number in range"))?;
            pax.size = Some(size);
        }
        b"uid" | b"gid" => {
            decimal(value)
                .filter(|&v| v <= u64::from(u32::MAX))
                .ok_or(ReadError::Pax(
                    "a uid or gid is not a decimal number in range",
                ))?;
        }
        b"mtime" | b"atime" | b"ctime" => {
            let digits = value.strip_prefix(b"-").unwrap_or(value);
            let (whole, fraction) = match digits.iter().position(|&b| b == b'.') {
                Some(dot) => (&digits[..dot], Some(&digits[dot + 1..])),
                None => (digits, None),
            };
            if decimal(whole).is_none() || fraction.is_some_and(|f| decimal(f).is_none()) {
                return Err(ReadError::Pax("a time is not a decimal number of seconds"));
            }
        }
        b"uname" | b"gname" | b"charset" => {
            if std::str::from_utf8(value).is_err() {
                return Err(ReadError::Pax("a user, group or charset name is not UTF-8"));
            }
        }
        b"SCHILY.acl.access"
        | b"SCHILY.acl.default"
        | b"SCHILY.acl.ace"
        | b"RHT.security.selinux" => {}
        k if k.starts_with(b"SCHILY.xattr.") => {}
        k if k.starts_with(b"GNU.sparse.") => return Err(ReadError::PaxSparse),
        other => return Err(ReadError::PaxKeyword(other.to_vec())),
    }
    Ok(())
}

/// A run of ASCII decimal digits (no sign, no blanks), if it fits a u64.
fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A member's header with its extensions applied: a pax `path` or GNU long
/// name over the header's name, a pax `linkpath` or GNU long link name over
/// its link name, a pax `size` over its size (both kinds for one field are
/// refused).
fn apply_extensions(
    header: RawHeader,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Pax,
) -> Result<MemberHeader, ReadError> {
    if (pax.path.is_some() && long_name.is_some())
        || (pax.linkpath.is_some() && long_link.is_some())
    {
        return Err(ReadError::ExtensionTwice);
    }
    let stored = pax.size.unwrap_or(header.size);
    Ok(MemberHeader {
        path: pax.path.or(long_name).unwrap_or(header.name),
        link: pax.linkpath.or(long_link).unwrap_or(header.link),
        typeflag: header.typeflag,
        size: stored,
        stored,
        extents: 0,
        comment: pax.comment,
    })
}

/// Add the slots of one map block (the header's or an extension block's) to
/// `map`; whether an extension block follows.
fn map_block(
    map: &mut MapBuilder,
    block: &[u8; BLOCK],
    in_header: bool,
) -> Result<bool, ReadError> {
    let (slots, extended) = sparse_slots(block, in_header);
    let mut ended = false;
    for slot in slots {
        match sparse_slot(slot)? {
            Some(_) if ended => {
                return Err(ReadError::SparseMap("an entry follows an empty slot"));
            }
            Some(entry) => map.push(entry)?,
            None => ended = true,
        }
    }
    match extended {
        0 => Ok(false),
        1 if ended => Err(ReadError::SparseMap(
            "an extension block follows a map that ended",
        )),
        1 => Ok(true),
        _ => Err(ReadError::SparseMap("the extended flag is not 0 or 1")),
    }
}

/// A member's header, extensions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHeader {
    /// The path (pax `path` or GNU long name over the header's).
    pub path: Vec<u8>,
    /// The link name (pax `linkpath` or GNU long link name over the header's).
    pub link: Vec<u8>,
    /// The type flag byte.
    pub typeflag: u8,
    /// Logical size: the real size of a sparse member, else the stored size.
    pub size: u64,
    /// Bytes stored in the archive.
    pub stored: u64,
    /// Number of sparse map entries (0 for a dense member).
    pub extents: u64,
    /// The pax `comment` record before this member, if any.
    pub comment: Option<Vec<u8>>,
}

/// The next piece of a member's logical content, see [`TarReader::read_data`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// `n` bytes of data, in the caller's buffer.
    Data(usize),
    /// A hole of this many zero bytes.
    Zeros(u64),
}

/// A sparse map being streamed: the first [`MAP_IN_MEMORY`] entries in
/// memory, the rest in an unnamed file.
struct SparseMap {
    head: std::vec::IntoIter<(u64, u64)>,
    spill: Option<BufReader<File>>,
}

impl SparseMap {
    fn next(&mut self) -> Result<Option<(u64, u64)>, ReadError> {
        if let Some(e) = self.head.next() {
            return Ok(Some(e));
        }
        let Some(spill) = &mut self.spill else {
            return Ok(None);
        };
        let mut entry = [0u8; 16];
        match spill.read_exact(&mut entry) {
            Ok(()) => Ok(Some((
                u64::from_le_bytes(entry[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(entry[8..].try_into().expect("8 bytes")),
            ))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(ReadError::Io(e)),
        }
    }
}

/// Builds a [`SparseMap`] while the header and extension blocks are read,
/// checking each entry as it comes: in order, not overlapping, within the
/// real size, only the last one empty, lengths adding up to the stored size,
/// the last one ending at the real size (where GNU tar ends the file).
struct MapBuilder {
    real_size: u64,
    stored: u64,
    end: u64,
    data: u64,
    count: u64,
    closed: bool,
    /// A data extent whose length is not a multiple of [`BLOCK`] was seen.
    unaligned: bool,
    head: Vec<(u64, u64)>,
    spill: Option<BufWriter<File>>,
    spill_dir: PathBuf,
}

impl MapBuilder {
    fn new(real_size: u64, stored: u64, spill_dir: PathBuf) -> Self {
        MapBuilder {
            real_size,
            stored,
            end: 0,
            data: 0,
            count: 0,
            closed: false,
            unaligned: false,
            head: Vec::new(),
            spill: None,
            spill_dir,
        }
    }

    fn push(&mut self, (off, len): (u64, u64)) -> Result<(), ReadError> {
        if self.closed {
            return Err(ReadError::SparseMap("an entry follows the empty final one"));
        }
        if len > 0 && self.unaligned {
            return Err(ReadError::SparseMap(
                "an extent whose length is not a multiple of 512 is not the last (GNU tar reads \
                 each extent from whole blocks, bsdtar back to back)",
            ));
        }
        self.unaligned |= len % BLOCK as u64 != 0;
        if off < self.end {
            return Err(ReadError::SparseMap("extents out of order or overlapping"));
        }
        let end = off
            .checked_add(len)
            .filter(|&e| e <= self.real_size)
            .ok_or(ReadError::SparseMap("an extent ends past the real size"))?;
        if len == 0 {
            if off != self.real_size {
                return Err(ReadError::SparseMap(
                    "an empty extent before the end of the file",
                ));
            }
            self.closed = true;
        }
        self.data += len;
        if self.data > self.stored {
            return Err(ReadError::SparseMap(
                "extents hold more bytes than the member stores",
            ));
        }
        self.end = end;
        self.count += 1;
        if self.head.len() < MAP_IN_MEMORY {
            self.head.push((off, len));
            return Ok(());
        }
        if self.spill.is_none() {
            self.spill = Some(BufWriter::new(tempfile::tempfile_in(&self.spill_dir)?));
        }
        let spill = self.spill.as_mut().expect("just set");
        spill.write_all(&off.to_le_bytes())?;
        spill.write_all(&len.to_le_bytes())?;
        Ok(())
    }

    fn finish(self) -> Result<(SparseMap, u64), ReadError> {
        if self.data != self.stored {
            return Err(ReadError::SparseMap(
                "extents hold fewer bytes than the member stores",
            ));
        }
        if self.end != self.real_size {
            return Err(ReadError::SparseMap(
                "the map ends before the real size (GNU tar would write a shorter file)",
            ));
        }
        let spill = match self.spill {
            None => None,
            Some(w) => {
                let mut file = w.into_inner().map_err(|e| ReadError::Io(e.into_error()))?;
                file.rewind()?;
                Some(BufReader::new(file))
            }
        };
        Ok((
            SparseMap {
                head: self.head.into_iter(),
                spill,
            },
            self.count,
        ))
    }
}

/// Where the reader is inside the current member.
enum Data {
    /// Between members.
    None,
    /// A dense member: bytes left.
    Dense { left: u64 },
    /// A sparse member: the map, the logical position, the current extent.
    Sparse {
        map: SparseMap,
        pos: u64,
        size: u64,
        extent: Option<(u64, u64)>,
    },
}

/// Reads members from a tar stream, one at a time; see the module docs.
pub struct TarReader<R> {
    inner: R,
    spill_dir: PathBuf,
    data: Data,
    /// Padding after the current member's data.
    pad: u64,
    /// Bytes consumed so far.
    position: u64,
    ended: bool,
}

impl<R: AsyncRead + Unpin> TarReader<R> {
    /// Read from `inner`; sparse maps too long to hold spill to unnamed files in `spill_dir`.
    pub fn new(inner: R, spill_dir: &Path) -> Self {
        TarReader {
            inner,
            spill_dir: spill_dir.to_path_buf(),
            data: Data::None,
            pad: 0,
            position: 0,
            ended: false,
        }
    }

    /// Bytes of the tar stream consumed so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    async fn fill(&mut self, buf: &mut [u8], inside: &'static str) -> Result<(), ReadError> {
        match self.inner.read_exact(buf).await {
            Ok(_) => {
                self.position += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ReadError::Truncated(inside)),
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Read a block; `None` at a clean end of stream.
    async fn block(&mut self, inside: &'static str) -> Result<Option<[u8; BLOCK]>, ReadError> {
        let mut block = [0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            let n = self.inner.read(&mut block[filled..]).await?;
            if n == 0 {
                return if filled == 0 {
                    Ok(None)
                } else {
                    Err(ReadError::Truncated(inside))
                };
            }
            filled += n;
            self.position += n as u64;
        }
        Ok(Some(block))
    }

    async fn skip(&mut self, mut n: u64, inside: &'static str) -> Result<(), ReadError> {
        let mut buf = [0u8; BLOCK];
        while n > 0 {
            let k = n.min(BLOCK as u64) as usize;
            self.fill(&mut buf[..k], inside).await?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Extension data (pax records, long names) with its padding to whole
    /// blocks: bounded by the budget.
    async fn extension(&mut self, size: u64, budget: &mut u64) -> Result<Vec<u8>, ReadError> {
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if padded > *budget {
            return Err(ReadError::ExtensionTooLarge);
        }
        *budget -= padded;
        let mut data = vec![0u8; padded as usize];
        self.fill(&mut data, "an extension header").await?;
        Ok(data)
    }

    /// The next member's header, or `None` after the end-of-archive marker.
    /// Whatever is left of the current member's data is skipped first.
    pub async fn next(&mut self) -> Result<Option<MemberHeader>, ReadError> {
        if self.ended {
            return Ok(None);
        }
        while self.read_data(&mut [0u8; 4096]).await?.is_some() {}
        let mut budget = MAX_EXTENSION_BYTES;
        let (mut long_name, mut long_link, mut pax) = (None, None, None::<Pax>);
        loop {
            let Some(block) = self.block("a header").await? else {
                return Err(
                    if long_name.is_some() || long_link.is_some() || pax.is_some() {
                        ReadError::DanglingExtension
                    } else {
                        ReadError::NoEndMarker
                    },
                );
            };
            if is_zero_block(&block) {
                if long_name.is_some() || long_link.is_some() || pax.is_some() {
                    return Err(ReadError::DanglingExtension);
                }
                match self.block("the end-of-archive marker").await? {
                    Some(second) if is_zero_block(&second) => {}
                    Some(_) => return Err(ReadError::LoneZeroBlock),
                    None => return Err(ReadError::Truncated("the end-of-archive marker")),
                }
                self.ended = true;
                return Ok(None);
            }
            if budget < BLOCK as u64 {
                return Err(ReadError::ExtensionTooLarge);
            }
            budget -= BLOCK as u64;
            let header = decode_header(&block)?;
            match header.typeflag {
                b'x' => {
                    if pax.is_some() {
                        return Err(ReadError::ExtensionTwice);
                    }
                    let data = self.extension(header.size, &mut budget).await?;
                    pax = Some(pax_records(&data[..header.size as usize])?);
                }
                b'L' | b'K' => {
                    let data = self.extension(header.size, &mut budget).await?;
                    let slot = if header.typeflag == b'L' {
                        &mut long_name
                    } else {
                        &mut long_link
                    };
                    if slot.is_some() {
                        return Err(ReadError::ExtensionTwice);
                    }
                    *slot = Some(gnu_long_name(&data, header.size as usize)?.to_vec());
                }
                _ => return self.member(block, header, long_name, long_link, pax).await,
            }
        }
    }

    async fn member(
        &mut self,
        block: [u8; BLOCK],
        header: RawHeader,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        pax: Option<Pax>,
    ) -> Result<Option<MemberHeader>, ReadError> {
        let pax = pax.unwrap_or_default();
        let pax_size = pax.size.is_some();
        let (typeflag, gnu) = (header.typeflag, header.gnu);
        let mut member = apply_extensions(header, long_name, long_link, pax)?;
        let stored = member.stored;
        self.pad = padding(stored);
        if typeflag != b'S' {
            self.data = Data::Dense { left: stored };
            return Ok(Some(member));
        }
        if !gnu {
            return Err(ReadError::SparseNotGnu);
        }
        if pax_size {
            return Err(ReadError::SparseMap("a pax size on a GNU sparse member"));
        }
        let real_size = field(&block, 483, 12, "sparse real size")?;
        let map = MapBuilder::new(real_size, stored, self.spill_dir.clone());
        let (mut map, count) = self.sparse_map(block, map).await?.finish()?;
        let extent = map.next()?;
        member.size = real_size;
        member.extents = count;
        self.data = Data::Sparse {
            map,
            pos: 0,
            size: real_size,
            extent,
        };
        Ok(Some(member))
    }

    /// Read a GNU sparse member's map: the four slots of its header, then
    /// extension blocks of 21 for as long as the extended flag says.
    async fn sparse_map(
        &mut self,
        header: [u8; BLOCK],
        mut map: MapBuilder,
    ) -> Result<MapBuilder, ReadError> {
        let mut current = header;
        let mut in_header = true;
        while map_block(&mut map, &current, in_header)? {
            let mut next = [0u8; BLOCK];
            self.fill(&mut next, "a sparse extension block").await?;
            if next[504..].iter().skip(1).any(|&b| b != 0) {
                return Err(ReadError::SparseMap(
                    "an extension block's padding holds bytes",
                ));
            }
            current = next;
            in_header = false;
        }
        Ok(map)
    }

    /// The next piece of the current member's logical content: data fills
    /// `buf` as far as the member allows, holes come as [`Chunk::Zeros`].
    /// `None` at the member's end (its padding then consumed).
    pub async fn read_data(&mut self, buf: &mut [u8]) -> Result<Option<Chunk>, ReadError> {
        loop {
            match &mut self.data {
                Data::None => return Ok(None),
                Data::Dense { left: 0 } => break,
                Data::Dense { left } => {
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    self.fill(&mut buf[..n], "a member's data").await?;
                    return Ok(Some(Chunk::Data(n)));
                }
                Data::Sparse {
                    map,
                    pos,
                    size,
                    extent,
                } => match *extent {
                    None if *pos == *size => break,
                    None => {
                        let n = *size - *pos;
                        *pos = *size;
                        return Ok(Some(Chunk::Zeros(n)));
                    }
                    Some((off, _)) if *pos < off => {
                        let n = off - *pos;
                        *pos = off;
                        return Ok(Some(Chunk::Zeros(n)));
                    }
                    Some((off, len)) if *pos == off + len => *extent = map.next()?,
                    Some((off, len)) => {
                        let n = (off + len - *pos).min(buf.len() as u64) as usize;
                        *pos += n as u64;
                        self.fill(&mut buf[..n], "a member's data").await?;
                        return Ok(Some(Chunk::Data(n)));
                    }
                },
            }
        }
        self.data = Data::None;
        let pad = std::mem::take(&mut self.pad);
        self.skip(pad, "a member's padding").await?;
        Ok(None)
    }

    /// After the end-of-archive marker: read to the end of the stream,
    /// refusing anything but zero padding of at most [`MAX_TRAILING_BYTES`].
    pub async fn finish(&mut self) -> Result<(), ReadError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut seen = 0u64;
        loop {
            let n = self.inner.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            seen += n as u64;
            self.position += n as u64;
            if !buf[..n].iter().all(|&b| b == 0) {
                return Err(ReadError::TrailingData);
            }
            if seen > MAX_TRAILING_BYTES {
                return Err(ReadError::TrailingTooLong);
            }
        }
    }
}

/// Zero bytes that follow `len` bytes of member data to end its last block.
pub fn padding(len: u64) -> u64 {
    (BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_numbers() {
        assert_eq!(number(b"00000000777\0"), Ok(0o777));
        assert_eq!(number(b"  777 \0\0"), Ok(0o777));
        assert_eq!(number(b"0000000\0"), Ok(0));
        assert_eq!(number(b"\0\0\0\0"), Err(NumberProblem::Blank));
        assert_eq!(number(b"        "), Err(NumberProblem::Blank));
        assert_eq!(number(b"0007x\0"), Err(NumberProblem::NotANumber));
        assert_eq!(number(b"00 7\0"), Err(NumberProblem::NotANumber));
        assert_eq!(number(b"+0000000000\0"), Err(NumberProblem::NotANumber));
        assert_eq!(number(b"77777777777\0"), Ok((1 << 33) - 1));
    }

    #[test]
    fn base256_numbers() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..].copy_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(number(&f), Ok(1 << 40));
        let mut high = f;
        high[3] = 1;
        assert_eq!(number(&high), Err(NumberProblem::OutOfRange));
        let mut top = f;
        top[4..].copy_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(number(&top), Err(NumberProblem::OutOfRange));
        let negative = [0xffu8; 12];
        assert_eq!(number(&negative), Err(NumberProblem::Negative));
        let mut odd = f;
        odd[0] = 0x81;
        assert_eq!(number(&odd), Err(NumberProblem::NotANumber));
    }

    fn block(magic: &[u8], name: &[u8], prefix: &[u8]) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name);
        b[124..136].copy_from_slice(b"00000000012\0");
        b[156] = b'0';
        b[257..257 + magic.len()].copy_from_slice(magic);
        b[345..345 + prefix.len()].copy_from_slice(prefix);
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }

    #[test]
    fn headers_join_the_ustar_prefix_as_gnu_tar_does() {
        let ustar = decode_header(&block(b"ustar\x0000", b"file", b"dir")).unwrap();
        assert_eq!(
            (ustar.name.as_slice(), ustar.size, ustar.gnu),
            (&b"dir/file"[..], 10, false)
        );
        // In a GNU header those bytes are other fields, never a prefix.
        let gnu = decode_header(&block(GNU_MAGIC, b"file", b"dir")).unwrap();
        assert_eq!((gnu.name.as_slice(), gnu.gnu), (&b"file"[..], true));
        let v7 = decode_header(&block(b"", b"file", b"")).unwrap();
        assert_eq!(v7.name, b"file");
        assert!(matches!(
            decode_header(&block(b"tarxx\0", b"file", b"")),
            Err(ReadError::Magic)
        ));
        let mut bad = block(GNU_MAGIC, b"file", b"");
        bad[0] ^= 1;
        assert!(matches!(decode_header(&bad), Err(ReadError::Checksum)));
    }

    #[test]
    fn sparse_slots_end_at_an_empty_length() {
        let mut slot = [0u8; 24];
        assert!(sparse_slot(&slot).unwrap().is_none());
        slot[..12].copy_from_slice(b"00000001000\0");
        assert!(matches!(sparse_slot(&slot), Err(ReadError::SparseMap(_))));
        slot[12..].copy_from_slice(b"00000000100\0");
        assert_eq!(sparse_slot(&slot).unwrap(), Some((0o1000, 0o100)));
    }

    #[test]
    fn pax_records_parse_strictly() {
        let p = pax_records(b"16 path=a/b/cde\n11 size=42\n20 mtime=1700000000\n").unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"a/b/cde"[..]));
        assert_eq!(p.size, Some(42));
        assert!(matches!(
            pax_records(b"22 GNU.sparse.size=10\n"),
            Err(ReadError::PaxSparse)
        ));
        assert!(pax_records(b"15 path=a/b/cde\n").is_err());
        assert!(pax_records(b"x path=a\n").is_err());
        assert!(pax_records(b"9 path=a").is_err());
        assert!(pax_records(b"11 size=-1\n").is_err());
    }
}
