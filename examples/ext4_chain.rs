//! Benchmark data for `bench/push.sh`: a parent and a child snapshot
//! directory over real ext4 uppers (`msb_registry::sample::ext4`), an image
//! cache they pin, and the child's changed 4 KiB blocks — those holding data
//! that differs from the parent's block at the same offset, concatenated into
//! `changed-blocks.bin` — the floor a child push is measured against. Also
//! what a push of the child after its parent needs at best: its chunks
//! (`CHUNK_SIZE`, zero chunks are holes) the parent lacks, each compressed
//! with zstd level 3, into `chunks-needed`, so a bench tells the chunk size's
//! share of the cost from the client's.
//!
//! Run: `cargo run --release --example ext4_chain -- OUT UPPER_MIB PARENT_DIRS CHILD_DIRS REWRITES [SEED]`
//! (each directory holds 40 files of up to 1 MiB). Writes `OUT/cache`,
//! `OUT/parent`, `OUT/child`, `OUT/changed-blocks.bin` and `OUT/chunks-needed`
//! (bytes); prints what the uppers hold.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use msb_registry::model::chunk::CHUNK_SIZE;
use msb_registry::model::digest::Digest;
use msb_registry::sample::ext4::{BLOCK, Round, make_child, make_upper, tools_available};
use msb_registry::sample::{SnapshotSpec, write_image_cache, write_manifest};

const FILES_PER_DIR: usize = 40;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> u64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage())
    };
    if !(5..=6).contains(&args.len()) {
        usage();
    }
    if !tools_available() {
        eprintln!("ext4_chain: mkfs.ext4 and debugfs are needed");
        std::process::exit(1);
    }
    let out = Path::new(&args[0]);
    let (upper_mib, parent_dirs, child_dirs, rewrites) =
        (number(1), number(2), number(3), number(4));
    let seed = if args.len() == 6 { number(5) } else { 1 };

    let image =
        write_image_cache(&out.join("cache"), "python:3.12", 7, &[1 << 20]).expect("image cache");
    let (pdir, cdir) = (out.join("parent"), out.join("child"));
    for dir in [&pdir, &cdir] {
        std::fs::create_dir_all(dir).expect("snapshot directory");
    }
    let (pupper, cupper) = (pdir.join("upper.ext4"), cdir.join("upper.ext4"));
    let parent = make_upper(
        &pupper,
        upper_mib << 20,
        &Round::new(seed, parent_dirs as usize, FILES_PER_DIR),
    )
    .expect("parent upper");
    let mut round = Round::new(seed + 1, child_dirs as usize, FILES_PER_DIR);
    round.rewrites = rewrites as usize;
    let child = make_child(&pupper, &cupper, &round, "r1").expect("child upper");

    let parent_digest = write_manifest(&pdir, &SnapshotSpec::new(&image)).expect("parent manifest");
    let mut spec = SnapshotSpec::new(&image).parent(parent_digest);
    spec.created_at = "2026-10-02T09:00:00Z".into();
    write_manifest(&cdir, &spec).expect("child manifest");

    let (p, c) = (read(&pupper), read(&cupper));
    let changed = changed_blocks(&p, &c, &out.join("changed-blocks.bin"));
    let (chunks, needed) = chunks_needed(&p, &c);
    std::fs::write(out.join("chunks-needed"), needed.to_string()).expect("write chunks-needed");
    println!(
        "parent: {} MiB upper, {} MiB data in {} extents",
        parent.len >> 20,
        parent.data_bytes >> 20,
        parent.extents
    );
    println!(
        "child: {} MiB data in {} extents, {} KiB in changed 4 KiB blocks",
        child.data_bytes >> 20,
        child.extents,
        changed >> 10
    );
    println!(
        "child: {chunks} chunks of {} KiB its parent lacks, {} KiB after zstd -3 each",
        CHUNK_SIZE >> 10,
        needed >> 10
    );
}

/// The child's distinct non-zero chunks the parent lacks, and their bytes
/// compressed one by one.
fn chunks_needed(parent: &[u8], child: &[u8]) -> (usize, u64) {
    let size = CHUNK_SIZE as usize;
    let nonzero = |c: &&[u8]| c.iter().any(|&b| b != 0);
    let have: HashSet<Digest> = parent
        .chunks(size)
        .filter(nonzero)
        .map(Digest::of)
        .collect();
    let mut sent = HashSet::new();
    let mut bytes = 0;
    for c in child.chunks(size).filter(nonzero) {
        let d = Digest::of(c);
        if !have.contains(&d) && sent.insert(d) {
            bytes += zstd::bulk::compress(c, 3).expect("zstd").len() as u64;
        }
    }
    (sent.len(), bytes)
}

/// Write the child's 4 KiB blocks holding data that differs from the
/// parent's at the same offset (a hole reads as zeros) to `out`; their bytes.
fn changed_blocks(p: &[u8], c: &[u8], out: &Path) -> u64 {
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(out).expect("create changed blocks"));
    let mut n = 0;
    let zeros = [0u8; BLOCK as usize];
    for (i, block) in c.chunks(BLOCK as usize).enumerate() {
        let start = i * BLOCK as usize;
        let old = p
            .get(start..(start + block.len()).min(p.len()))
            .unwrap_or(&[]);
        if block != &zeros[..block.len()] && block != old {
            file.write_all(block).expect("write changed blocks");
            n += block.len() as u64;
        }
    }
    file.flush().expect("flush changed blocks");
    n
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read upper")
}

fn usage() -> ! {
    eprintln!("usage: ext4_chain OUT UPPER_MIB PARENT_DIRS CHILD_DIRS REWRITES [SEED]");
    std::process::exit(2);
}
