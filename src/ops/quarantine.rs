//! `quarantine list` and `quarantine rm`: the damaged copies repairs moved
//! aside ([`crate::store::quarantine`]), listed and removed only when named
//! (or all of them with `--all`). gc removes them too, once older than its
//! grace period.

use serde::Serialize;

use crate::db::now_unix;
use crate::model::error::{Error, Result};
use crate::ops::registry::Registry;
use crate::store::files::remove_dir_if_exists;
use crate::store::quarantine::{self, QuarantineEntry};

/// What `quarantine rm` removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantineRemoval {
    /// Every entry removed.
    pub removed: Vec<QuarantineEntry>,
}

impl Registry {
    /// Every entry of `quarantine/`.
    pub fn quarantine_list(&self) -> Result<Vec<QuarantineEntry>> {
        quarantine::list(self.layout(), now_unix())
    }

    /// Remove the quarantine entries named (`<entry>` or
    /// `quarantine/<entry>`), or every one with `all`. Every name is checked
    /// before anything is removed.
    pub fn quarantine_remove(
        &mut self,
        entries: &[String],
        all: bool,
    ) -> Result<QuarantineRemoval> {
        let _lock = self.lock()?;
        let listed = quarantine::list(self.layout(), now_unix())?;
        let mut doomed = Vec::new();
        if all {
            doomed.extend(listed.iter().cloned());
        }
        for entry in entries {
            let path = quarantine::entry_path(self.layout(), entry)?;
            let rel = path
                .strip_prefix(self.layout().root())
                .expect("quarantine entries are under the root")
                .to_string_lossy()
                .into_owned();
            let Some(found) = listed.iter().find(|q| q.path == rel) else {
                return Err(Error::NotFound {
                    what: "quarantine entry",
                    reference: format!("{entry} (`msb-registry quarantine list` shows them)"),
                });
            };
            if !doomed.contains(found) {
                doomed.push(found.clone());
            }
        }
        for q in &doomed {
            let path = self.layout().resolve(&q.path);
            if q.dir {
                remove_dir_if_exists(&path)?;
            } else {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::io("remove", &path, e));
                    }
                    _ => {}
                }
            }
        }
        Ok(QuarantineRemoval { removed: doomed })
    }
}
