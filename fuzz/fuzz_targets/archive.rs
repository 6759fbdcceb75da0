//! Fuzz the whole import path: arbitrary bytes go through
//! `Registry::import` (zstd detection and framing, the tar header walk, the
//! member grammar, GNU sparse maps, staging, verification, promotion) into a
//! registry on tmpfs. Whatever the bytes:
//!
//! - nothing panics;
//! - nothing is written outside the registry root (the root sits three
//!   directories deep in a sandbox that must hold nothing else);
//! - a refused import leaves the registry exactly as it was (file tree and
//!   index), with no staging left behind;
//! - an accepted import leaves a registry that passes `verify --content`,
//!   holds every snapshot the report names, and accepts the same archive a
//!   second time as a no-op.
//!
//! After an accepted import the registry is recreated, so every input starts
//! from the same empty state.
#![no_main]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use msb_registry::Registry;
use msb_registry::{ImportOptions, ImportSource};
use msb_registry::NoProgress;

/// The fuzz sandbox: `<dir>/input` and the registry at `<dir>/a/b/root`.
struct Sandbox {
    dir: tempfile::TempDir,
    registry: Option<Registry>,
    /// The empty registry's file tree.
    baseline: BTreeMap<String, u64>,
    /// The empty registry's index rows.
    baseline_index: String,
}

impl Sandbox {
    fn new() -> Self {
        let base = Path::new("/dev/shm");
        let dir = if base.is_dir() {
            tempfile::tempdir_in(base)
        } else {
            tempfile::tempdir()
        }
        .expect("create the sandbox");
        let mut sandbox = Sandbox {
            dir,
            registry: None,
            baseline: BTreeMap::new(),
            baseline_index: String::new(),
        };
        sandbox.reset();
        sandbox
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("a/b/root")
    }

    fn input(&self) -> PathBuf {
        self.dir.path().join("input")
    }

    /// Start again from an empty registry.
    fn reset(&mut self) {
        self.registry = None;
        let root = self.root();
        if root.exists() {
            std::fs::remove_dir_all(&root).expect("remove the registry");
        }
        self.registry = Some(Registry::open(&root).expect("open a fresh registry"));
        self.baseline = tree(&root);
        self.baseline_index = index(&root);
    }

    fn registry(&mut self) -> &mut Registry {
        self.registry.as_mut().expect("registry is open")
    }

    /// Everything in the sandbox outside the registry root.
    fn outside_root(&self) -> Vec<String> {
        let mut out: Vec<String> = tree(self.dir.path())
            .into_keys()
            .filter(|p| !p.starts_with("a/b/root/"))
            .collect();
        out.sort();
        out
    }
}

/// Every file and directory under `root` with its size, except the
/// database and lock files (which change on every command).
fn tree(root: &Path) -> BTreeMap<String, u64> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.expect("read directory entry").path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("registry.db") || name.ends_with(".lock") {
                continue;
            }
            let m = p.symlink_metadata().expect("stat");
            if m.is_dir() {
                out.insert(format!("{rel}/"), 0);
                walk(root, &p, out);
            } else {
                out.insert(rel, m.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The index rows that describe content, as text.
fn index(root: &Path) -> String {
    let query = "SELECT 'snapshot', digest, name, parent FROM snapshots
        UNION ALL SELECT 'file', snapshot, path, digest FROM snapshot_files
        UNION ALL SELECT 'image', manifest_digest, ref, metadata_file FROM images
        UNION ALL SELECT 'layer', image, position, diff_id FROM image_layers
        UNION ALL SELECT 'cache', path, size, digest FROM cache_files
        ORDER BY 1, 2, 3";
    let rows = msb_registry::sql(root, query).expect("query the index");
    serde_json::to_string(&rows).expect("rows serialize")
}

thread_local! {
    static SANDBOX: RefCell<Option<Sandbox>> = const { RefCell::new(None) };
}

/// Archives whose base is absent land shallow, so the fuzzer explores the
/// whole import rather than stopping at the base check.
const SHALLOW_OK: ImportOptions = ImportOptions {
    name: None,
    allow_shallow: true,
};

const EXPECTED_OUTSIDE: [&str; 3] = ["a/", "a/b/", "input"];

fn run(sandbox: &mut Sandbox, data: &[u8]) {
    let input = sandbox.input();
    std::fs::write(&input, data).expect("write the input");
    let root = sandbox.root();
    let source = ImportSource::Path(input);
    let result = sandbox
        .registry()
        .import(&source, &SHALLOW_OK, &NoProgress);
    assert_eq!(
        sandbox.outside_root(),
        EXPECTED_OUTSIDE,
        "import wrote outside the registry root"
    );
    let report = match result {
        Err(e) => {
            let code = e.exit_code();
            assert!(
                matches!(code, 4..=6),
                "refusal with exit code {code} (expected 4, 5 or 6): {e}"
            );
            let line = e.report_line();
            assert!(
                !line.chars().any(char::is_control),
                "the error line holds control characters: {line:?}"
            );
            assert_eq!(
                tree(&root),
                sandbox.baseline,
                "a refused import changed files"
            );
            assert_eq!(
                index(&root),
                sandbox.baseline_index,
                "a refused import changed the index"
            );
            return;
        }
        Ok(report) => report,
    };
    let verified = sandbox
        .registry()
        .verify(None, true, &NoProgress)
        .expect("verify runs");
    assert!(
        verified.problems.is_empty(),
        "accepted import does not verify: {verified:?}"
    );
    assert!(
        verified.debris.is_empty(),
        "accepted import left debris: {verified:?}"
    );
    assert!(
        verified.unfinished_imports.is_empty(),
        "accepted import left an unfinished import: {verified:?}"
    );
    let listed: Vec<_> = sandbox
        .registry()
        .list()
        .expect("list")
        .into_iter()
        .map(|e| e.digest)
        .collect();
    assert!(
        report.skipped.is_empty(),
        "a fresh registry skipped {report:?}"
    );
    assert_eq!(
        listed.len(),
        report.imported.len(),
        "index vs report: {report:?}"
    );
    for d in &report.imported {
        assert!(listed.contains(d), "{d} imported but not listed");
    }
    assert!(listed.contains(&report.head));

    let (files, rows) = (tree(&root), index(&root));
    let again = sandbox
        .registry()
        .import(&source, &SHALLOW_OK, &NoProgress)
        .expect("the same archive imports again");
    assert!(
        again.imported.is_empty(),
        "second import installed {again:?}"
    );
    assert_eq!(again.skipped, report.imported);
    assert_eq!(
        (tree(&root), index(&root)),
        (files, rows),
        "second import changed the registry"
    );
    sandbox.reset();
}

fuzz_target!(|data: &[u8]| {
    SANDBOX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let sandbox = slot.get_or_insert_with(Sandbox::new);
        run(sandbox, data);
    });
});
