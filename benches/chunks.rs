//! Chunk-size benchmark (issue 14): how many bytes a child snapshot needs
//! beyond its parent when uppers are shipped as fixed, aligned chunks, for
//! chunk sizes 64 KiB … 4 MiB, against the floor — the 4 KiB blocks that
//! actually differ. Builds real ext4 uppers (`mkfs.ext4`, `debugfs -w`,
//! children from a sparse copy of their parent plus more writes) over several
//! rounds; every chunk and the floor are zstd-compressed (level 3) as push
//! would send them. Prints a table; asserts nothing.
//!
//! Run: `cargo bench --bench chunks` (MSB_BENCH_ROUNDS, MSB_BENCH_UPPER_MIB scale it;
//! MSB_BENCH_SEED picks another tree of files).

use std::collections::HashSet;
use std::path::Path;

use msb_registry::model::digest::Digest;
use msb_registry::sample::ext4::{Round, make_child, make_upper, tools_available};

const SIZES: [usize; 7] = [
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];
const BLOCK: usize = 4096;
const LEVEL: i32 = 3;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn compressed(bytes: &[u8]) -> u64 {
    zstd::bulk::compress(bytes, LEVEL).expect("zstd").len() as u64
}

/// What one child costs beyond its parent at one chunk size.
#[derive(Default, Clone, Copy)]
struct Cost {
    /// Compressed bytes of the child's chunks its parent lacks.
    needed: u64,
    /// The child's data chunks.
    chunks: u64,
}

fn cost(parent: &[u8], child: &[u8], size: usize) -> Cost {
    let have: HashSet<Digest> = parent
        .chunks(size)
        .filter(|c| !is_zero(c))
        .map(Digest::of)
        .collect();
    let mut out = Cost::default();
    let mut sent = HashSet::new();
    for c in child.chunks(size).filter(|c| !is_zero(c)) {
        out.chunks += 1;
        let d = Digest::of(c);
        if !have.contains(&d) && sent.insert(d) {
            out.needed += compressed(c);
        }
    }
    out
}

/// The floor: the child's 4 KiB blocks that differ from its parent's at the
/// same offset, compressed as one stream; and the child's data bytes.
fn floor(parent: &[u8], child: &[u8]) -> (u64, u64, u64) {
    let mut differing = Vec::new();
    let mut data = 0u64;
    for (p, c) in parent.chunks(BLOCK).zip(child.chunks(BLOCK)) {
        if !is_zero(c) {
            data += c.len() as u64;
            if p != c {
                differing.extend_from_slice(c);
            }
        }
    }
    (compressed(&differing), differing.len() as u64, data)
}

fn main() {
    if !tools_available() {
        eprintln!("skipping: mkfs.ext4 and debugfs are needed");
        return;
    }
    let rounds = env_or("MSB_BENCH_ROUNDS", 4);
    let upper = (env_or("MSB_BENCH_UPPER_MIB", 512) as u64) << 20;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |i: usize| dir.path().join(format!("u{i}.ext4"));

    let seed = env_or("MSB_BENCH_SEED", 1) as u64;
    let base = make_upper(&path(0), upper, &Round::new(seed, 16, 40)).expect("parent upper");
    println!(
        "parent: {} MiB upper, {} MiB data in {} extents",
        base.len >> 20,
        base.data_bytes >> 20,
        base.extents
    );
    let mut totals = vec![Cost::default(); SIZES.len()];
    let (mut floor_total, mut differing_total, mut data_total) = (0u64, 0u64, 0u64);
    for r in 1..=rounds {
        let mut round = Round::new(seed + r as u64, 3, 20);
        round.rewrites = 20;
        let child = make_child(&path(r - 1), &path(r), &round, &format!("r{r}")).expect("child");
        let (parent_bytes, child_bytes) = (read(&path(r - 1)), read(&path(r)));
        let (fl, differing, data) = floor(&parent_bytes, &child_bytes);
        println!(
            "round {r}: child {} MiB data in {} extents; {} KiB in differing 4 KiB blocks, {} KiB compressed",
            child.data_bytes >> 20,
            child.extents,
            differing >> 10,
            fl >> 10
        );
        floor_total += fl;
        differing_total += differing;
        data_total += data;
        for (i, &size) in SIZES.iter().enumerate() {
            let c = cost(&parent_bytes, &child_bytes, size);
            totals[i].needed += c.needed;
            totals[i].chunks += c.chunks;
        }
    }

    println!(
        "\nover {rounds} child rounds: differing blocks {} KiB, {} KiB compressed (the floor)\n",
        differing_total >> 10,
        floor_total >> 10
    );
    println!(
        "| chunk size | child needs beyond parent (zstd) | ratio to floor | chunks per GiB of data |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    for (i, &size) in SIZES.iter().enumerate() {
        let t = totals[i];
        println!(
            "| {} KiB | {} KiB | {:.2} | {:.0} |",
            size >> 10,
            t.needed >> 10,
            t.needed as f64 / floor_total as f64,
            t.chunks as f64 * (1u64 << 30) as f64 / data_total as f64
        );
    }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read upper")
}

/// Whether a block is all zeros (a hole to the chunk index).
fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}
