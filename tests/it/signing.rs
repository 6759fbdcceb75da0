//! Signed snapshots and the trust policy (issue 26): keys made by
//! `ssh-keygen`, signatures checked by `ssh-keygen -Y verify` from the
//! outside, archives built by hand to tamper with, and every refusal
//! leaving the registry as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use msb_registry::Digest;
use msb_registry::exit;

use crate::tarcraft::{Tar, data_extents, zstd};
use crate::util::{
    Reg, SnapSpec, chain_in_registry, logical_bytes, make_image_cache, make_snapshot,
};

const NS: &str = "msb-registry-snapshot";

/// A key pair made by `ssh-keygen -t <kind>` under `dir`; returns the
/// private key's path (the public one is beside it, `.pub`).
fn keygen(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-C", name, "-f"])
        .arg(&key)
        .args(args)
        .output()
        .expect("ssh-keygen (openssh-client; scripts/test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

fn ed25519(dir: &Path, name: &str) -> PathBuf {
    keygen(dir, name, &["-t", "ed25519", "-N", ""])
}

fn public(key: &Path) -> String {
    std::fs::read_to_string(key.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string()
}

/// A trust file of `lines` (`principal options`, key) written beside the root.
fn trust(reg: &Reg, file: &str, lines: &[(&str, &Path)]) -> PathBuf {
    let text: String = lines
        .iter()
        .map(|(who, key)| format!("{who} {}\n", public(key)))
        .collect();
    let path = reg.path(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// `ssh-keygen -Y <op>` over `message` on stdin.
fn ssh_keygen_y(args: &[&str], message: &str) -> std::process::Output {
    let mut child = Command::new("ssh-keygen")
        .arg("-Y")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// An armored signature of `digest` made by ssh-keygen itself in `namespace`.
fn keygen_sign(key: &Path, namespace: &str, digest: &Digest) -> Vec<u8> {
    let out = ssh_keygen_y(
        &["sign", "-f", key.to_str().unwrap(), "-n", namespace],
        &digest.to_string(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `ssh-keygen -Y verify` of `sig` over `digest` as `principal`'s, against
/// the trust file `allowed`, in this crate's namespace.
fn keygen_verify(
    allowed: &Path,
    principal: &str,
    sig: &Path,
    digest: &Digest,
) -> std::process::Output {
    ssh_keygen_y(
        &[
            "verify",
            "-f",
            s(allowed),
            "-I",
            principal,
            "-n",
            NS,
            "-s",
            s(sig),
        ],
        &digest.to_string(),
    )
}

/// Alice's ed25519 key made under `reg`'s scratch directory, and the trust
/// file `allowed` naming her `alice`.
fn alice_trusted(reg: &Reg) -> (PathBuf, PathBuf) {
    let alice = ed25519(reg.dir.path(), "alice");
    let allowed = trust(reg, "allowed", &[("alice", &alice)]);
    (alice, allowed)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One snapshot directory written by the sample builder, for archives built by hand.
struct Snap {
    dir: PathBuf,
    digest: Digest,
    spec: SnapSpec,
}

fn snap(reg: &Reg, name: &str, parent: Option<Digest>, stage: &str) -> Snap {
    let image = make_image_cache(&reg.path("img"), "python:3.12", 7, &[4096]);
    let mut spec = SnapSpec::new(&image).label("stage", stage);
    spec.data.push((3 << 20, stage.as_bytes().to_vec()));
    if let Some(p) = parent {
        spec = spec.parent(p);
    }
    let dir = reg.path(&format!("hand/{name}"));
    let digest = make_snapshot(&dir, &spec);
    Snap { dir, digest, spec }
}

/// A zstd archive of `snaps` (parents first) and `signatures` as
/// (snapshot digest, index, armored bytes).
fn archive(snaps: &[&Snap], signatures: &[(Digest, usize, Vec<u8>)]) -> Vec<u8> {
    let mut tar = Tar::new();
    for sn in snaps {
        let prefix = sn.digest.archive_prefix();
        let manifest = std::fs::read(sn.dir.join("manifest.json")).unwrap();
        tar.file(&format!("{prefix}/manifest.json"), &manifest);
        let bytes = logical_bytes(&sn.spec);
        tar.sparse(
            &format!("{prefix}/upper.ext4"),
            bytes.len() as u64,
            &data_extents(&bytes),
        );
    }
    for (digest, i, bytes) in signatures {
        tar.file(
            &format!("signatures/{}/{i}.sshsig", digest.archive_prefix()),
            bytes,
        );
    }
    zstd(&tar.finish())
}

fn write(reg: &Reg, name: &str, bytes: &[u8]) -> PathBuf {
    let p = reg.path(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn signed_chain_travels_and_ssh_keygen_verifies_it() {
    let src = Reg::new();
    let (digests, _) = chain_in_registry(&src);
    let alice = ed25519(src.dir.path(), "alice");
    let sig = src
        .run(&[
            "sign",
            "app",
            "--key",
            s(&alice),
            "--principal",
            "alice@example.com",
        ])
        .ok()
        .stdout;
    assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----\n"), "{sig}");
    let allowed = trust(
        &src,
        "allowed",
        &[(&format!("alice@example.com namespaces=\"{NS}\""), &alice)],
    );

    // OpenSSH's own tool checks it, with no msb-registry involved.
    let sig_file = write(&src, "app.sig", sig.as_bytes());
    let verified = keygen_verify(&allowed, "alice@example.com", &sig_file, &digests[2]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    // ... and our signature is byte for byte the one ssh-keygen makes (ed25519 is deterministic).
    assert_eq!(keygen_sign(&alice, NS, &digests[2]), sig.as_bytes());
    // Over another digest it does not verify.
    let other = keygen_verify(&allowed, "alice@example.com", &sig_file, &digests[1]);
    assert!(!other.status.success());

    let show: serde_json::Value = src.json(&["show", "app"]);
    assert_eq!(show["signers"][0]["principal"], "alice@example.com");
    src.run(&["sign", "app", "--key", s(&alice)]).ok();
    let show: serde_json::Value = src.json(&["show", "app"]);
    assert_eq!(
        show["signers"].as_array().unwrap().len(),
        1,
        "one signature per key"
    );

    let tarball = src.export_chain("app", "app.tar.zst", &["--with-image"]);
    let dst = Reg::new();
    dst.run(&[
        "import",
        s(&tarball),
        "--require-signed",
        "--trust",
        s(&allowed),
    ])
    .ok();
    let list: Vec<serde_json::Value> = dst.json(&["list"]);
    let app = list
        .iter()
        .find(|e| e["digest"] == digests[2].to_string())
        .unwrap();
    assert_eq!(app["signers"][0]["principal"], format!("alice@example.com"));
    let base = list
        .iter()
        .find(|e| e["digest"] == digests[0].to_string())
        .unwrap();
    assert_eq!(
        base["signers"],
        serde_json::json!([]),
        "the head's signature covers its parents"
    );
    let report: serde_json::Value = dst.json(&["verify", "--signatures", "--trust", s(&allowed)]);
    assert_eq!(report["ok"], true);
    assert_eq!(report["links_checked"], 3);
    dst.run(&["verify", "--content"]).ok();

    // --dense stays the seed-era format: no signature member, so a policy refuses it.
    let dense = src.export_chain("app", "dense.tar", &["--dense", "--plain-tar"]);
    let members = Command::new("tar").arg("-tf").arg(&dense).output().unwrap();
    assert!(!String::from_utf8_lossy(&members.stdout).contains("signatures/"));
    let other = Reg::new();
    other
        .run(&[
            "import",
            s(&dense),
            "--require-signed",
            "--trust",
            s(&allowed),
        ])
        .fails(exit::SIGNATURE, "it is not signed");
    assert!(
        !other
            .root()
            .join("snapshots")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    );

    // rm takes the signature with its snapshot.
    dst.run(&["rm", "app"]).ok();
    let left = dst
        .run(&["sql", "SELECT count(*) FROM signatures"])
        .ok()
        .stdout;
    assert!(left.contains('0'), "{left}");
}

#[test]
fn tampered_head_or_swapped_parent_is_refused() {
    let reg = Reg::new();
    let (alice, allowed) = alice_trusted(&reg);
    let parent = snap(&reg, "p", None, "base");
    let head = snap(&reg, "h", Some(parent.digest), "app");
    let sig = keygen_sign(&alice, NS, &head.digest);
    let policy = ["--require-signed", "--trust", s(&allowed)];

    // The untouched archive is accepted.
    let good = write(
        &reg,
        "good.tar.zst",
        &archive(&[&parent, &head], &[(head.digest, 0, sig.clone())]),
    );
    let ok = Reg::new();
    let mut args = vec!["import", s(&good)];
    args.extend(policy);
    ok.run(&args).ok();

    // One byte of the head's manifest changed (its directory renamed to match): refused.
    let mut tampered = snap(&reg, "t", Some(parent.digest), "apq");
    tampered.spec.data.pop();
    tampered.spec.data.push((3 << 20, b"app".to_vec()));
    tampered.digest = make_snapshot(&tampered.dir, &tampered.spec);
    let bad = archive(&[&parent, &tampered], &[(tampered.digest, 0, sig.clone())]);
    refused_unchanged(&write(&reg, "t.tar.zst", &bad), &policy, "does not verify");

    // A parent swapped in: the signed head kept, another base beside it.
    let other = snap(&reg, "o", None, "evil");
    let swapped_head = snap(&reg, "sh", Some(other.digest), "app");
    let bad = archive(
        &[&other, &swapped_head],
        &[(swapped_head.digest, 0, sig.clone())],
    );
    refused_unchanged(&write(&reg, "s1.tar.zst", &bad), &policy, "does not verify");
    let bad = archive(&[&other, &parent, &head], &[(head.digest, 0, sig)]);
    refused_unchanged(
        &write(&reg, "s2.tar.zst", &bad),
        &policy,
        &format!("signature refused: {}", other.digest),
    );
}

/// Import `archive` with `extra` into a fresh registry holding one unrelated
/// snapshot: refused with exit 10 and `text`, and nothing changed.
#[track_caller]
fn refused_unchanged(archive: &Path, extra: &[&str], text: &str) {
    let reg = Reg::new();
    let image = make_image_cache(&reg.path("img"), "python:3.12", 9, &[4096]);
    let dir = reg.path("keep");
    make_snapshot(&dir, &SnapSpec::new(&image).label("keep", "yes"));
    reg.run(&["add", s(&dir)]).ok();
    let (tree, dump) = (reg.tree(), reg.dump());
    let mut args = vec!["import", s(archive)];
    args.extend(extra);
    reg.run(&args).fails(exit::SIGNATURE, text);
    assert_eq!(reg.tree(), tree);
    assert_eq!(reg.dump(), dump);
    reg.run(&["verify"]).ok();
}

#[test]
fn hostile_signatures_are_refused_and_change_nothing() {
    let reg = Reg::new();
    let (alice, allowed) = alice_trusted(&reg);
    let bob = ed25519(reg.dir.path(), "bob");
    let one = snap(&reg, "one", None, "one");
    let two = snap(&reg, "two", None, "two");
    let good = keygen_sign(&alice, NS, &one.digest);
    let policy = ["--require-signed", "--trust", s(&allowed)];
    let case = |name: &str, sigs: &[(Digest, usize, Vec<u8>)], extra: &[&str], text: &str| {
        let path = write(&reg, name, &archive(&[&one], sigs));
        refused_unchanged(&path, extra, text);
    };
    case("unsigned", &[], &policy, "it is not signed");
    case(
        "bob",
        &[(one.digest, 0, keygen_sign(&bob, NS, &one.digest))],
        &policy,
        "its key is not in the trust file",
    );
    // git's (or a file's) signature of the same bytes is not a snapshot signature, policy or not.
    let git = keygen_sign(&alice, "git", &one.digest);
    case(
        "git",
        &[(one.digest, 0, git.clone())],
        &policy,
        "namespace \"git\"",
    );
    case(
        "git-nopolicy",
        &[(one.digest, 0, git)],
        &[],
        "namespace \"git\"",
    );
    // A valid signature of another snapshot, moved under this one.
    let moved = keygen_sign(&alice, NS, &two.digest);
    case("moved", &[(one.digest, 0, moved)], &[], "does not verify");
    case(
        "dup",
        &[(one.digest, 0, good.clone()), (one.digest, 1, good.clone())],
        &[],
        "a second signature by key",
    );
    case(
        "garbage",
        &[(one.digest, 0, b"hello".to_vec())],
        &[],
        "not an armored SSH signature",
    );
    let path = write(
        &reg,
        "big",
        &archive(&[&one], &[(one.digest, 0, vec![b'a'; 8193])]),
    );
    let fresh = Reg::new();
    fresh
        .run(&["import", s(&path)])
        .fails(exit::REJECTED, "signature is 8193 bytes; the limit is 8192");
    let path = write(
        &reg,
        "sixteen",
        &archive(&[&one], &[(one.digest, 16, good.clone())]),
    );
    fresh
        .run(&["import", s(&path)])
        .fails(exit::REJECTED, "signature members are");

    // Keys outside their validity window, and keys for other namespaces only.
    for (name, options, text) in [
        ("expired", "valid-before=\"20200101\"", "has expired"),
        ("future", "valid-after=\"20990101Z\"", "is not valid yet"),
        ("gitonly", "namespaces=\"git\"", "only other namespaces"),
    ] {
        let t = trust(&reg, name, &[(&format!("alice {options}"), &alice)]);
        let path = write(
            &reg,
            &format!("{name}.tar.zst"),
            &archive(&[&one], &[(one.digest, 0, good.clone())]),
        );
        refused_unchanged(&path, &["--require-signed", "--trust", s(&t)], text);
    }
    // A trust file we cannot read fully is refused whole.
    let ca = trust(&reg, "ca", &[("*@example.com cert-authority", &alice)]);
    let path = write(
        &reg,
        "ok.tar.zst",
        &archive(&[&one], &[(one.digest, 0, good)]),
    );
    Reg::new()
        .run(&["import", s(&path), "--require-signed", "--trust", s(&ca)])
        .fails(exit::USAGE, "line 1: cert-authority is not supported");
    Reg::new()
        .run(&[
            "import",
            s(&path),
            "--require-signed",
            "--trust",
            s(&allowed),
        ])
        .ok();
}

#[test]
fn the_registry_policy_holds_every_write() {
    let reg = Reg::new();
    let alice = ed25519(reg.dir.path(), "alice");
    let one = snap(&reg, "one", None, "one");
    let unsigned = write(&reg, "u.tar.zst", &archive(&[&one], &[]));
    std::fs::create_dir_all(reg.root().join("trust")).unwrap();
    std::fs::write(reg.root().join("trust/require-signed"), "").unwrap();
    reg.run(&["import", s(&unsigned)])
        .fails(exit::SIGNATURE, "the trust file is missing");
    std::fs::write(
        reg.root().join("trust/allowed_signers"),
        format!("alice {}\n", public(&alice)),
    )
    .unwrap();
    reg.run(&["import", s(&unsigned)])
        .fails(exit::SIGNATURE, "it is not signed");
    reg.run(&["add", s(&one.dir)])
        .fails(exit::SIGNATURE, "it is not signed");
    let sig = write(&reg, "one.sig", &keygen_sign(&alice, NS, &one.digest));
    reg.run(&["add", s(&one.dir), "--name", "one", "--signature", s(&sig)])
        .ok();
    let show: serde_json::Value = reg.json(&["show", "one"]);
    assert_eq!(show["signers"][0]["principal"], "alice");
    reg.run(&["verify", "--signatures"]).ok();
}

#[test]
fn keys_we_take_and_keys_we_refuse() {
    let reg = Reg::new();
    let (digests, _) = chain_in_registry(&reg);
    // ECDSA P-256: signed here, checked by ssh-keygen.
    let ecdsa = keygen(
        reg.dir.path(),
        "ec",
        &["-t", "ecdsa", "-b", "256", "-N", ""],
    );
    let sig = reg.run(&["sign", "base", "--key", s(&ecdsa)]).ok().stdout;
    let allowed = trust(&reg, "allowed", &[("ops", &ecdsa)]);
    let sig_file = write(&reg, "base.sig", sig.as_bytes());
    let out = keygen_verify(&allowed, "ops", &sig_file, &digests[0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = reg.json(&["verify", "--signatures", "--trust", s(&allowed)]);
    assert_eq!(report["signatures"][0]["trusted"], "ops");
    // A passphrase-protected key is refused, never prompted for.
    let locked = keygen(reg.dir.path(), "locked", &["-t", "ed25519", "-N", "secret"]);
    reg.run(&["sign", "app", "--key", s(&locked)])
        .fails(exit::USAGE, "encrypted with a passphrase");
    reg.run(&["sign", "app", "--key", s(&allowed)])
        .fails(exit::USAGE, "not an OpenSSH private key");
    // Another trust file does not allow it: verify says so and fails.
    let bob = ed25519(reg.dir.path(), "bob");
    let bobs = trust(&reg, "bobs", &[("bob", &bob)]);
    let out = reg.run(&["verify", "--signatures", "--trust", s(&bobs)]);
    assert_eq!(out.code, exit::INTEGRITY, "{}", out.stderr);
    assert!(out.stdout.contains("not trusted by"), "{}", out.stdout);
}

/// A pull refused with exit 10 naming `text`, leaving `reg` without a snapshot.
#[track_caller]
fn pull_refused(reg: &Reg, args: &[&str], text: &str) {
    let mut a = vec!["pull"];
    a.extend(args);
    a.push("--insecure");
    let run = reg.run(&a);
    assert_eq!(run.code, exit::SIGNATURE, "{}", run.stderr);
    assert!(run.stderr.contains(text), "{:?} lacks {text:?}", run.stderr);
    let left = std::fs::read_dir(reg.root().join("snapshots")).map_or(0, |d| d.count());
    assert_eq!(left, 0, "a refused pull installed something");
}

#[test]
fn signatures_travel_through_a_registry_and_pull_holds_the_policy() {
    use crate::ociutil::{OciRegistry, Options, enabled};
    if !enabled() {
        return;
    }
    let remote = OciRegistry::start(Options::plain());
    let src = Reg::new();
    let (digests, _) = chain_in_registry(&src);
    let (alice, allowed) = alice_trusted(&src);
    src.run(&["sign", "app", "--key", s(&alice), "--principal", "alice"])
        .ok();
    let target = format!("{}:app", remote.repo("team/snaps"));
    let pushed: serde_json::Value = src
        .run(&[
            "push",
            "app",
            &target,
            "--with-parents",
            "--with-image",
            "--insecure",
            "--json",
        ])
        .ok()
        .json();
    let head = pushed["snapshots"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(head["signatures"], 1);
    let sig_tag = format!("sha256-{}.sig", digests[2].hex());
    assert!(
        remote.tags("team/snaps").contains(&sig_tag),
        "{:?}",
        remote.tags("team/snaps")
    );

    let policy = ["--require-signed", "--trust", s(&allowed)];
    let dst = Reg::new();
    let mut args = vec!["pull", &target, "--insecure"];
    args.extend(policy);
    dst.run(&args).ok();
    let show: serde_json::Value = dst.json(&["show", "app"]);
    assert_eq!(show["signers"][0]["principal"], "alice");
    dst.run(&["verify", "--signatures", "--trust", s(&allowed)])
        .ok();
    dst.run(&["verify", "--content"]).ok();

    // Someone else pushes a different snapshot under the same tag: unsigned, refused.
    let mallory = Reg::new();
    let other = snap(&mallory, "evil", None, "evil");
    mallory.run(&["add", s(&other.dir), "--name", "app"]).ok();
    mallory.run(&["push", "app", &target, "--insecure"]).ok();
    let mut args = vec![target.as_str()];
    args.extend(policy);
    pull_refused(&Reg::new(), &args, "it is not signed");
    // ... and with alice's signature of the real head copied under its own: refused, never installed.
    let stolen = keygen_sign(&alice, NS, &digests[2]);
    let sig_file = write(&mallory, "stolen.sig", &stolen);
    let forged = Command::new("sqlite3")
        .arg(mallory.root().join("registry.db"))
        .arg(format!(
            "INSERT INTO signatures VALUES ('{}', 'SHA256:x', NULL, '{NS}', CAST(readfile('{}') AS TEXT), 0)",
            other.digest,
            sig_file.display()
        ))
        .output()
        .unwrap();
    assert!(
        forged.status.success(),
        "{}",
        String::from_utf8_lossy(&forged.stderr)
    );
    mallory.run(&["push", "app", &target, "--insecure"]).ok();
    pull_refused(&Reg::new(), &[target.as_str()], "does not verify");
    pull_refused(&Reg::new(), &args, "does not verify");
}
