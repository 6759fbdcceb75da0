//! push and pull over a hostile network, through the fake registry of
//! [`crate::oci_fake`] (README "Push and pull"): transient answers on
//! every kind of request retried and said on stderr, a cut transfer
//! resumed where it stood, the deadlines (`--timeout`, `--stall-timeout`,
//! `--min-rate`) cutting a registry that drips or never answers, and the
//! registry behaviours of the compatibility matrix: blobs redirected to a
//! storage host, no cross-repository mount, a token realm on another host.

use msb_registry::sample::mixed_bytes;
use serde_json::{Value, json};

use crate::oci_fake::*;
use crate::util::Reg;

/// The kinds of request a push and a pull make, as (method, path regex).
const KINDS: [(&str, &str); 9] = [
    ("GET", "^/v2/$"),
    ("GET", "/tags/list"),
    ("HEAD", "/manifests/"),
    ("HEAD", "/blobs/sha256:"),
    ("POST", "/blobs/uploads/$"),
    ("PUT", "/blobs/uploads/."),
    ("PUT", "/manifests/"),
    ("GET", "/manifests/"),
    ("GET", "/blobs/sha256:"),
];

/// One failure of each kind of request (`status` for each in turn), plus
/// one of the token service; push and pull then work and say each retry.
fn every_kind_fails_once(statuses: &[u16], retry_after: Option<&str>) {
    let fake = Fake::start();
    let env = Env::new();
    let (src, digest) = source("base");
    fake.config(json!({"auth": {"kind": "bearer", "username": USER, "password": PASSWORD}}));
    let mut rules: Vec<Value> = KINDS
        .iter()
        .zip(statuses.iter().cycle())
        .map(|((method, path), status)| {
            json!({"method": method, "path": path, "times": 1, "action": "status",
                   "status": status, "retry_after": retry_after})
        })
        .collect();
    rules.push(json!({"path": "^/token$", "times": 1, "action": "status", "status": statuses[0]}));
    fake.config(json!({ "inject": rules }));
    let login = ["--insecure", "--username", USER, "--password-stdin"];
    let stdin = format!("{PASSWORD}\n");
    // The base, then a child (whose push asks whether its parent is there).
    let mut spec = sample_spec(&src, "child").parent(digest);
    spec.data = vec![(0, mixed_bytes(1, 200_000)), (5 << 20, vec![9; 4096])];
    let child = add(&src, "child", &spec);
    let mut stderr = String::new();
    for name in ["base", "child"] {
        let target = fake.at(name);
        let mut args = vec!["push", name, &target];
        args.extend(login);
        stderr += &env.run(&src, &args, stdin.as_bytes()).ok().stderr;
    }
    let dst = populated();
    let target = fake.at("child");
    let mut args = vec!["pull", &target, "--json"];
    args.extend(login);
    let pulled = env.run(&dst, &args, stdin.as_bytes()).ok();
    assert_eq!(pulled.json::<Value>()["head"], child.to_string());
    dst.run(&["verify", "--content"]).ok();

    let injected: Vec<Value> = fake
        .log()
        .into_iter()
        .filter(|e| e["injected"].is_string())
        .collect();
    assert_eq!(
        injected.len(),
        rules.len(),
        "a rule was never met: {injected:?}"
    );
    let notices: Vec<&str> = [&stderr, &pulled.stderr]
        .iter()
        .flat_map(|s| s.lines())
        .filter(|l| is_retry(l))
        .collect();
    assert_eq!(notices.len(), rules.len(), "{notices:#?}");
    for n in &notices {
        assert!(n.contains(&fake.host()), "{n}");
        assert!(!n.contains(PASSWORD), "{n}");
    }
}

#[test]
fn rate_limits_on_every_kind_of_request_are_waited_out() {
    every_kind_fails_once(&[429], Some("1"));
}

#[test]
fn server_errors_on_every_kind_of_request_are_retried() {
    every_kind_fails_once(&[408, 425, 500, 502, 503, 504], None);
}

/// The `bytes=A-B` of a logged request.
fn range_of(entry: &Value) -> Option<(u64, u64)> {
    let (a, b) = entry["range"]
        .as_str()?
        .strip_prefix("bytes=")?
        .split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The requests after `injected` for the same blob (by path), on any listener.
fn later_for<'a>(log: &'a [Value], injected: &Value, blob: &str) -> Vec<&'a Value> {
    let at = log.iter().position(|e| e == injected).unwrap();
    log[at + 1..]
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.ends_with(blob)))
        .collect()
}

#[test]
fn a_cut_transfer_resumes_from_the_byte_reached() {
    let p = Pushed::new();
    let (map, pack) = (layer(&p.manifest, 0), layer(&p.manifest, 1));
    p.fake.config(json!({"inject": [
        {"method": "GET", "path": format!("/blobs/{map}$"), "times": 1, "action": "truncate"},
        {"method": "GET", "path": format!("/blobs/{pack}$"), "times": 1, "action": "truncate"},
    ]}));
    p.fake.control(json!({"op": "reset_log"}));
    p.pulls();
    let log = p.fake.log();
    let injected: Vec<&Value> = log.iter().filter(|e| e["injected"].is_string()).collect();
    assert_eq!(injected.len(), 2, "{injected:?}");

    // The chunk map, read whole at first, then from its middle on.
    let size = p.fake.blob(&map).len() as u64;
    let first = injected
        .iter()
        .find(|e| e["path"].as_str().unwrap().ends_with(&map));
    let first = first.expect("the map's read was cut");
    assert_eq!(first["range"], Value::Null);
    let next = later_for(&log, first, &map);
    assert_eq!(range_of(next[0]), Some((size / 2, size - 1)), "{next:?}");

    // A range of the pack: the rest of that range, nothing before it.
    let cut = injected
        .iter()
        .find(|e| e["path"].as_str().unwrap().ends_with(&pack));
    let cut = cut.expect("a pack read was cut");
    let (a, b) = range_of(cut).expect("pack reads are ranges");
    let resumed = later_for(&log, cut, &pack);
    // The fake sends the first half (rounded down) of the b - a + 1 bytes.
    let half = a + (b - a).div_ceil(2);
    assert!(
        resumed.iter().any(|e| range_of(e) == Some((half, b))),
        "no read resumed at {half}-{b}: {resumed:?}"
    );
}

#[test]
fn an_upload_cut_off_starts_its_blob_again() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, _) = source("base");
    fake.config(json!({"inject": [
        {"method": "PUT", "path": "/blobs/uploads/.", "times": 2, "action": "reset"},
    ]}));
    let run = env.run(&src, &["push", "base", &fake.at("base"), "--insecure"], b"");
    run.ok();
    let log = fake.log();
    let resets: Vec<usize> = (0..log.len())
        .filter(|&i| log[i]["injected"] == "reset")
        .collect();
    assert_eq!(resets.len(), 2);
    for i in resets {
        // The PUT's session is not reused: a new POST opens another.
        let digest = log[i]["path"]
            .as_str()
            .unwrap()
            .split("digest=")
            .nth(1)
            .unwrap();
        let again = log[i + 1..]
            .iter()
            .position(|e| e["method"] == "PUT" && e["path"].as_str().unwrap().ends_with(digest));
        let again = i + 1 + again.expect("the blob was sent again");
        assert!(
            log[i + 1..again].iter().any(
                |e| e["method"] == "POST" && e["path"].as_str().unwrap().ends_with("/uploads/")
            ),
            "no new upload session before the second PUT"
        );
        assert_ne!(log[again]["path"], log[i]["path"]);
    }
    let dst = populated();
    env.run(&dst, &["pull", &fake.at("base"), "--insecure"], b"")
        .ok();
    dst.run(&["verify", "--content"]).ok();
}

/// How many logged requests match `method` and end with `suffix`.
fn count(fake: &Fake, method: &str, suffix: &str) -> usize {
    fake.log()
        .iter()
        .filter(|e| {
            e["method"] == method && e["path"].as_str().is_some_and(|p| p.ends_with(suffix))
        })
        .count()
}

#[test]
fn a_registry_that_keeps_failing_costs_a_bounded_number_of_attempts() {
    let p = Pushed::new();
    // The default: four retries, then exit 8 naming the last answer.
    p.fake.config(
        json!({"inject": [{"method": "GET", "path": "^/v2/$", "action": "status", "status": 503}]}),
    );
    p.fake.control(json!({"op": "reset_log"}));
    let before = (p.dst.tree(), index(&p.dst));
    let run = p
        .env
        .run(&p.dst, &["pull", &p.fake.at("base"), "--insecure"], b"");
    failed(&run, 8, &[&p.fake.host(), "503", "gave up: 5 attempts"]);
    assert_eq!(count(&p.fake, "GET", "/v2/"), 5);
    assert_eq!(run.stderr.lines().filter(|l| is_retry(l)).count(), 4);
    assert_eq!((p.dst.tree(), index(&p.dst)), before);

    // --retries 0: one attempt, nothing said.
    p.fake.control(json!({"op": "reset_log"}));
    let args = ["pull", &p.fake.at("base"), "--insecure", "--retries", "0"];
    let run = p.env.run(&p.dst, &args, b"");
    failed(&run, 8, &["503"]);
    assert_eq!(count(&p.fake, "GET", "/v2/"), 1);

    // A Retry-After past the longest wait honoured (60 s) is not waited.
    p.fake.config(
        json!({"inject": [{"path": "/manifests/", "action": "status", "status": 429,
                                     "retry_after": "3600"}]}),
    );
    p.fake.control(json!({"op": "reset_log"}));
    let run = p
        .env
        .run(&p.dst, &["pull", &p.fake.at("base"), "--insecure"], b"");
    failed(&run, 8, &["429", "retried after 3600 s"]);
    assert_eq!(count(&p.fake, "GET", "/manifests/base"), 1);
    assert_eq!((p.dst.tree(), index(&p.dst)), before);
    p.dst.run(&["verify", "--content"]).ok();
}

#[test]
fn a_dripped_manifest_is_cut_by_the_minimum_rate() {
    let p = Pushed::new();
    p.fake.config(
        json!({"inject": [{"method": "GET", "path": "/manifests/", "action": "drip",
                                     "rate": 1}]}),
    );
    p.fake.control(json!({"op": "reset_log"}));
    let args = [
        "pull",
        &p.fake.at("base"),
        "--insecure",
        "--stall-timeout",
        "2",
        "--retries",
        "1",
    ];
    let before = (p.dst.tree(), index(&p.dst));
    let run = p.env.run(&p.dst, &args, b"");
    failed(
        &run,
        8,
        &[
            "manifest",
            "slower than --min-rate 1024 bytes/s",
            "gave up: 2 attempts",
        ],
    );
    assert_eq!(count(&p.fake, "GET", "/manifests/base"), 2);
    assert_eq!((p.dst.tree(), index(&p.dst)), before);
}

#[test]
fn a_registry_that_never_answers_is_cut_by_the_stall_timeout_and_the_timeout() {
    let p = Pushed::new();
    p.fake
        .config(json!({"inject": [{"path": "^/v2/$", "action": "hang"}]}));
    p.fake.control(json!({"op": "reset_log"}));
    let target = p.fake.at("base");
    let args = [
        "pull",
        &target,
        "--insecure",
        "--stall-timeout",
        "1",
        "--retries",
        "1",
    ];
    let run = p.env.run(&p.dst, &args, b"");
    failed(
        &run,
        8,
        &["no answer and no data for 1 s", "gave up: 2 attempts"],
    );
    assert_eq!(count(&p.fake, "GET", "/v2/"), 2);

    // The overall --timeout ends the command whatever the window.
    p.fake.control(json!({"op": "reset_log"}));
    let args = [
        "pull",
        &target,
        "--insecure",
        "--timeout",
        "2",
        "--stall-timeout",
        "600",
    ];
    let run = p.env.run(&p.dst, &args, b"");
    failed(&run, 8, &["the --timeout of 2 s ran out"]);
    assert_eq!(count(&p.fake, "GET", "/v2/"), 1);
    assert!(open_pulls(&p.dst).is_empty());
    p.dst.run(&["verify", "--content"]).ok();
}

#[test]
fn range_reads_work_through_a_redirect_to_a_storage_host() {
    let p = Pushed::new();
    let pack = layer(&p.manifest, 1);
    p.fake.config(json!({
        "auth": {"kind": "bearer", "username": USER, "password": PASSWORD},
        "redirect_blobs": true,
        "inject": [{"listener": "other", "path": format!("/blobs/{pack}$"), "times": 1,
                    "action": "truncate"}],
    }));
    p.fake.control(json!({"op": "reset_log"}));
    let args = [
        "pull",
        &p.fake.at("base"),
        "--insecure",
        "--username",
        USER,
        "--password-stdin",
        "--json",
    ];
    let run = p.env.run(&p.dst, &args, format!("{PASSWORD}\n").as_bytes());
    assert_eq!(run.ok().json::<Value>()["head"], p.digest.to_string());
    p.dst.run(&["verify", "--content"]).ok();
    let log = p.fake.log();
    let storage: Vec<&Value> = log.iter().filter(|e| e["listener"] == "other").collect();
    assert!(
        storage.iter().any(|e| range_of(e).is_some()),
        "no range read reached the storage host"
    );
    for e in &storage {
        assert_eq!(
            e["authorization"],
            Value::Null,
            "credentials sent to the storage host: {e}"
        );
    }
    let cut = storage
        .iter()
        .find(|e| e["injected"] == "truncate")
        .expect("a cut");
    let (a, b) = range_of(cut).unwrap();
    // The fake sends the first half (rounded down) of the b - a + 1 bytes.
    let half = a + (b - a).div_ceil(2);
    let resumed = later_for(&log, cut, &pack);
    assert!(
        resumed
            .iter()
            .any(|e| e["listener"] == "other" && range_of(e) == Some((half, b))),
        "{resumed:?}"
    );
}

#[test]
fn a_registry_without_cross_repository_mount_gets_the_blobs_uploaded() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, digest) = source("base");
    fake.config(json!({"no_mount": true}));
    env.run(&src, &["push", "base", &fake.at("base"), "--insecure"], b"")
        .ok();
    fake.control(json!({"op": "reset_log"}));
    let other = format!("{}/team/other:base", fake.host());
    let run = env.run(&src, &["push", "base", &other, "--insecure", "--json"], b"");
    let report: Value = run.ok().json();
    let log = fake.log();
    let mounts: Vec<&Value> = log
        .iter()
        .filter(|e| e["method"] == "POST" && e["path"].as_str().unwrap().contains("mount="))
        .collect();
    assert!(!mounts.is_empty(), "no mount was tried: {log:?}");
    for m in &mounts {
        let d = m["path"].as_str().unwrap().split("mount=").nth(1).unwrap();
        let d = d.split('&').next().unwrap().replace("%3A", ":");
        assert!(
            log.iter().any(|e| e["method"] == "PUT"
                && e["path"]
                    .as_str()
                    .unwrap()
                    .contains("/team/other/blobs/uploads/")
                && e["path"].as_str().unwrap().contains(&d.replace(':', "%3A"))),
            "{d} was neither mounted nor uploaded"
        );
    }
    assert_eq!(report["blobs_mounted"], 0, "{report}");
    let dst = populated();
    let run = env.run(&dst, &["pull", &other, "--insecure", "--json"], b"");
    assert_eq!(run.ok().json::<Value>()["head"], digest.to_string());
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn a_token_realm_on_another_host_is_followed() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, digest) = source("base");
    fake.config(json!({
        "auth": {"kind": "bearer", "username": USER, "password": PASSWORD},
        "token_elsewhere": true,
    }));
    let login = ["--insecure", "--username", USER, "--password-stdin"];
    let stdin = format!("{PASSWORD}\n");
    let target = fake.at("base");
    let mut args = vec!["push", "base", &target];
    args.extend(login);
    env.run(&src, &args, stdin.as_bytes()).ok();
    let dst = populated();
    let mut args = vec!["pull", &target, "--json"];
    args.extend(login);
    let run = env.run(&dst, &args, stdin.as_bytes());
    assert_eq!(run.ok().json::<Value>()["head"], digest.to_string());
    dst.run(&["verify", "--content"]).ok();
    let log = fake.log();
    let tokens: Vec<&Value> = log
        .iter()
        .filter(|e| e["path"].as_str().unwrap().starts_with("/token"))
        .collect();
    assert!(!tokens.is_empty());
    assert!(
        tokens.iter().all(|e| e["listener"] == "other"),
        "{tokens:?}"
    );
    assert!(
        log.iter()
            .filter(|e| e["listener"] == "registry" && e["method"] == "PUT")
            .all(|e| e["authorization"]
                .as_str()
                .is_some_and(|a| a.starts_with("Bearer "))),
        "a push request went without its token"
    );
}

/// What a pull leaves that a clean run must match: the snapshots by name
/// and digest, and the files of the registry with their sizes.
type Pulled = (Vec<(String, String)>, Vec<(String, u64)>);

fn pulled_state(dst: &Reg) -> Pulled {
    let list: Vec<Value> = dst.json(&["list"]);
    let mut snapshots: Vec<(String, String)> = list
        .iter()
        .map(|s| (s["name"].to_string(), s["digest"].to_string()))
        .collect();
    snapshots.sort();
    (snapshots, dst.tree().into_iter().collect())
}

/// A source registry holding `base` and its child `child`.
fn chain_source() -> Reg {
    let (src, base) = source("base");
    let mut spec = sample_spec(&src, "child").parent(base);
    spec.data = vec![(0, mixed_bytes(1, 200_000)), (5 << 20, vec![9; 4096])];
    add(&src, "child", &spec);
    src
}

/// Push `child` with its parent to `repo` of `fake`, then pull it into a
/// fresh registry; the pull's state, the repository's tags (tag →
/// manifest digest), and the notices of retries.
fn round(env: &Env, src: &Reg, fake: &Fake, repo: &str) -> (Pulled, Value, usize) {
    let target = format!("{}/{repo}:child", fake.host());
    let pushed = env.run(
        src,
        &["push", "child", &target, "--with-parents", "--insecure"],
        b"",
    );
    let pushed = pushed.ok();
    let dst = populated();
    let pulled = env.run(&dst, &["pull", &target, "--insecure"], b"").ok();
    dst.run(&["verify", "--content"]).ok();
    let tags = fake.control(json!({"op": "tags", "repo": repo}))["tags"].clone();
    let retries = [&pushed.stderr, &pulled.stderr]
        .iter()
        .flat_map(|s| s.lines())
        .filter(|l| is_retry(l))
        .count();
    (pulled_state(&dst), tags, retries)
}

#[test]
fn a_flaky_registry_soak_ends_as_a_clean_run() {
    // 50 push/pull rounds (MSB_NET_SOAK_ROUNDS for more) in five lanes,
    // against a fake failing 10 % of requests at random (seeded): 5xx,
    // 429, resets, bodies cut half way.
    let rounds: usize = std::env::var("MSB_NET_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let lanes = 5;
    let env = Env::new();
    let clean_fake = Fake::start();
    let clean = round(&env, &chain_source(), &clean_fake, "soak/clean");
    assert_eq!(clean.2, 0, "a clean run retried");

    let fake = Fake::start();
    fake.config(json!({"fail_rate": {"rate": 0.1, "seed": 24}}));
    let retries: usize = std::thread::scope(|s| {
        let lanes: Vec<_> = (0..lanes)
            .map(|lane| {
                let (env, fake, clean) = (&env, &fake, &clean);
                s.spawn(move || {
                    let src = chain_source();
                    let mut retries = 0;
                    for r in (lane..rounds).step_by(lanes) {
                        let (state, tags, n) = round(env, &src, fake, &format!("soak/r{r}"));
                        assert_eq!(state, clean.0, "round {r}: the pull differs");
                        assert_eq!(tags, clean.1, "round {r}: the repository differs");
                        retries += n;
                    }
                    retries
                })
            })
            .collect();
        lanes.into_iter().map(|l| l.join().unwrap()).sum()
    });
    let log = fake.log();
    let failed = log.iter().filter(|e| e["injected"].is_string()).count();
    // A body cut after what the client needed (the `{}` of GET /v2/)
    // costs nothing; every other failure costs one retry.
    let cut = log.iter().filter(|e| e["injected"] == "truncate").count();
    eprintln!("{rounds} rounds: {failed} requests failed ({cut} cut), {retries} retries");
    assert!(failed > rounds, "the fake failed only {failed} requests");
    assert!(
        (failed - cut..=failed).contains(&retries),
        "a failure was not retried, or a retry not said"
    );
}

#[test]
fn seventeen_concurrent_pushes_to_one_distribution_repository_all_land() {
    // Distribution 2.8 itself answered one push of 17 like these with
    // HTTP 500 before retries: the same packs uploaded side by side.
    if !crate::ociutil::enabled() {
        return;
    }
    let remote = crate::ociutil::OciRegistry::start(crate::ociutil::Options::plain());
    let repo = remote.repo("snaps");
    let env = Env::new();
    let sources: Vec<(Reg, _)> = (0..17).map(|i| source(&format!("s{i}"))).collect();
    let runs: Vec<_> = std::thread::scope(|s| {
        let pushes: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(i, (src, _))| {
                let (env, target) = (&env, format!("{repo}:s{i}"));
                s.spawn(move || {
                    let name = format!("s{i}");
                    env.run(src, &["push", &name, &target, "--insecure"], b"")
                })
            })
            .collect();
        pushes.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let retries: usize = runs
        .into_iter()
        .map(|r| r.ok().stderr.lines().filter(|l| is_retry(l)).count())
        .sum();
    eprintln!("17 concurrent pushes: {retries} retries");
    let dst = populated();
    for (i, (_, digest)) in sources.iter().enumerate() {
        let target = format!("{repo}:s{i}");
        let run = env.run(&dst, &["pull", &target, "--insecure", "--json"], b"");
        assert_eq!(run.ok().json::<Value>()["head"], digest.to_string());
    }
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn docker_hub_references_ask_for_dockers_credential_key() {
    // A credential helper that records the server it is asked about and
    // fails, so nothing is contacted: which key each reference looks up.
    let env = Env::new();
    let dst = populated();
    std::fs::create_dir_all(env.bin()).unwrap();
    let asked = env.dir.path().join("asked");
    let helper = env.bin().join("docker-credential-msbask");
    let script = format!(
        "#!/bin/sh\nread server\necho \"$server\" >> '{}'\necho 'no credentials here' >&2\nexit 1\n",
        asked.display()
    );
    std::fs::write(&helper, script).unwrap();
    let mut perms = std::fs::metadata(&helper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&helper, perms).unwrap();
    env.write_config(&json!({"credsStore": "msbask"}));
    let hub = "https://index.docker.io/v1/";
    let cases = [
        ("team/snaps:app", hub),
        ("snaps:app", hub),
        ("docker.io/team/snaps:app", hub),
        ("index.docker.io/library/snaps:app", hub),
        ("registry-1.docker.io/team/snaps:app", hub),
        ("localhost:5000/team/snaps:app", "localhost:5000"),
        (
            "registry.example.com/team/snaps:app",
            "registry.example.com",
        ),
    ];
    for (reference, _) in cases {
        let run = env.run(&dst, &["pull", reference], b"");
        failed(
            &run,
            9,
            &["docker-credential-msbask failed", "no credentials here"],
        );
    }
    let got = std::fs::read_to_string(&asked).unwrap();
    let want: Vec<&str> = cases.iter().map(|c| c.1).collect();
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
}

#[test]
fn insecure_against_a_tls_registry_says_so() {
    if !crate::ociutil::enabled() {
        return;
    }
    let remote = crate::ociutil::OciRegistry::start(crate::ociutil::Options::tls());
    let env = Env::new();
    let (src, _) = source("base");
    let target = format!("{}:base", remote.repo("snaps"));
    let run = env.run(&src, &["push", "base", &target, "--insecure"], b"");
    failed(
        &run,
        8,
        &[&remote.host(), "400", "speak HTTPS: drop --insecure"],
    );
}
