//! Crash injection through the real binary: kill it at every failpoint of
//! `failpoint::ALL` (abort, which like kill -9 runs no destructors, and for
//! the promotion steps also pause + SIGKILL), and at random instants while
//! an import and a gc race; then check that the next command finds a
//! consistent registry holding all of the operation or none of it, and
//! that gc plus redoing the operation give exactly the clean result.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use msb_registry::process::failpoint;

use crate::util::*;

const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;

/// The normalized registry state: files with sizes, and every index row
/// except timestamps and the import journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub tree: BTreeMap<String, u64>,
    pub rows: String,
}

/// Rows of the index, timestamps left out.
pub fn rows(reg: &Reg) -> String {
    sql(
        reg,
        "SELECT digest, name, parent, image_ref, image_manifest_digest, format, fstype, upper_file, \
         size_bytes, integrity_algorithm, integrity_digest, created_at, source_sandbox, labels \
         FROM snapshots ORDER BY digest; \
         SELECT * FROM snapshot_files ORDER BY snapshot, path; \
         SELECT * FROM images ORDER BY manifest_digest; \
         SELECT * FROM image_layers ORDER BY image, position; \
         SELECT path, kind, key, size, digest FROM cache_files ORDER BY path;",
    )
}

pub fn state(reg: &Reg) -> State {
    State {
        tree: reg.tree(),
        rows: rows(reg),
    }
}

fn sql(reg: &Reg, query: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(reg.root().join("registry.db"))
        .arg(query)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sql_set(reg: &Reg, query: &str) -> BTreeSet<String> {
    sql(reg, query).lines().map(str::to_string).collect()
}

fn dir_set(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// Assert every row has its file with its recorded size and no promotion
/// or rm is left unfinished; return the debris: paths under `snapshots/` and
/// `cache/` that no row names.
pub fn rows_have_files(reg: &Reg) -> Vec<String> {
    rows_have_files_settled(reg, true)
}

/// [`rows_have_files`]; with `settled` false, a promotion or rm left for
/// the next writer (after a read command) is allowed.
fn rows_have_files_settled(reg: &Reg, settled: bool) -> Vec<String> {
    let names = sql_set(reg, "SELECT name FROM snapshots");
    for line in sql_set(
        reg,
        "SELECT s.name || '/' || f.path || '|' || f.size FROM snapshot_files f JOIN snapshots s ON s.digest = f.snapshot",
    ) {
        let (path, size) = line.rsplit_once('|').unwrap();
        let meta = std::fs::metadata(reg.root().join("snapshots").join(path))
            .unwrap_or_else(|_| panic!("a row names missing file snapshots/{path}"));
        assert_eq!(meta.len().to_string(), size, "size of snapshots/{path}");
    }
    let mut debris = Vec::new();
    for name in dir_set(&reg.root().join("snapshots")) {
        if !names.contains(&name) {
            debris.push(format!("snapshots/{name}"));
            continue;
        }
        let files = sql_set(
            reg,
            &format!(
                "SELECT f.path FROM snapshot_files f JOIN snapshots s ON s.digest = f.snapshot WHERE s.name = '{name}'"
            ),
        );
        for f in dir_set(&reg.root().join("snapshots").join(&name)) {
            if !files.contains(&f) {
                debris.push(format!("snapshots/{name}/{f}"));
            }
        }
    }
    let cache_rows: BTreeMap<String, String> =
        sql_set(reg, "SELECT path || '|' || size FROM cache_files")
            .into_iter()
            .map(|l| {
                let (p, s) = l.rsplit_once('|').unwrap();
                (p.to_string(), s.to_string())
            })
            .collect();
    for (path, size) in &cache_rows {
        let meta = std::fs::metadata(reg.root().join("cache").join(path))
            .unwrap_or_else(|_| panic!("a row names missing file cache/{path}"));
        assert_eq!(&meta.len().to_string(), size, "size of cache/{path}");
    }
    for kind in ["manifests", "layers", "fsmeta", "vmdk"] {
        for f in dir_set(&reg.root().join("cache").join(kind)) {
            let rel = format!("{kind}/{f}");
            if !cache_rows.contains_key(&rel) {
                debris.push(format!("cache/{rel}"));
            }
        }
    }
    let promoting = sql_set(reg, "SELECT id FROM imports WHERE state = 'promoting'");
    if !settled {
        return debris;
    }
    assert!(
        promoting.is_empty(),
        "a promotion was left pending: {promoting:?}"
    );
    let removals = sql_set(reg, "SELECT name FROM pending_removals");
    assert!(
        removals.is_empty(),
        "an rm was left unfinished: {removals:?}"
    );
    debris
}

/// Rows and files agree exactly, nothing is staged and no import is open.
pub fn assert_clean(reg: &Reg) {
    let debris = rows_have_files(reg);
    assert!(debris.is_empty(), "debris left: {debris:?}");
    let staging = dir_set(&reg.root().join("staging"));
    assert!(staging.is_empty(), "staging left: {staging:?}");
    let open = sql_set(
        reg,
        "SELECT id FROM imports WHERE state NOT IN ('done', 'failed')",
    );
    assert!(open.is_empty(), "imports left open: {open:?}");
}

/// Archives and reference states, built once for every test here.
pub struct Fixture {
    /// Holds the source registry and the archives.
    pub _src: Reg,
    /// The chain base → deps → app (sparse 8 MiB uppers) with its image,
    /// as `export app --with-parents --with-image` writes it.
    pub main: PathBuf,
    /// One snapshot `other` on another image.
    pub other: PathBuf,
    /// The snapshot directory of `base` and the cache it came from, for `add`.
    pub base_dir: PathBuf,
    pub base_cache: PathBuf,
    /// State after a clean import of `main` into an empty registry.
    pub clean: State,
    /// State after a clean `add` of `base` with its cache.
    pub clean_add: State,
    /// Renames the clean import makes, and the files its archive holds.
    pub import_moves: usize,
    pub import_members: usize,
    /// Renames the clean add makes.
    pub add_moves: usize,
    /// Files the gc of the gc scenario removes.
    pub gc_files: usize,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let src = Reg::new();
        chain_in_registry(&src);
        let main = src.export_chain("app", "main.tar.zst", &["--with-image"]);
        let cache = src.path("other-cache");
        let image = make_image_cache(&cache, "alpine:3", 9, &[12288]);
        let mut spec = SnapSpec::new(&image).label("stage", "other");
        spec.image.0 = "alpine:3".into();
        let dir = src.path("src/other");
        make_snapshot(&dir, &spec);
        src.run(&[
            "add",
            dir.to_str().unwrap(),
            "--name",
            "other",
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
        .ok();
        let other = src.path("other.tar.zst");
        src.run(&[
            "export",
            "other",
            "--with-image",
            "-o",
            other.to_str().unwrap(),
        ])
        .ok();

        let reg = Reg::new();
        let r: serde_json::Value = reg.json(&["import", main.to_str().unwrap(), "--name", "app"]);
        let import_moves = r["imported"].as_array().unwrap().len()
            + r["cache_files_installed"].as_u64().unwrap() as usize;
        assert_clean(&reg);
        let clean = state(&reg);
        let import_members: usize = sql(
            &reg,
            "SELECT (SELECT count(*) FROM snapshot_files) + (SELECT count(*) FROM cache_files)",
        )
        .trim()
        .parse()
        .unwrap();

        let base_dir = src.path("src/base");
        let base_cache = src.path("src-cache");
        let reg = Reg::new();
        let r: serde_json::Value = reg.json(&add_args(&base_dir, &base_cache));
        let add_moves = 1 + r["cache_files_installed"].as_u64().unwrap() as usize;
        let clean_add = state(&reg);

        let reg = Reg::new();
        let f = Fixture {
            _src: src,
            main,
            other,
            base_dir,
            base_cache,
            clean,
            clean_add,
            import_moves,
            import_members,
            add_moves,
            gc_files: 0,
        };
        gc_setup(&reg, &f);
        let r: serde_json::Value = reg.json(&["gc", "--grace", "0"]);
        let gc_files = r["files"].as_u64().unwrap() as usize;
        assert_eq!(state(&reg), f.clean, "the gc scenario ends clean");
        Fixture { gc_files, ..f }
    })
}

/// `import` of the main archive, its head named `app`.
fn import_args(f: &Fixture) -> [&str; 4] {
    ["import", f.main.to_str().unwrap(), "--name", "app"]
}

fn add_args<'a>(dir: &'a Path, cache: &'a Path) -> Vec<&'a str> {
    vec![
        "add",
        dir.to_str().unwrap(),
        "--name",
        "base",
        "--cache-dir",
        cache.to_str().unwrap(),
    ]
}

/// A registry holding `main` plus garbage for gc: the image of a removed
/// snapshot, a snapshot directory without a row, a dead import's staging.
fn gc_setup(reg: &Reg, f: &Fixture) {
    reg.run(&import_args(f)).ok();
    reg.run(&["import", f.other.to_str().unwrap(), "--name", "other"])
        .ok();
    reg.run(&["rm", "other"]).ok();
    std::fs::create_dir_all(reg.root().join("snapshots/junk")).unwrap();
    std::fs::write(reg.root().join("snapshots/junk/upper.ext4"), b"junk").unwrap();
    std::fs::create_dir_all(reg.root().join("staging/0123abcd/x")).unwrap();
    std::fs::write(reg.root().join("staging/0123abcd.lock"), b"").unwrap();
}

/// How the process is stopped at its failpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// The failpoint aborts the process itself.
    Abort,
    /// The failpoint pauses; the test sends SIGKILL.
    PauseKill,
}

/// Run the binary on `reg` with `point` (`name[@n]`) armed and assert that
/// it died there: SIGABRT, or the pause line and then our SIGKILL.
pub fn crash_at(reg: &Reg, args: &[&str], point: &str, kill: Kill) {
    match kill {
        Kill::Abort => {
            let out = reg
                .command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .env(failpoint::ENV, format!("{point}:abort"))
                .output()
                .unwrap();
            assert_eq!(
                out.status.signal(),
                Some(SIGABRT),
                "{point}: failpoint not reached by {args:?}: {:?} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Kill::PauseKill => {
            let mut child = reg.held_at(args, point, Hold::Pause).child;
            child.kill().unwrap();
            let status = child.wait().unwrap();
            assert_eq!(status.signal(), Some(SIGKILL), "{point}");
        }
    }
}

/// The operations crashed, each with its own setup and clean result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Import,
    Add,
    Gc,
    Rm,
    /// `rename app web`; the redo (`import --name app`) renames it back.
    Rename,
    Export,
    /// An import crashed mid-promotion, then the recovery of it crashed too.
    Recover,
    /// A reindex rebuilding a deleted index.
    Reindex,
}

/// The commands run first after a crash, in turn: any command must do.
const FIRST: &[&str] = &["list", "verify", "gc", "import", "lineage"];

/// Crash `op` at `point`, then check the registry: consistent, all or
/// nothing, debris only where gc removes it, and clean after gc and a redo.
fn walk_one(f: &Fixture, op: Op, point: &str, kill: Kill, first: &str) {
    let ctx = format!("{op:?} at {point} ({kill:?}), then {first}");
    let reg = Reg::new();
    let main = &import_args(f)[..];
    let (before, after) = match op {
        Op::Import | Op::Recover => {
            let none = {
                reg.run(&["gc"]).ok();
                rows(&reg)
            };
            if op == Op::Recover {
                crash_at(&reg, main, "promote.rename@3", Kill::Abort);
                crash_at(&reg, &["gc", "--dry-run"], point, kill);
            } else {
                crash_at(&reg, main, point, kill);
            }
            (none, f.clean.rows.clone())
        }
        Op::Add => {
            reg.run(&["gc"]).ok();
            let none = rows(&reg);
            crash_at(&reg, &add_args(&f.base_dir, &f.base_cache), point, kill);
            (none, f.clean_add.rows.clone())
        }
        Op::Gc => {
            gc_setup(&reg, f);
            let before = rows(&reg);
            crash_at(&reg, &["gc", "--grace", "0"], point, kill);
            (before, f.clean.rows.clone())
        }
        Op::Rm => {
            reg.run(main).ok();
            let before = rows(&reg);
            crash_at(&reg, &["rm", "app"], point, kill);
            let other = Reg::new();
            other.run(main).ok();
            other.run(&["rm", "app"]).ok();
            (before, rows(&other))
        }
        Op::Rename => {
            reg.run(main).ok();
            let before = rows(&reg);
            crash_at(&reg, &["rename", "app", "web"], point, kill);
            let other = Reg::new();
            other.run(main).ok();
            other.run(&["rename", "app", "web"]).ok();
            (before, rows(&other))
        }
        Op::Export => {
            reg.run(main).ok();
            let out = reg.path("out.tar.zst");
            std::fs::write(&out, b"old").unwrap();
            let export = [
                "export",
                "app",
                "--with-parents",
                "--with-image",
                "-o",
                out.to_str().unwrap(),
            ];
            crash_at(&reg, &export, point, kill);
            assert_eq!(
                std::fs::read(&out).unwrap(),
                b"old",
                "{ctx}: target replaced"
            );
            assert_eq!(state(&reg), f.clean, "{ctx}: export changed the registry");
            reg.run(&export).ok();
            assert_eq!(
                std::fs::read(&out).unwrap(),
                std::fs::read(&f.main).unwrap(),
                "{ctx}: the redone export differs"
            );
            return;
        }
        Op::Reindex => {
            reg.run(main).ok();
            let files = reg.tree();
            for f in ["registry.db", "registry.db-wal", "registry.db-shm"] {
                let _ = std::fs::remove_file(reg.root().join(f));
            }
            crash_at(&reg, &["reindex"], point, kill);
            let first_args = match first {
                "import" => main.to_vec(),
                "lineage" => vec!["lineage", "app"],
                cmd => vec![cmd],
            };
            reg.run(&first_args).fails(
                5,
                "is missing but snapshots/ holds artifacts; run `msb-registry reindex`",
            );
            assert_eq!(reg.tree(), files, "{ctx}: files changed");
            reg.run(&["reindex"]).ok();
            assert_eq!(
                rows(&reg),
                f.clean.rows,
                "{ctx}: reindex restored other rows"
            );
            reg.run(&["verify", "--content"]).ok();
            return;
        }
    };

    let (first_args, redo_first): (Vec<&str>, bool) = match first {
        "import" if op != Op::Add => (main.to_vec(), true),
        "import" => (add_args(&f.base_dir, &f.base_cache), true),
        "lineage" if op == Op::Rename => (vec!["lineage", "web"], false),
        "lineage" => (vec!["lineage", "app"], false),
        "gc" => (vec!["gc", "--grace", "0"], false),
        cmd => (vec![cmd], false),
    };
    let run = reg.run(&first_args);
    let committed = if redo_first && run.code == 0 {
        true
    } else {
        assert!(
            run.code == 0 || (first == "lineage" && run.code == 3),
            "{ctx}: exit {} {}",
            run.code,
            run.stderr
        );
        let now = rows(&reg);
        assert!(
            now == before || now == after,
            "{ctx}: the index holds part of the operation:\n{now}"
        );
        now == after
    };
    let writes = matches!(first, "gc" | "import");
    let debris = rows_have_files_settled(&reg, writes);
    // A crashed promotion, rm or rename is finished by the next command that writes;
    // read commands (list, verify, lineage) take no lock and leave it to that.
    if matches!(op, Op::Import | Op::Add | Op::Recover | Op::Rm | Op::Rename) && writes
        || first == "gc"
    {
        assert!(debris.is_empty(), "{ctx}: files without rows: {debris:?}");
    }
    if let (false, Op::Import | Op::Add) = (redo_first, op) {
        let expect_committed = matches!(
            point,
            "promote.committed" | "add.installed" | "lease.staging-removed"
        );
        assert_eq!(committed, expect_committed, "{ctx}");
    }
    let v = reg.run(&["verify"]);
    assert_eq!(v.code, 0, "{ctx}: verify: {}{}", v.stdout, v.stderr);

    reg.run(&["gc", "--grace", "0"]).ok();
    assert_clean(&reg);
    let clean = match op {
        Op::Add => {
            reg.run(&add_args(&f.base_dir, &f.base_cache)).ok();
            &f.clean_add
        }
        _ => {
            reg.run(main).ok();
            &f.clean
        }
    };
    assert_clean(&reg);
    assert_eq!(&state(&reg), clean, "{ctx}: not the clean state");
    reg.run(&["verify", "--content"]).ok();
}

/// Every failpoint and the cases that walk it.
fn cases(f: &Fixture) -> Vec<(Op, String, Kill)> {
    use Kill::*;
    use Op::*;
    let mut cases = Vec::new();
    let promotion = |op: Op, moves: usize, cases: &mut Vec<(Op, String, Kill)>| {
        let mut points = vec![failpoint::PROMOTE_JOURNALED.to_string()];
        points.extend((1..=moves).map(|n| format!("{}@{n}", failpoint::PROMOTE_RENAME)));
        points.extend(
            [
                failpoint::PROMOTE_RENAMED,
                failpoint::PROMOTE_BEFORE_COMMIT,
                failpoint::PROMOTE_COMMITTED,
            ]
            .map(String::from),
        );
        for p in points {
            cases.push((op, p.clone(), Abort));
            if op == Import {
                cases.push((op, p, PauseKill));
            }
        }
    };
    for p in [failpoint::LEASE_ACQUIRED, failpoint::IMPORT_STREAMED] {
        cases.push((Import, p.into(), Abort));
    }
    for n in [1, 2, f.import_members / 2, f.import_members] {
        cases.push((
            Import,
            format!("{}@{n}", failpoint::IMPORT_MEMBER_STAGED),
            Abort,
        ));
    }
    for p in [failpoint::IMPORT_RECORDED, failpoint::IMPORT_VERIFIED] {
        cases.push((Import, p.into(), Abort));
        cases.push((Import, p.into(), PauseKill));
    }
    promotion(Import, f.import_moves, &mut cases);
    cases.push((Import, failpoint::LEASE_STAGING_REMOVED.into(), Abort));
    cases.push((Recover, failpoint::RECOVER_UNDONE.into(), Abort));
    cases.push((Recover, failpoint::RECOVER_UNDONE.into(), PauseKill));
    for p in [failpoint::LEASE_ACQUIRED, failpoint::ADD_STAGED] {
        cases.push((Add, p.into(), Abort));
    }
    promotion(Add, f.add_moves, &mut cases);
    cases.push((Add, failpoint::ADD_INSTALLED.into(), Abort));
    cases.push((Add, failpoint::LEASE_STAGING_REMOVED.into(), Abort));
    cases.push((Export, failpoint::EXPORT_PLANNED.into(), Abort));
    cases.push((Export, failpoint::EXPORT_BEFORE_RENAME.into(), Abort));
    for p in [failpoint::GC_PLANNED, failpoint::GC_ROWS_DELETED] {
        cases.push((Gc, p.into(), Abort));
        cases.push((Gc, p.into(), PauseKill));
    }
    for n in 1..=f.gc_files {
        cases.push((Gc, format!("{}@{n}", failpoint::GC_FILE_REMOVED), Abort));
    }
    for p in [
        failpoint::RM_BEFORE_COMMIT,
        failpoint::RM_COMMITTED,
        failpoint::RM_RENAMED,
    ] {
        cases.push((Rm, p.into(), Abort));
    }
    for p in [failpoint::REINDEX_BEFORE_COMMIT, failpoint::REINDEX_REBUILT] {
        cases.push((Reindex, p.into(), Abort));
        cases.push((Reindex, p.into(), PauseKill));
    }
    for p in [
        failpoint::RENAME_BEFORE_COMMIT,
        failpoint::RENAME_COMMITTED,
        failpoint::RENAME_MOVED,
    ] {
        cases.push((Rename, p.into(), Abort));
        cases.push((Rename, p.into(), PauseKill));
    }
    cases
}

/// Cases walked so far, by failpoint name (tests run in parallel).
static WALKED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

fn walk(ops: &[Op]) {
    let f = fixture();
    let all = cases(f);
    let mine: Vec<_> = all.iter().filter(|(op, ..)| ops.contains(op)).collect();
    for (i, (op, point, kill)) in mine.iter().enumerate() {
        walk_one(f, *op, point, *kill, FIRST[i % FIRST.len()]);
        WALKED
            .lock()
            .unwrap()
            .insert(point.split('@').next().unwrap().to_string());
    }
    eprintln!("walked {} crash cases of {ops:?}", mine.len());
}

#[test]
fn every_failpoint_is_walked() {
    let f = fixture();
    let names: BTreeSet<String> = cases(f)
        .iter()
        .map(|(_, p, _)| p.split('@').next().unwrap().to_string())
        .collect();
    let all: BTreeSet<String> = failpoint::ALL.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, all, "the walk and failpoint::ALL differ");
    eprintln!(
        "{} failpoints, {} crash cases ({} renames per import, {} gc deletions)",
        all.len(),
        cases(f).len(),
        f.import_moves,
        f.gc_files
    );
}

#[test]
fn import_survives_a_crash_at_every_step() {
    walk(&[Op::Import, Op::Recover]);
}

#[test]
fn add_survives_a_crash_at_every_step() {
    walk(&[Op::Add]);
}

#[test]
fn gc_rm_and_export_survive_a_crash_at_every_step() {
    walk(&[Op::Gc, Op::Rm, Op::Export]);
}

/// Issue 17: a reindex rebuilding a lost index, killed at each step,
/// leaves the index lost (every other command exit 5), never empty, and
/// the next reindex restores every row.
#[test]
fn reindex_survives_a_crash_at_every_step() {
    walk(&[Op::Reindex]);
}

#[test]
fn rename_survives_a_crash_at_every_step() {
    walk(&[Op::Rename]);
}

// ------------------------------------------------------- random kills

/// splitmix64: a seeded generator, enough for kill delays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn spawn(reg: &Reg, args: &[&str]) -> Child {
    reg.command(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Kill imports (and a gc racing them) after random delays; after each
/// kill the registry recovers to all or nothing and then to the clean state.
#[test]
fn random_kills_during_import_and_gc() {
    let f = fixture();
    let kills: usize = std::env::var("MSB_SOAK_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("MSB_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let main = &import_args(f)[..];
    let timer = Reg::new();
    let start = std::time::Instant::now();
    timer.run(main).ok();
    let span = start.elapsed().as_micros() as u64 * 5 / 4;

    let mut rng = Rng::new(seed);
    let mut mid = 0;
    for k in 0..kills {
        let reg = Reg::new();
        reg.run(&["gc"]).ok();
        let none = rows(&reg);
        let mut import = spawn(&reg, main);
        std::thread::sleep(std::time::Duration::from_micros(rng.below(span / 2)));
        let mut gc = spawn(&reg, &["gc"]);
        std::thread::sleep(std::time::Duration::from_micros(rng.below(span)));
        let victim_is_gc = rng.below(4) == 0;
        let (victim, survivor) = if victim_is_gc {
            (&mut gc, &mut import)
        } else {
            (&mut import, &mut gc)
        };
        let finished = victim.try_wait().unwrap().is_some();
        victim.kill().ok();
        let status = victim.wait().unwrap();
        let out = survivor.wait_with_output_ref();
        assert!(
            out.0.success(),
            "kill {k}: the process not killed failed: {}",
            out.1
        );
        if !finished && status.signal() == Some(SIGKILL) {
            mid += 1;
        }
        let ctx = format!("kill {k} (seed {seed:#x}, gc killed: {victim_is_gc})");
        // A writer's open recovers; a dry run deletes nothing.
        reg.run(&["gc", "--dry-run"]).ok();
        let now = rows(&reg);
        assert!(
            now == none || now == f.clean.rows,
            "{ctx}: partial import:\n{now}"
        );
        let debris = rows_have_files(&reg);
        assert!(debris.is_empty(), "{ctx}: files without rows: {debris:?}");
        reg.run(&["verify"]).ok();
        reg.run(&["gc"]).ok();
        assert_clean(&reg);
        reg.run(main).ok();
        assert_clean(&reg);
        assert_eq!(state(&reg), f.clean, "{ctx}");
    }
    eprintln!("random kills: {kills} rounds (seed {seed:#x}), {mid} landed mid-operation");
}

trait WaitRef {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String);
}

impl WaitRef for Child {
    fn wait_with_output_ref(&mut self) -> (std::process::ExitStatus, String) {
        let mut err = String::new();
        if let Some(mut e) = self.stderr.take() {
            std::io::Read::read_to_string(&mut e, &mut err).unwrap();
        }
        (self.wait().unwrap(), err)
    }
}

/// Regression: an import that opened the registry before another import
/// died mid-promotion used to find the dead one's renamed files in its way
/// (exit 4, "run gc", which leaves promotions alone); promotion now rolls
/// dead promotions back first, under the registry lock.
#[test]
fn an_import_recovers_a_promotion_that_died_after_it_opened() {
    let f = fixture();
    let reg = Reg::new();
    reg.run(&["gc"]).ok();
    let mut late = reg
        .command(&["import", "-", "--name", "app"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while dir_set(&reg.root().join("staging")).is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let moves = f.import_moves;
    crash_at(
        &reg,
        &import_args(f),
        &format!("{}@{moves}", failpoint::PROMOTE_RENAME),
        Kill::PauseKill,
    );
    let mut stdin = late.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &std::fs::read(&f.main).unwrap()).unwrap();
    drop(stdin);
    let (status, stderr) = late.wait_with_output_ref();
    assert!(status.success(), "{stderr}");
    assert_clean(&reg);
    assert_eq!(state(&reg), f.clean);
}
