//! Plan a snapshot's transfer: what the repository is known to hold (from
//! earlier pushes, the parent's chunk map there, or a mount from another
//! repository), and which chunks it lacks, each with the base to send it as
//! a delta against.

use std::collections::HashMap;

use super::Dest;
use super::report::Counts;
use super::resolve::ChunkSource;
use super::transfer::Unplaced;
use crate::db::{self, SnapshotRow, remote::PackedChunk};
use crate::model::digest::Digest;
use crate::model::error::Result;
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::remote::{Client, RemoteRef};
use crate::store::layout::SnapshotName;

/// What a repository is known to hold, by chunk.
pub(super) type Held = HashMap<Digest, PackedChunk>;

/// The chunks earlier snapshots of this push will store, each with the
/// chunk a later snapshot's delta against it takes as its base (itself,
/// sent plainly, or the plain base it is itself sent as a delta of) and
/// where that base is read. Packs all land before any chunk map, so a
/// chunk here is held by the time a map names it.
pub(super) type Pending = HashMap<Digest, (Digest, ChunkSource)>;

/// Where the repository holds `chunk`, when it can be decoded there: a
/// plain frame, or a delta whose base it holds as a plain frame.
pub(super) fn placed(held: &Held, chunk: &Digest) -> Option<PackedChunk> {
    let at = *held.get(chunk)?;
    match at.base {
        Some(base) if held.get(&base).is_none_or(|b| b.base.is_some()) => None,
        _ => Some(at),
    }
}

/// Whether the repository holds `chunk` as a delta against a chunk an
/// earlier snapshot of this push sends plainly: placed once that lands (a
/// push stopped part way may have stored a child's pack before its
/// parent's).
fn delta_on_pending(held: &Held, pending: &Pending, chunk: &Digest) -> bool {
    let Some(base) = held.get(chunk).and_then(|at| at.base) else {
        return false;
    };
    pending.get(&base).is_some_and(|(plain, _)| *plain == base)
}

impl Registry {
    /// Learn and mount what the repository may hold of `order` beyond what
    /// is recorded and what this push stores for earlier snapshots
    /// (`pending`); returns what it is then known to hold.
    pub(super) async fn find_held(
        &self,
        dest: &Dest<'_>,
        snapshot: &SnapshotRow,
        pushed_parent: Option<&Digest>,
        order: &[Digest],
        pending: &Pending,
        counts: &mut Counts,
    ) -> Result<Held> {
        let (client, target) = (dest.client, dest.target);
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let conn = self.db().conn();
        let mut held = db::remote::remote_chunks_of(conn, registry, repo)?;
        let lacking = |held: &Held| -> Vec<Digest> {
            order
                .iter()
                .filter(|c| placed(held, c).is_none() && !pending.contains_key(*c))
                .copied()
                .collect()
        };
        let lacking_now = lacking(&held);
        if let Some(p) = snapshot.parent
            && pushed_parent.is_none_or(|d| *d != p)
            && !lacking_now.is_empty()
            && !dest.fresh
        {
            // Another machine may have pushed the parent: its chunk map
            // says where the repository holds the chunks they share. Only
            // the chunks not already known to be there are checked.
            self.learn_from(client, target, &p, &lacking_now, dest.jobs)
                .await?;
            held = db::remote::remote_chunks_of(conn, registry, repo)?;
        }
        let lacking_now = lacking(&held);
        if !lacking_now.is_empty() && db::remote::remote_chunks_elsewhere_any(conn, registry, repo)?
        {
            self.mount_packs(client, target, &lacking_now, &held, counts)
                .await?;
            held = db::remote::remote_chunks_of(conn, registry, repo)?;
        }
        Ok(held)
    }

    /// The chunks of `order` the repository lacks and no earlier snapshot
    /// of this push stores, each with its delta base when the parent's
    /// chunk at the same offset is held there or stored by this push;
    /// the others are counted present. What is returned is added to
    /// `pending`.
    pub(super) fn unplaced(
        &self,
        snapshot: &SnapshotRow,
        (order, places): (&[Digest], &[ChunkSource]),
        held: &Held,
        pending: &mut Pending,
        counts: &mut Counts,
        progress: &dyn Progress,
    ) -> Result<Vec<Unplaced>> {
        let parent_chunks = self.parent_chunks(snapshot)?;
        let mut unplaced = Vec::new();
        for (i, chunk) in order.iter().enumerate() {
            if placed(held, chunk).is_some()
                || pending.contains_key(chunk)
                || delta_on_pending(held, pending, chunk)
            {
                counts.chunks_present += 1;
                counts.bytes_not_sent += places[i].2;
                progress.advance(places[i].2);
                continue;
            }
            let (path, offset, _) = &places[i];
            let file = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let base = match parent_chunks.get(&(file.to_string(), *offset)) {
                Some(r) if r != chunk => match pending.get(r) {
                    Some(base) => Some(base.clone()),
                    None => self.delta_base(held, r)?,
                },
                _ => None,
            };
            unplaced.push(Unplaced {
                chunk: *chunk,
                source: places[i].clone(),
                base,
            });
        }
        for u in &unplaced {
            let base = u.base.clone().unwrap_or((u.chunk, u.source.clone()));
            pending.insert(u.chunk, base);
        }
        Ok(unplaced)
    }

    /// The base for a delta against chunk `reference`: a plain chunk the
    /// repository holds (the reference, or the base it is itself a delta
    /// of) that is readable here.
    fn delta_base(&self, held: &Held, reference: &Digest) -> Result<Option<(Digest, ChunkSource)>> {
        let conn = self.db().conn();
        let Some(at) = placed(held, reference) else {
            return Ok(None);
        };
        let base = at.base.unwrap_or(*reference);
        let Some(place) = db::remote::chunk_place(conn, &base)? else {
            return Ok(None);
        };
        let Some(length) = db::chunks::chunk_length(conn, &base)? else {
            return Ok(None);
        };
        let name = SnapshotName::chosen(&place.name)?;
        let path = std::sync::Arc::new(self.layout().snapshot_file(&name, &place.path));
        Ok(Some((base, (path, place.offset, length))))
    }

    /// Mount into the repository the packs other repositories of the
    /// registry hold the chunks in that it lacks (where the registry
    /// supports cross-repository mounts), and record what they hold.
    async fn mount_packs(
        &self,
        client: &Client,
        target: &RemoteRef,
        chunks: &[Digest],
        held: &Held,
        counts: &mut Counts,
    ) -> Result<()> {
        let (registry, repo) = (target.registry.as_str(), target.repository.as_str());
        let conn = self.db().conn();
        let mut tried = std::collections::HashSet::new();
        for chunk in chunks {
            if held.contains_key(chunk) {
                continue;
            }
            let Some((from, at)) = db::remote::remote_chunk_elsewhere(conn, registry, repo, chunk)?
            else {
                continue;
            };
            if !tried.insert(at.pack) {
                continue;
            }
            if client.mount_blob(repo, &at.pack, &from).await? {
                db::remote::copy_pack_holdings(conn, registry, &from, repo, &at.pack)?;
                counts.mounted += 1;
            }
        }
        Ok(())
    }
}
