//! Resolve what a push sends: the chain of snapshots, each one's checked
//! config, and its files cut into chunks (from the chunk index).

use std::collections::HashMap;
use std::path::PathBuf;

use crate::db::{self, SnapshotRow};
use crate::model::chunk::ChunkList;
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::ops::registry::Registry;
use crate::remote::format::MapFile;
use crate::store::files::open_regular;
use crate::store::layout::SnapshotName;

/// Where a chunk's bytes are: file, offset, length.
pub type ChunkSource = (std::sync::Arc<PathBuf>, u64, u64);

/// A snapshot's files as its chunk map lists them.
pub struct MapFiles {
    pub chunk_size: u64,
    pub files: Vec<MapFile>,
}

impl Registry {
    /// The snapshots to push, parents first.
    pub(super) fn push_chain(
        &self,
        head: &SnapshotRow,
        with_parents: bool,
    ) -> Result<Vec<SnapshotRow>> {
        if !with_parents {
            return Ok(vec![head.clone()]);
        }
        let conn = self.db().conn();
        let mut chain = Vec::new();
        for row in db::snapshots::ancestors(conn, &head.digest)? {
            match db::snapshots::snapshot_by_digest(conn, &row.digest)? {
                Some(s) => chain.push(s),
                None => {
                    return Err(Error::MissingParent {
                        parent: row.digest,
                        child: chain
                            .last()
                            .map(|s: &SnapshotRow| s.digest)
                            .unwrap_or(head.digest),
                    });
                }
            }
        }
        Ok(chain)
    }

    /// Bytes of data (not holes) in the upper of `s`: what the push bar counts.
    pub(super) fn data_bytes(&self, s: &SnapshotRow) -> Result<u64> {
        let list = db::chunks::chunk_list(self.db().conn(), &s.digest, &s.upper_file)?;
        Ok(list.map_or(0, |l| l.data_bytes()))
    }

    /// The canonical manifest bytes of `snapshot`, checked against its digest.
    pub(super) fn read_config(
        &self,
        snapshot: &SnapshotRow,
        name: &SnapshotName,
    ) -> Result<Vec<u8>> {
        let path = self.layout().snapshot_file(name, "manifest.json");
        let bytes =
            crate::store::files::read_limited(&path, crate::model::manifest::MAX_MANIFEST_BYTES)?
                .ok_or_else(|| {
                Error::integrity(path.display().to_string(), "larger than a manifest may be")
            })?;
        let parsed =
            crate::model::manifest::Manifest::parse(&bytes).map_err(|source| Error::Manifest {
                path: path.display().to_string(),
                source,
            })?;
        if parsed.digest != snapshot.digest {
            return Err(Error::integrity(
                path.display().to_string(),
                format!(
                    "hashes to {}, not {}; run `msb-registry verify`",
                    parsed.digest, snapshot.digest
                ),
            ));
        }
        Ok(parsed.manifest.canonical_bytes())
    }

    /// The recorded chunk list of a file, or one cut now for a snapshot
    /// that entered the registry before the chunk index.
    pub(super) fn chunk_list_of(
        &self,
        s: &SnapshotRow,
        file: &str,
        path: &std::path::Path,
        len: u64,
    ) -> Result<ChunkList> {
        if let Some(list) = db::chunks::chunk_list(self.db().conn(), &s.digest, file)? {
            return Ok(list);
        }
        let f = open_regular(path)?;
        let (_, _, list) = crate::store::stage::digest_file_chunked(
            &f,
            len,
            path,
            None,
            crate::model::chunk::CHUNK_SIZE,
            &crate::process::progress::NoProgress,
        )?;
        Ok(list)
    }

    /// The chunk map's files of `snapshot` (its upper),
    /// its distinct chunks in order of first use, and where each is.
    pub(super) fn cut_files(
        &self,
        snapshot: &SnapshotRow,
        name: &SnapshotName,
    ) -> Result<(MapFiles, Vec<Digest>, Vec<ChunkSource>)> {
        let conn = self.db().conn();
        let mut files = MapFiles {
            chunk_size: crate::model::chunk::CHUNK_SIZE,
            files: Vec::new(),
        };
        let mut index_of: HashMap<Digest, u32> = HashMap::new();
        let mut order = Vec::new();
        let mut places = Vec::new();
        for f in db::snapshots::snapshot_files(conn, &snapshot.digest)? {
            // The OCI form carries what the snapshot digest covers: the
            // manifest (as the config) and the upper it names, nothing else.
            if f.path != snapshot.upper_file {
                continue;
            }
            let path = std::sync::Arc::new(self.layout().snapshot_file(name, &f.path));
            let list = self.chunk_list_of(snapshot, &f.path, &path, f.size)?;
            files.chunk_size = list.chunk_size;
            let mut extents = Vec::with_capacity(list.chunks.len());
            for c in &list.chunks {
                let index = *index_of.entry(c.digest).or_insert_with(|| {
                    order.push(c.digest);
                    places.push((path.clone(), c.offset, c.length));
                    (order.len() - 1) as u32
                });
                extents.push((c.offset, index));
            }
            files.files.push(MapFile {
                path: f.path.clone(),
                size: f.size,
                extents,
            });
        }
        Ok((files, order, places))
    }

    /// The chunks of the parent's files by (file, offset), when the parent
    /// is here: a changed chunk is sent as a delta against the parent's
    /// chunk at the same offset.
    pub(super) fn parent_chunks(
        &self,
        snapshot: &SnapshotRow,
    ) -> Result<HashMap<(String, u64), Digest>> {
        let conn = self.db().conn();
        let mut out = HashMap::new();
        let Some(parent) = snapshot.parent else {
            return Ok(out);
        };
        if db::snapshots::snapshot_by_digest(conn, &parent)?.is_none() {
            return Ok(out);
        }
        for f in db::snapshots::snapshot_files(conn, &parent)? {
            if let Some(list) = db::chunks::chunk_list(conn, &parent, &f.path)? {
                for c in list.chunks {
                    out.insert((f.path.clone(), c.offset), c.digest);
                }
            }
        }
        Ok(out)
    }
}
