//! Install: name the pulled snapshots, stage the image's cache artifacts
//! when the repository has them, and install the whole chain by the same
//! journaled install as import; then record what the repository holds.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::assemble::Assembled;
use super::report::PullReport;
use super::resolve::RemoteSnapshot;
use crate::archive::names::{self, NameFallback, Named};
use crate::archive::streamed::CarriedName;
use crate::db::{self, ImportFileRow};
use crate::journal::Lease;
use crate::model::digest::Digest;
use crate::model::error::{IoContext, Result};
use crate::model::image::CacheFile;
use crate::model::manifest::ParsedManifest;
use crate::ops::install::install_checked;
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::remote::format::{IMAGE_CACHE_ARTIFACT, OciManifest, TITLE, malformed};
use crate::remote::reference::image_tag;
use crate::remote::{Client, RemoteRef};
use crate::store::layout::SnapshotName;
use crate::store::staged::StagedSet;

impl Registry {
    /// Check each assembled snapshot of `chain` (in `maps`' directories),
    /// stage the images it pins that are not here, and install them all.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn install_pulled(
        &mut self,
        client: &Client,
        source: &RemoteRef,
        lease: &mut Lease,
        chain: &[RemoteSnapshot],
        head_name: Option<&SnapshotName>,
        images: &HashSet<Digest>,
        maps: &mut [Assembled],
        signatures: Vec<crate::db::signatures::SignatureRow>,
        deep: bool,
        report: &mut PullReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        let repo = source.repository.as_str();
        let mut set = StagedSet {
            signatures,
            ..StagedSet::default()
        };
        let mut journal = Vec::new();
        let (names, fallbacks) = self.pull_names(chain, head_name)?;
        report.name_fallbacks = fallbacks;
        // Hashing a large sparse upper takes a while: the bar counts it.
        let logical = chain
            .iter()
            .zip(maps.iter())
            .map(|(s, a)| s.config.len() as u64 + a.map.files.iter().map(|f| f.size).sum::<u64>());
        progress.start("verify", Some(logical.sum()));
        for ((s, a), name) in chain.iter().zip(maps.iter_mut()).zip(names) {
            let staged = self.check_assembled(s, a, name, source, &mut journal, progress)?;
            set.snapshots.push(staged);
        }
        progress.finish();
        crate::process::timeline::mark("install: every file hashed");
        self.stage_images(
            client,
            repo,
            lease,
            chain,
            images,
            report,
            &mut journal,
            &mut set,
            progress,
        )
        .await?;
        {
            let tx = self.db_mut().write()?;
            db::imports::delete_import_files(&tx, lease.id())?;
            db::imports::insert_import_files(&tx, lease.id(), &journal)?;
            tx.commit()?;
        }
        crate::process::timeline::mark("install: journal written");
        let outcome = install_checked(self, lease, &mut set, deep)?;
        crate::process::timeline::mark("install: installed");
        self.record_pulled(&source.registry, repo, maps)?;
        crate::process::timeline::mark("install: holdings recorded");
        report.image_files_installed = outcome.cache_files_installed;
        report.imported = outcome.imported;
        report.skipped = outcome.skipped;
        report.name_fallbacks.extend(outcome.name_fallbacks);
        report.repaired = outcome.repaired;
        let head = set.snapshots.last().expect("a chain is never empty");
        report.name = db::snapshots::snapshot_by_digest(self.db().conn(), &head.manifest.digest())?
            .map(|r| r.name)
            .unwrap_or_else(|| head.name.to_string());
        if !report.imported.is_empty() {
            report.microsandbox_hint = crate::store::shared_home::reindex_hint(self.layout());
        }
        Ok(())
    }

    /// Stage the cache artifacts of each image of `images` (pinned by
    /// `chain`) not here, when the repository has them.
    #[allow(clippy::too_many_arguments)]
    async fn stage_images(
        &self,
        client: &Client,
        repo: &str,
        lease: &Lease,
        chain: &[RemoteSnapshot],
        images: &HashSet<Digest>,
        report: &mut PullReport,
        journal: &mut Vec<ImportFileRow>,
        set: &mut StagedSet,
        progress: &dyn Progress,
    ) -> Result<()> {
        // What an interrupted run of this pull staged of the image is redone.
        crate::store::files::remove_dir_if_exists(&lease.staging().join("cache"))?;
        for image in images {
            let parsed = &chain
                .iter()
                .find(|s| s.parsed.manifest.image.manifest_digest == *image)
                .expect("every image comes from the chain")
                .parsed;
            if db::images::image_by_digest(self.db().conn(), image)?.is_none() {
                self.pull_image(client, repo, lease, parsed, report, journal, set, progress)
                    .await?;
            }
        }
        Ok(())
    }

    /// Record what the repository holds, from the maps of an installed
    /// pull (a refused one teaches nothing), and of each only the chunks
    /// it downloaded and decoded: the rest is the map's claim, and push
    /// skips what is recorded. Only a cache of the repository: committed
    /// without waiting for the disk (the lease's end, next, does).
    fn record_pulled(&self, registry: &str, repo: &str, maps: &[Assembled]) -> Result<()> {
        self.db().relax_durability()?;
        let recorded = maps.iter().try_for_each(|a| {
            crate::remote::holdings::record_map(
                self.db().conn(),
                registry,
                repo,
                &a.map,
                &a.pack_sizes,
                &|c| a.downloaded.contains(c),
            )
        });
        self.db().restore_durability()?;
        recorded
    }

    /// The names the chain's snapshots are installed under, as import
    /// names them: the head's `--name`, else the name each was pushed under
    /// (its title) when it is valid and free, else its digest prefix; and
    /// the titles not used, said as import says an archive's.
    fn pull_names(
        &self,
        chain: &[RemoteSnapshot],
        head_name: Option<&SnapshotName>,
    ) -> Result<(Vec<Named>, Vec<NameFallback>)> {
        let titles: Vec<Option<CarriedName>> = chain
            .iter()
            .map(|s| {
                s.manifest
                    .annotations
                    .get(TITLE)
                    .map(|t| names::judge(t.as_bytes()))
            })
            .collect();
        let carried: Vec<_> = chain
            .iter()
            .zip(&titles)
            .map(|(s, t)| (s.parsed.digest, t.as_ref()))
            .collect();
        let conn = self.db().conn();
        names::decide(conn, &carried, chain.len() - 1, head_name, |d| {
            Ok(db::snapshots::snapshot_by_digest(conn, d)?.is_some())
        })
    }

    /// Download the image cache artifacts tagged for `parsed`'s image, if
    /// the repository has them, and stage them as `add --cache-dir` does.
    #[allow(clippy::too_many_arguments)]
    async fn pull_image(
        &self,
        client: &Client,
        repo: &str,
        lease: &Lease,
        parsed: &ParsedManifest,
        report: &mut PullReport,
        journal: &mut Vec<ImportFileRow>,
        set: &mut StagedSet,
        progress: &dyn Progress,
    ) -> Result<()> {
        let tag = image_tag(&parsed.manifest.image.manifest_digest);
        let Some((bytes, _)) = client.get_manifest(repo, &tag).await? else {
            return Ok(());
        };
        let subject = crate::remote::reference::joined(client.registry(), repo, &tag);
        let manifest = OciManifest::parse(&bytes, IMAGE_CACHE_ARTIFACT, &subject)?;
        let cache_dir = lease.staging().join("pulled-cache");
        let mut seen = HashSet::new();
        for layer in &manifest.layers {
            let title = layer
                .annotations
                .get(TITLE)
                .map(String::as_str)
                .unwrap_or("");
            let file = CacheFile::parse_rel(title)
                .filter(|f| seen.insert(*f))
                .ok_or_else(|| {
                    malformed(
                        &subject,
                        format!(
                            "layer {} is not named as a cache file: {}",
                            layer.digest,
                            crate::model::text::escape(title)
                        ),
                    )
                })?;
            if layer.size > crate::archive::entry::DEFAULT_MAX_FILE_BYTES {
                return Err(malformed(
                    &subject,
                    format!("{title} claims {} bytes", layer.size),
                ));
            }
            let path = cache_dir.join(file.rel_path());
            let parent = path.parent().expect("a cache file has a kind directory");
            std::fs::create_dir_all(parent).at("create directory", parent)?;
            let out = File::create(&path).at("create", &path)?;
            let mut at = 0u64;
            report.transfer.bytes_downloaded += client
                .get_blob_into(repo, &layer.digest, layer.size, |piece| {
                    out.write_all_at(piece, at).at("write", &path)?;
                    at += piece.len() as u64;
                    Ok(())
                })
                .await?;
        }
        self.stage_cache(lease, &cache_dir, parsed, progress, journal, set)
    }
}
