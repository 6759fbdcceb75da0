//! The byte stream an import reads: the source (a file, stdin, or any
//! reader), zstd told apart from plain tar by the zstd frame grammar (see
//! [`is_zstd`]), decompressed on a worker task so decoding overlaps hashing.

use std::io;
use std::path::PathBuf;

use async_compression::tokio::bufread::ZstdDecoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;

use crate::model::error::{Error, IoContext, Result};

/// The zstd frame magic, `28 b5 2f fd`.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The magic of zstd skippable frames: `0x184D2A50` to `0x184D2A5F`, little
/// endian, so the first byte varies (`5?`) and the next three are these.
pub const ZSTD_SKIPPABLE_MAGIC_TAIL: [u8; 3] = [0x2a, 0x4d, 0x18];

/// Whether a stream starting with `head` is zstd by the frame format: its
/// first frame is a zstd frame or a skippable frame (what `pzstd` writes
/// first, and what any zstd decoder passes over). A plain tar starts with
/// its first member's name; one starting with these bytes (not UTF-8, or a
/// control character fourth, both refused by the member grammar anyway) is
/// read as zstd and refused as such.
pub fn is_zstd(head: &[u8]) -> bool {
    head.starts_with(&ZSTD_MAGIC)
        || (head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == ZSTD_SKIPPABLE_MAGIC_TAIL)
}

/// Largest zstd window accepted (2^25 = 32 MiB), which bounds the decoder's memory.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 25;

const PIPE_BYTES: usize = 1024 * 1024;

/// Where an archive is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSource {
    /// An archive file.
    Path(PathBuf),
    /// Standard input (`-`).
    Stdin,
}

impl ImportSource {
    /// `-` means stdin; anything else is a path.
    pub fn from_arg(arg: &str) -> Self {
        if arg == "-" {
            ImportSource::Stdin
        } else {
            ImportSource::Path(arg.into())
        }
    }

    /// How the source is named in the journal and in I/O errors.
    pub fn label(&self) -> String {
        match self {
            ImportSource::Path(p) => p.display().to_string(),
            ImportSource::Stdin => "-".into(),
        }
    }

    /// How refusals of the whole archive name the source: its path, or "stdin".
    pub fn display_name(&self) -> String {
        match self {
            ImportSource::Stdin => "stdin".into(),
            path => path.label(),
        }
    }
}

/// An opened source, not yet read.
pub struct OpenedSource {
    reader: Box<dyn AsyncRead + Unpin + Send>,
    /// Its length in bytes when it is a regular file.
    pub len: Option<u64>,
}

impl OpenedSource {
    /// Any byte stream as a source (tests drive import through chaos readers this way).
    pub fn from_reader(reader: Box<dyn AsyncRead + Unpin + Send>, len: Option<u64>) -> Self {
        OpenedSource { reader, len }
    }
}

/// Open the source (outside any runtime work, so a missing file fails before a lease is taken).
pub fn open(source: &ImportSource) -> Result<OpenedSource> {
    match source {
        ImportSource::Path(path) => {
            let file = std::fs::File::open(path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotFound {
                    what: "archive",
                    reference: path.display().to_string(),
                },
                _ => Error::io("open", path, e),
            })?;
            let meta = file.metadata().at("stat", path)?;
            if meta.is_dir() {
                return Err(Error::Usage(format!(
                    "{} is a directory; import takes an archive file or -",
                    path.display()
                )));
            }
            Ok(OpenedSource {
                reader: Box::new(tokio::fs::File::from_std(file)),
                len: meta.is_file().then_some(meta.len()),
            })
        }
        ImportSource::Stdin => Ok(OpenedSource {
            reader: Box::new(tokio::io::stdin()),
            len: None,
        }),
    }
}

/// Why the worker stopped.
#[derive(Debug)]
pub enum PumpError {
    /// The source could not be read.
    Read(io::Error),
    /// The zstd stream is corrupt, truncated, or needs too large a window.
    Zstd(io::Error),
    /// The source starts like something other than a tar or zstd stream;
    /// what it looks like.
    NotAnArchive(&'static str),
}

/// Bytes read before deciding what the source is: one tar header.
const SNIFF_BYTES: usize = 512;

/// Formats a person may hand to import by mistake, by their magic bytes.
const FOREIGN_MAGICS: &[(&[u8], &str)] = &[
    (&[0x1f, 0x8b], "a gzip-compressed file"),
    (
        &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
        "an xz-compressed file",
    ),
    (b"BZh", "a bzip2-compressed file"),
    (b"PK\x03\x04", "a zip file"),
    (b"PK\x05\x06", "a zip file"),
    (&[0x04, 0x22, 0x4d, 0x18], "an lz4-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-zip file"),
];

/// What the first bytes of a source say it is when that is not an archive
/// import takes: empty, a known other format, or text (no tar header is
/// free of NUL bytes). `None` for anything that may be tar or zstd.
pub fn not_an_archive(head: &[u8]) -> Option<&'static str> {
    if head.is_empty() {
        return Some("empty");
    }
    if let Some((_, what)) = FOREIGN_MAGICS.iter().find(|(m, _)| head.starts_with(m)) {
        return Some(what);
    }
    let text = !head.contains(&0)
        && std::str::from_utf8(head)
            .or_else(|e| {
                // A multi-byte character cut at the end of the head is still text.
                if e.error_len().is_none() {
                    std::str::from_utf8(&head[..e.valid_up_to()])
                } else {
                    Err(e)
                }
            })
            .is_ok_and(|t| {
                t.chars()
                    .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t' | '\x0c'))
            });
    text.then_some("a text file")
}

/// The decompressing worker and its outcome.
pub struct Pump {
    handle: JoinHandle<Result<bool, PumpError>>,
}

impl Pump {
    /// Start the worker on the current runtime; returns the pipe the tar bytes come out of.
    pub fn start(source: OpenedSource) -> (DuplexStream, Self) {
        let (tar, mut out) = tokio::io::duplex(PIPE_BYTES);
        let handle = tokio::spawn(async move {
            let mut input = BufReader::with_capacity(PIPE_BYTES, source.reader);
            let mut head = Vec::with_capacity(SNIFF_BYTES);
            while head.len() < SNIFF_BYTES {
                let mut b = [0u8; SNIFF_BYTES];
                let n = input
                    .read(&mut b[..SNIFF_BYTES - head.len()])
                    .await
                    .map_err(PumpError::Read)?;
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&b[..n]);
            }
            if let Some(what) = not_an_archive(&head) {
                return Err(PumpError::NotAnArchive(what));
            }
            let zstd = is_zstd(&head);
            let head = std::io::Cursor::new(head);
            let joined = BufReader::with_capacity(PIPE_BYTES, head.chain(input));
            if zstd {
                let mut decoder = ZstdDecoder::with_params(
                    joined,
                    &[async_compression::zstd::DParameter::window_log_max(
                        ZSTD_WINDOW_LOG_MAX,
                    )],
                );
                decoder.multiple_members(true);
                copy_out(decoder, &mut out, PumpError::Zstd).await?;
            } else {
                copy_out(joined, &mut out, PumpError::Read).await?;
            }
            Ok(zstd)
        });
        (tar, Pump { handle })
    }

    /// Stop the worker without waiting for it (an interrupted import).
    pub fn abort(self) {
        self.handle.abort();
    }

    /// Wait for the worker (after the pipe's reader is gone); `Ok(true)`
    /// when the source was zstd. A worker cut short because the reader went
    /// away ends without error.
    pub async fn finish(self) -> Result<bool, PumpError> {
        match self.handle.await {
            Ok(r) => r,
            Err(e) => Err(PumpError::Read(io::Error::other(e))),
        }
    }
}

async fn copy_out<R: AsyncRead + Unpin>(
    mut from: R,
    to: &mut DuplexStream,
    on_read: fn(io::Error) -> PumpError,
) -> Result<(), PumpError> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = from.read(&mut buf).await.map_err(on_read)?;
        if n == 0 {
            return Ok(());
        }
        if to.write_all(&buf[..n]).await.is_err() {
            // The reader stopped (refusal or end of archive): not our error.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_is_told_by_its_first_frame() {
        assert!(is_zstd(&[0x28, 0xb5, 0x2f, 0xfd, 0x04]));
        for first in 0x50..=0x5f {
            assert!(
                is_zstd(&[first, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]),
                "{first:#x}"
            );
        }
        assert!(!is_zstd(&[0x60, 0x2a, 0x4d, 0x18]));
        assert!(!is_zstd(&[0x50, 0x2a, 0x4d]));
        assert!(!is_zstd(b"sha256-0123456789abcdef/manifest.json"));
    }
}
