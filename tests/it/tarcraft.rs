//! A raw tar writer for tests: 512-byte GNU/ustar headers written by hand
//! with correct checksums, so tests can build both valid archives and
//! hostile ones (pax records, GNU long names, links, devices, global
//! headers, bad checksums, sparse maps, truncation).

#![allow(dead_code)]

const BLOCK: usize = 512;

/// Header flavour: GNU (`ustar  \0`) or POSIX ustar (`ustar\0` `00`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    Gnu,
    Ustar,
}

/// An archive being written.
#[derive(Default, Clone)]
pub struct Tar {
    pub bytes: Vec<u8>,
}

/// A numeric field in octal and a NUL, or in GNU base-256 (high bit set,
/// big-endian value) when the octal does not fit, as GNU tar writes sizes
/// and offsets of 8 GiB and more.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    if s.len() <= digits {
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
        return;
    }
    assert!(
        field.len() >= 9,
        "{value} does not fit in {digits} octal digits"
    );
    field.fill(0);
    let n = field.len();
    field[n - 8..].copy_from_slice(&value.to_be_bytes());
    field[0] |= 0x80;
}

/// A blank header of `flavour` with type, path, size and link name set; the checksum is not yet set.
pub fn header(flavour: Flavour, typeflag: u8, path: &[u8], size: u64, link: &[u8]) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = path.len().min(100);
    h[..n].copy_from_slice(&path[..n]);
    octal(
        &mut h[100..108],
        if typeflag == b'5' { 0o755 } else { 0o644 },
    );
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[156] = typeflag;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    match flavour {
        Flavour::Gnu => h[257..265].copy_from_slice(b"ustar  \0"),
        Flavour::Ustar => {
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
        }
    }
    h
}

/// Compute and store the header checksum.
pub fn seal(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

impl Tar {
    pub fn new() -> Self {
        Tar::default()
    }

    fn pad(&mut self) {
        let rem = self.bytes.len() % BLOCK;
        if rem != 0 {
            self.bytes.extend(std::iter::repeat_n(0, BLOCK - rem));
        }
    }

    /// Append a sealed header and its data.
    pub fn raw(&mut self, mut h: [u8; BLOCK], data: &[u8]) -> &mut Self {
        seal(&mut h);
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(data);
        self.pad();
        self
    }

    /// Any entry, GNU flavour; long paths go through a GNU 'L' record.
    pub fn entry(&mut self, typeflag: u8, path: &[u8], data: &[u8], link: &[u8]) -> &mut Self {
        if path.len() > 100 {
            self.long_name(path);
        }
        let h = header(Flavour::Gnu, typeflag, path, data.len() as u64, link);
        self.raw(h, data)
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(b'0', path.as_bytes(), data, b"")
    }

    /// A directory (`path` should end in `/`).
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(b'5', path.as_bytes(), b"", b"")
    }

    /// A GNU long name record for the next entry.
    pub fn long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut data = name.to_vec();
        data.push(0);
        let h = header(Flavour::Gnu, b'L', b"././@LongLink", data.len() as u64, b"");
        self.raw(h, &data)
    }

    fn pax_data(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in records {
            let body_len = k.len() + v.len() + 3;
            let mut len = body_len + 1;
            while format!("{len}").len() + body_len != len {
                len += 1;
            }
            out.extend_from_slice(format!("{len} {k}=").as_bytes());
            out.extend_from_slice(v);
            out.push(b'\n');
        }
        out
    }

    /// A local pax header ('x') for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data = Self::pax_data(records);
        let h = header(
            Flavour::Ustar,
            b'x',
            b"PaxHeaders/x",
            data.len() as u64,
            b"",
        );
        self.raw(h, &data)
    }

    /// A global pax header ('g').
    pub fn global_pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let data = Self::pax_data(records);
        let h = header(
            Flavour::Ustar,
            b'g',
            b"pax_global_header",
            data.len() as u64,
            b"",
        );
        self.raw(h, &data)
    }

    /// A GNU sparse ('S') file of `real_size` logical bytes holding `extents`
    /// (offset, data), in order; 512-aligned offsets and lengths, as GNU tar writes.
    pub fn sparse(&mut self, path: &str, real_size: u64, extents: &[(u64, Vec<u8>)]) -> &mut Self {
        let stored: u64 = extents.iter().map(|(_, d)| d.len() as u64).sum();
        let mut h = header(Flavour::Gnu, b'S', path.as_bytes(), stored, b"");
        let mut map: Vec<(u64, u64)> = extents.iter().map(|(o, d)| (*o, d.len() as u64)).collect();
        if map.last().is_none_or(|(o, l)| o + l < real_size) {
            map.push((real_size, 0));
        }
        let (first, rest) = map.split_at(map.len().min(4));
        for (i, (o, l)) in first.iter().enumerate() {
            let at = 386 + i * 24;
            octal(&mut h[at..at + 12], *o);
            octal(&mut h[at + 12..at + 24], *l);
        }
        h[482] = u8::from(!rest.is_empty());
        octal(&mut h[483..495], real_size);
        seal(&mut h);
        self.bytes.extend_from_slice(&h);
        let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
        for (ci, chunk) in chunks.iter().enumerate() {
            let mut ext = [0u8; BLOCK];
            for (i, (o, l)) in chunk.iter().enumerate() {
                let at = i * 24;
                octal(&mut ext[at..at + 12], *o);
                octal(&mut ext[at + 12..at + 24], *l);
            }
            ext[504] = u8::from(ci + 1 < chunks.len());
            self.bytes.extend_from_slice(&ext);
        }
        for (_, d) in extents {
            self.bytes.extend_from_slice(d);
        }
        self.pad();
        self
    }

    /// The archive with its two end-of-archive blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.extend([0u8; 2 * BLOCK]);
        out
    }
}

/// The 4 KiB blocks of `bytes` that hold data, as sparse extents.
pub fn data_extents(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    bytes
        .chunks(4096)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&b| b != 0))
        .map(|(i, c)| ((i * 4096) as u64, c.to_vec()))
        .collect()
}

/// zstd-compress `bytes` (level 3, one frame).
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd_with(bytes, &[])
}

/// `bytes` compressed as one streamed zstd frame with these parameters (no
/// pledged size, so a window log set here is what the frame declares).
pub fn zstd_with(bytes: &[u8], params: &[async_compression::zstd::CParameter]) -> Vec<u8> {
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut enc = async_compression::tokio::write::ZstdEncoder::with_quality_and_params(
            Vec::new(),
            async_compression::Level::Default,
            params,
        );
        enc.write_all(bytes).await.unwrap();
        enc.shutdown().await.unwrap();
        enc.into_inner()
    })
}

/// `<len><sep><key>=<value>\n` with its length computed, `sep` as given
/// (one space in a well-formed record).
pub fn pax_record(sep: &str, key: &[u8], value: &[u8]) -> Vec<u8> {
    let body_len = sep.len() + key.len() + value.len() + 2;
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len += 1;
    }
    let mut out = format!("{len}{sep}").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

impl Tar {
    /// A local pax header ('x') holding `data` exactly as given.
    pub fn pax_raw(&mut self, data: &[u8]) -> &mut Self {
        let h = header(
            Flavour::Ustar,
            b'x',
            b"PaxHeaders/x",
            data.len() as u64,
            b"",
        );
        self.raw(h, data)
    }

    /// A GNU long name ('L') whose size field says `size` and whose data
    /// blocks hold `data` (padding included, zero-filled to a block).
    pub fn long_name_raw(&mut self, data: &[u8], size: u64) -> &mut Self {
        let h = header(Flavour::Gnu, b'L', b"././@LongLink", size, b"");
        self.raw(h, data)
    }

    /// A GNU sparse ('S') member with exactly this `map` (header slots only,
    /// at most four entries), `real_size`, and `data` as its stored bytes;
    /// the size field says `stored`.
    pub fn sparse_raw(
        &mut self,
        path: &str,
        real_size: u64,
        map: &[(u64, u64)],
        data: &[u8],
        stored: u64,
    ) -> &mut Self {
        assert!(map.len() <= 4);
        let mut h = header(Flavour::Gnu, b'S', path.as_bytes(), stored, b"");
        for (i, (o, l)) in map.iter().enumerate() {
            let at = 386 + i * 24;
            octal(&mut h[at..at + 12], *o);
            octal(&mut h[at + 12..at + 24], *l);
        }
        octal(&mut h[483..495], real_size);
        self.raw(h, data)
    }

    /// Offset of the next header written.
    pub fn at(&self) -> usize {
        self.bytes.len()
    }
}
