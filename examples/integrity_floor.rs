//! The floor of a pull or import of one snapshot, for `bench/push.sh`: the
//! upper's integrity hash alone (SHA-256 over every logical byte, holes fed
//! as zeros without reading them, as a pull's integrity thread computes it),
//! on one thread with nothing to wait for. Checks the digest against the
//! snapshot's manifest, so the bench knows it timed the real hash.
//!
//! Run: `cargo run --release --example integrity_floor -- SNAPSHOT_DIR`.
//! Prints the seconds the hash took and the upper's logical size.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use msb_registry::model::digest::{LogicalSink, PlainSha256, SparseSha256V1};
use msb_registry::model::manifest::{INTEGRITY_SHA256, Manifest};

/// Bytes read at a time (the follower's buffer size).
const BUF: usize = 256 << 10;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .expect("usage: integrity_floor SNAPSHOT_DIR");
    let dir = Path::new(&dir);
    let bytes = std::fs::read(dir.join("manifest.json")).expect("read manifest.json");
    let parsed = Manifest::parse(&bytes).expect("a valid manifest");
    let upper = &parsed.manifest.upper;
    let integrity = upper
        .integrity
        .as_ref()
        .expect("the upper records its integrity");
    let (algorithm, expected) = integrity.expected().expect("a known algorithm");
    let file = File::open(dir.join(&upper.file)).expect("open the upper");
    let size = upper.size_bytes;

    let start = Instant::now();
    let digest = if algorithm == INTEGRITY_SHA256 {
        let mut h = PlainSha256::default();
        hash(&file, size, &mut h);
        h.finish()
    } else {
        let mut h = SparseSha256V1::new(size);
        hash(&file, size, &mut h);
        h.finish()
    };
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(digest, expected, "the upper's integrity digest");
    println!("{seconds:.4} {size}");
}

/// Feed `sink` the file's `size` logical bytes: data read, holes as zeros.
fn hash(file: &File, size: u64, sink: &mut impl LogicalSink) {
    let mut buf = vec![0u8; BUF];
    let mut pos = 0u64;
    while pos < size {
        let data = seek(file, pos, libc::SEEK_DATA).unwrap_or(size).min(size);
        if data > pos {
            sink.zeros(data - pos);
            pos = data;
            continue;
        }
        let hole = seek(file, pos, libc::SEEK_HOLE).unwrap_or(size).min(size);
        while pos < hole {
            let n = (hole - pos).min(BUF as u64) as usize;
            file.read_exact_at(&mut buf[..n], pos)
                .expect("read the upper");
            sink.data(&buf[..n]);
            pos += n as u64;
        }
    }
}

/// `lseek(fd, pos, whence)`; `None` past the last data (ENXIO).
fn seek(file: &File, pos: u64, whence: libc::c_int) -> Option<u64> {
    // SAFETY: lseek on a descriptor we own; no memory is touched.
    let at = unsafe { libc::lseek(file.as_raw_fd(), pos as libc::off_t, whence) };
    (at >= 0).then_some(at as u64)
}
