//! What a remote repository holds, as far as a chunk map tells: its packs
//! and where in them each chunk is (recorded in the index, so the next
//! push of a child sends only chunks the repository lacks).

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::format::ChunkMap;
use crate::db::remote::{PackedChunk, record_remote, record_remote_chunk};
use crate::model::digest::Digest;
use crate::model::error::Result;

/// Record, in one transaction, that `repo` of `registry` holds the packs
/// of `map` (`pack_sizes` aligned with `map.packs`) and, where the map
/// says, those of its chunks `checked` accepts: the ones whose frames were
/// fetched and decoded (a map is a claim, and push skips what is recorded).
pub fn record_map(
    conn: &Connection,
    registry: &str,
    repo: &str,
    map: &ChunkMap,
    pack_sizes: &[u64],
    checked: &dyn Fn(&Digest) -> bool,
) -> Result<()> {
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    for (pack, size) in map.packs.iter().zip(pack_sizes) {
        record_remote(&tx, registry, repo, pack, *size)?;
    }
    let bases = map.bases();
    for (i, c) in map.chunks.iter().enumerate() {
        if !checked(&c.chunk()) {
            continue;
        }
        let at = PackedChunk {
            pack: map.packs[c.pack()],
            offset: c.offset(),
            length: c.frame_len(),
            base: bases[i].map(|b| map.chunks[b].chunk()),
        };
        record_remote_chunk(&tx, registry, repo, &c.chunk(), &at)?;
    }
    tx.commit()?;
    Ok(())
}
