//! Credentials and where they go, through the fake registry of
//! [`crate::oci_fake`] (docs/oci.md): basic and bearer
//! challenges answered from `--password-stdin`, docker config `auths`,
//! identity tokens, `credHelpers` and `credsStore`; refusals exit 9; no
//! credential is printed or stored, nor sent to another host by a redirect
//! or an upload's Location.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::oci_fake::*;
use crate::util::*;

#[test]
fn redirected_blobs_arrive_without_credentials() {
    // Bearer tokens, and basic credentials (the password itself); the
    // other listener on another port of the same address, and by another
    // host name.
    for (kind, host) in [("bearer", "127.0.0.1"), ("basic", "localhost")] {
        let fake = Fake::start();
        let env = Env::new();
        let (src, digest) = source("base");
        fake.config(json!({"auth": {"kind": kind, "username": USER, "password": PASSWORD}}));
        let target = fake.at("base");
        let with_password = ["--insecure", "--username", USER, "--password-stdin"];
        let stdin = format!("{PASSWORD}\n");
        let mut args = vec!["push", "base", &target];
        args.extend(with_password);
        env.run(&src, &args, stdin.as_bytes()).ok();

        fake.config(json!({"redirect_blobs": true, "redirect_host": host}));
        fake.control(json!({"op": "reset_log"}));
        let dst = populated();
        let mut args = vec!["pull", &target, "--json"];
        args.extend(with_password);
        let run = env.run(&dst, &args, stdin.as_bytes());
        let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
        assert_eq!(report["head"], digest.to_string());
        let log = fake.log();
        let redirected: Vec<&Value> = log.iter().filter(|e| e["listener"] == "other").collect();
        assert!(
            !redirected.is_empty(),
            "{kind}: no blob was fetched through the redirect"
        );
        for e in &redirected {
            assert_eq!(
                e["authorization"],
                Value::Null,
                "{kind}: credentials crossed to {host}:{}: {e}",
                "other port"
            );
        }
        let scheme = if kind == "basic" { "Basic " } else { "Bearer " };
        assert!(
            log.iter().any(|e| e["listener"] == "registry"
                && e["authorization"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(scheme))),
            "{kind}: the registry itself never saw credentials"
        );
        dst.run(&["verify", "--content"]).ok();
    }
}

#[test]
fn uploads_sent_to_another_host_carry_no_credentials() {
    // A registry may answer a new upload with a Location on another host
    // (its storage): the blob goes there, the credentials do not.
    for kind in ["bearer", "basic"] {
        let fake = Fake::start();
        let env = Env::new();
        let (src, digest) = source("base");
        fake.config(json!({
            "auth": {"kind": kind, "username": USER, "password": PASSWORD},
            "upload_elsewhere": true,
        }));
        let target = fake.at("base");
        let with_password = ["--insecure", "--username", USER, "--password-stdin"];
        let stdin = format!("{PASSWORD}\n");
        let mut args = vec!["push", "base", &target];
        args.extend(with_password);
        env.run(&src, &args, stdin.as_bytes()).ok();
        let log = fake.log();
        let elsewhere: Vec<&Value> = log.iter().filter(|e| e["listener"] == "other").collect();
        assert!(!elsewhere.is_empty(), "{kind}: no upload went elsewhere");
        for e in &elsewhere {
            assert_eq!(
                e["authorization"],
                Value::Null,
                "{kind}: credentials sent with an upload to another port: {e}"
            );
        }
        let dst = populated();
        let mut args = vec!["pull", &target, "--json"];
        args.extend(with_password);
        let run = env.run(&dst, &args, stdin.as_bytes());
        let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
        assert_eq!(report["head"], digest.to_string());
        dst.run(&["verify", "--content"]).ok();
    }
}

/// A base64 encoder for docker's `auth` field.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= c.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Assert no output of `run` and no file under the registries' roots (the
/// index, its WAL, staging, snapshots) holds the password, alone or in a
/// basic `user:password` pair.
#[track_caller]
fn password_nowhere(run: &Run, regs: &[&Reg]) {
    let b64 = base64(format!("{USER}:{PASSWORD}").as_bytes());
    for needle in [PASSWORD, b64.as_str()] {
        assert!(!run.stdout.contains(needle) && !run.stderr.contains(needle));
    }
    let mut files = Vec::new();
    for reg in regs {
        files_under(&reg.root(), &mut files);
    }
    assert!(files.iter().any(|f| f.ends_with("registry.db")));
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [PASSWORD.as_bytes(), b64.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the credentials",
                f.display()
            );
        }
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}

/// Push then pull `base` through a fake that wants `kind` auth ("bearer"
/// or "basic"), with `--username`/`--password-stdin`, asserting both work
/// and leak nothing.
fn password_stdin_round_trip(kind: &str) {
    let env = Env::new();
    let fake = Fake::start();
    fake.config(json!({"auth": {"kind": kind, "username": USER, "password": PASSWORD}}));
    let (src, digest) = source("base");
    let target = fake.at("base");
    let stdin = format!("{PASSWORD}\n");
    let with_password = ["--insecure", "--username", USER, "--password-stdin"];
    let mut args = vec!["push", "base", &target];
    args.extend(with_password);
    let pushed = env.run(&src, &args, stdin.as_bytes()).ok();
    let dst = populated();
    let mut args = vec!["pull", &target, "--json"];
    args.extend(with_password);
    let pulled = env.run(&dst, &args, stdin.as_bytes()).ok();
    let report: Value = serde_json::from_str(&pulled.stdout).unwrap();
    assert_eq!(report["head"], digest.to_string());
    let log = fake.log();
    let (path, scheme) = match kind {
        "bearer" => ("/token", "Basic "),
        _ => ("/v2/", "Basic "),
    };
    assert!(
        log.iter()
            .any(|e| e["path"].as_str().unwrap().starts_with(path)
                && e["authorization"]
                    .as_str()
                    .is_some_and(|a| a.starts_with(scheme))),
        "{kind}: the credentials never reached {path}"
    );
    password_nowhere(&pushed, &[&src, &dst]);
    password_nowhere(&pulled, &[&src, &dst]);
    dst.run(&["verify", "--content"]).ok();
    src.run(&["verify", "--content"]).ok();
}

#[test]
fn bearer_token_with_password_stdin() {
    password_stdin_round_trip("bearer");
}

#[test]
fn basic_auth_with_password_stdin() {
    password_stdin_round_trip("basic");
}

#[test]
fn bearer_token_with_docker_config_auths() {
    let env = Env::new();
    // The fake's port is only known once it runs: the config names it
    // inside bearer_round_trip's fake, so write it per port.
    let fake = Fake::start();
    fake.config(json!({"auth": {"kind": "bearer", "username": USER, "password": PASSWORD}}));
    env.write_config(&json!({"auths": {
        fake.host(): {"auth": base64(format!("{USER}:{PASSWORD}").as_bytes())}
    }}));
    round_trip_without_flags(&env, &fake);
}

#[test]
fn bearer_token_with_a_docker_config_identity_token() {
    // `docker login` to some registries stores an OAuth2 refresh token,
    // which the token service exchanges (POST) for an access token.
    let env = Env::new();
    let fake = Fake::start();
    fake.config(json!({"auth": {
        "kind": "bearer", "username": USER, "password": "unused-elsewhere",
        "identity_token": PASSWORD,
    }}));
    env.write_config(&json!({"auths": {fake.host(): {"identitytoken": PASSWORD}}}));
    round_trip_without_flags(&env, &fake);
    assert!(
        fake.log()
            .iter()
            .any(|e| e["method"] == "POST" && e["path"].as_str().unwrap().starts_with("/token")),
        "the identity token was never exchanged"
    );
}

#[test]
fn bearer_token_with_credential_helper() {
    let env = Env::new();
    let fake = Fake::start();
    fake.config(json!({"auth": {"kind": "bearer", "username": USER, "password": PASSWORD}}));
    std::fs::create_dir_all(env.bin()).unwrap();
    let helper = env.bin().join("docker-credential-msbtest");
    let asked = env.dir.path().join("asked");
    write_script(
        &helper,
        &format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" >> {}\n\
             printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}\\n' \"$server\"\n",
            asked.display()
        ),
    );
    env.write_config(&json!({"credHelpers": {fake.host(): "msbtest"}}));
    round_trip_without_flags(&env, &fake);
    let asked = std::fs::read_to_string(&asked).unwrap();
    assert!(
        !asked.is_empty() && asked.lines().all(|l| l == fake.host()),
        "helper asked for {asked:?}"
    );

    // The same helper as the store for every registry.
    let fake = Fake::start();
    fake.config(json!({"auth": {"kind": "bearer", "username": USER, "password": PASSWORD}}));
    env.write_config(&json!({"credsStore": "msbtest"}));
    round_trip_without_flags(&env, &fake);
}

/// Push and pull through `fake` with only the docker config of `env`.
fn round_trip_without_flags(env: &Env, fake: &Fake) {
    let (src, digest) = source("base");
    let target = fake.at("base");
    let pushed = env
        .run(&src, &["push", "base", &target, "--insecure"], b"")
        .ok();
    let dst = populated();
    let pulled = env
        .run(&dst, &["pull", &target, "--insecure", "--json"], b"")
        .ok();
    let report: Value = serde_json::from_str(&pulled.stdout).unwrap();
    assert_eq!(report["head"], digest.to_string());
    password_nowhere(&pushed, &[&src, &dst]);
    password_nowhere(&pulled, &[&src, &dst]);
    dst.run(&["verify", "--content"]).ok();
    src.run(&["verify", "--content"]).ok();
}

#[test]
fn refused_credentials_exit_9() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, _) = source("base");
    push(&env, &src, "base", &fake);
    fake.config(json!({"auth": {"kind": "bearer", "username": USER, "password": PASSWORD}}));
    let dst = populated();
    let before = (dst.tree(), index(&dst));
    let target = fake.at("base");
    let with_password = ["--username", USER, "--password-stdin"];
    let pull = |extra: &[&str], stdin: &[u8]| {
        let mut args = vec!["pull", &target, "--insecure"];
        args.extend(extra);
        env.run(&dst, &args, stdin)
    };

    // A wrong password, from stdin and from the docker config.
    let wrong = pull(&with_password, b"not-the-password\n");
    failed(&wrong, 9, &[&fake.host(), "refused"]);
    assert!(!wrong.stderr.contains("not-the-password"));
    let auth = base64(format!("{USER}:not-the-password").as_bytes());
    env.write_config(&json!({"auths": {fake.host(): {"auth": auth}}}));
    let wrong = pull(&[], b"");
    failed(&wrong, 9, &[&fake.host(), "refused"]);
    assert!(!wrong.stderr.contains("not-the-password") && !wrong.stderr.contains(&auth));
    std::fs::remove_file(env.docker().join("config.json")).unwrap();

    // No credentials: the token service refuses, or hands out a token the
    // registry refuses; either way the error says what to give.
    failed(&pull(&[], b""), 9, &[&fake.host(), "--username"]);
    fake.config(json!({"anonymous_tokens": true}));
    failed(&pull(&[], b""), 9, &[&fake.host(), "--username"]);

    // A token service that answers with an endless body: bounded, exit 8.
    fake.config(json!({"stream_token": {"bytes": 100 << 20, "content_length": false}}));
    failed(
        &pull(&with_password, format!("{PASSWORD}\n").as_bytes()),
        8,
        &["token"],
    );
    fake.config(json!({"stream_token": null}));

    assert_eq!((dst.tree(), index(&dst)), before, "registry changed");
    assert!(open_pulls(&dst).is_empty(), "a pull was left open");
    dst.run(&["verify", "--content"]).ok();
    let pushed = env.run(
        &src,
        &[
            "push",
            "base",
            &fake.at("again"),
            "--insecure",
            "--username",
            USER,
            "--password-stdin",
        ],
        b"not-the-password\n",
    );
    failed(&pushed, 9, &[&fake.host()]);
    src.run(&["verify", "--content"]).ok();
}

#[test]
fn a_failing_credential_helper_exits_9_without_its_output() {
    let env = Env::new();
    let dst = populated();
    std::fs::create_dir_all(env.bin()).unwrap();
    // It reads the request, then prints the secret on stdout and fails, as
    // a broken helper may.
    write_script(
        &env.bin().join("docker-credential-msbfail"),
        &format!(
            "#!/bin/sh\nread server\necho '{{\"Secret\":\"{PASSWORD}\"}}'\necho 'helper broke: keychain locked' >&2\nexit 1\n"
        ),
    );
    let host = "127.0.0.1:9";
    let source = format!("{host}/{REPO}:base");
    for config in [
        json!({"credHelpers": {host: "msbfail"}}),
        json!({"credsStore": "msbfail"}),
    ] {
        env.write_config(&config);
        let run = env.run(&dst, &["pull", &source, "--insecure"], b"");
        failed(
            &run,
            9,
            &["docker-credential-msbfail failed", "keychain locked"],
        );
        assert!(
            !run.stderr.contains("docker-credential-docker-credential"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains(PASSWORD), "{}", run.stderr);
    }
}

/// Write an executable script.
fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(path, perms).unwrap();
}
