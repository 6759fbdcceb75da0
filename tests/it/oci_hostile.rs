//! `push` and `pull` against a hostile OCI registry (docs/oci.md,
//! "Hostile registries"), through the fake of [`crate::oci_fake`]: it first stores
//! a real push honestly, then serves wrong digests, forged frames, a
//! non-canonical config, lying chunk maps and deltas, foreign artifacts,
//! endless bodies and failures. Each refusal has its exit code, one line
//! naming what was wrong, and leaves the pulling registry as it was.

use msb_registry::model::digest::Digest;
use msb_registry::sample::mixed_bytes;
use serde_json::{Value, json};

use crate::oci_fake::*;
use crate::util::*;

#[test]
fn honest_fake_round_trip() {
    let p = Pushed::new();
    let report = p.pulls();
    let chunks = p.map["chunks"].as_array().unwrap().len() as u64;
    assert_eq!(report["chunks_downloaded"].as_u64(), Some(chunks));
    p.src.run(&["verify", "--content"]).ok();

    // A registry that ignores Range and sends whole packs is read through:
    // into a registry without any of the chunks (one range, the whole
    // pack), and into one that holds the upper's last region (the ranges
    // then start at the pack's first byte and end before its last).
    p.fake.config(json!({"ignore_range": true}));
    let dst = populated();
    let partly = populated();
    let mut spec = sample_spec(&partly, "tail");
    spec.data = vec![(3 << 20, mixed_bytes(2, 300_000))];
    add(&partly, "tail", &spec);
    for (dst, local) in [(&dst, 0), (&partly, 3)] {
        let run = p.env.run(
            dst,
            &["pull", &p.fake.at("base"), "--insecure", "--json"],
            b"",
        );
        let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
        assert_eq!(report["chunks_local"], local, "{report}");
        assert_eq!(
            report["chunks_downloaded"].as_u64(),
            Some(chunks - local),
            "{report}"
        );
        dst.run(&["verify", "--content"]).ok();
    }
}

#[test]
fn wrong_digests_are_refused_with_5() {
    let p = Pushed::new();
    let (fake, manifest) = (&p.fake, &p.manifest);

    // The chunk map, the config: fetched whole, bytes that are not their digest.
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    for blob in [layer(manifest, 0), config] {
        fake.corrupt_blob(&blob);
        p.refused(5, &[&blob, "digest"]);
        fake.corrupt_blob(&blob);
    }

    // A pack, read by range so its digest cannot be checked, whose first
    // chunk's frame is a good zstd stream of the same length but of other
    // bytes: each frame is checked against its chunk.
    let (_, chunk, pack, offset, len) = p.first_chunk();
    let original = fake.blob(&pack);
    let mut forged = original.clone();
    forged[offset..offset + len].copy_from_slice(&frame_of_len(&vec![7u8; 128 << 10], len));
    fake.put_blob_as(&forged, &pack);
    p.refused(5, &[&chunk, &pack]);
    fake.put_blob_as(&original, &pack);

    // A new pack whose frame is of other bytes than the chunk the map names.
    p.swap_first_chunk_frame(&zstd::bulk::compress(&vec![7u8; 128 << 10], 3).unwrap());
    p.refused(5, &[&chunk]);
    p.retag(&p.manifest_bytes);

    // A manifest asked for by digest whose bytes are another's; by tag,
    // one whose Docker-Content-Digest is not its bytes'.
    let mut other = manifest.clone();
    other["annotations"]["org.opencontainers.image.title"] = "evil".into();
    let other = other.to_string();
    let [a, b] = p.tags();
    fake.put_manifest_bytes(other.as_bytes(), Some(&p.manifest_digest), &[&a, &b]);
    refused(
        &p.env,
        &p.dst,
        &fake.at_digest(&p.manifest_digest),
        5,
        &[&format!("{REPO}@{}", p.manifest_digest)],
    );
    p.refused(5, &[&p.manifest_digest]);

    // Everything restored: the same pull works.
    fake.put_manifest_bytes(&p.manifest_bytes, None, &[&a, &b]);
    p.pulls();
}

#[test]
fn parent_tag_naming_another_snapshot_is_refused_with_5() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, base) = source("base");
    let stray = add(&src, "stray", &sample_spec(&src, "stray"));
    let mut spec = sample_spec(&src, "child").parent(base);
    spec.data = vec![(0, mixed_bytes(1, 200_000)), (5 << 20, vec![9; 4096])];
    add(&src, "child", &spec);
    push(&env, &src, "stray", &fake);
    env.run(
        &src,
        &[
            "push",
            "child",
            &fake.at("child"),
            "--insecure",
            "--with-parents",
        ],
        b"",
    )
    .ok();
    let (stray_manifest, _) = fake.manifest("stray");
    let stray_bytes = fake.manifest_bytes(&stray_manifest);
    let base_tag = format!("sha256-{}", base.hex());
    let base_bytes = fake.manifest_bytes(&base_tag);
    fake.put_manifest_bytes(&stray_bytes, None, &[&base_tag]);
    let dst = populated();
    refused(
        &env,
        &dst,
        &fake.at("child"),
        5,
        &[&base_tag, &stray.to_string()],
    );
    // The same tag pulled itself: it names a snapshot by its identity.
    refused(
        &env,
        &dst,
        &fake.at(&base_tag),
        5,
        &[&base_tag, &stray.to_string()],
    );
    fake.put_manifest_bytes(&base_bytes, None, &[&base_tag]);
    env.run(&dst, &["pull", &fake.at("child"), "--insecure"], b"")
        .ok();
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn a_child_push_refuses_a_lying_parent_map() {
    // The parent was pushed from another machine; this one pushes a child
    // and learns from the parent's chunk map there which chunks the
    // repository holds. A lying map is refused before anything is sent.
    let p = Pushed::new();
    let (other, base) = source("base");
    assert_eq!(base, p.digest);
    let mut spec = sample_spec(&other, "child").parent(base);
    spec.data = vec![(0, mixed_bytes(1, 200_000)), (5 << 20, vec![9; 4096])];
    add(&other, "child", &spec);
    let huge = 1u64 << 62;
    p.rewrite(|m| m["chunk_size"] = huge.into(), |_| {});
    let target = p.fake.at("child");
    let before = (other.tree(), index(&other));
    let run = p
        .env
        .run(&other, &["push", "child", &target, "--insecure"], b"");
    failed(
        &run,
        6,
        &["chunk map", &base.to_string(), &huge.to_string()],
    );
    assert_eq!((other.tree(), index(&other)), before, "registry changed");
    let tags = p.fake.control(json!({"op": "tags", "repo": REPO}));
    assert!(tags["tags"].get("child").is_none(), "{tags}");

    // The honest map: the shared chunks are not sent again.
    p.retag(&p.manifest_bytes);
    let report: Value = serde_json::from_str(
        &p.env
            .run(
                &other,
                &["push", "child", &target, "--insecure", "--json"],
                b"",
            )
            .ok()
            .stdout,
    )
    .unwrap();
    assert!(report["chunks_present"].as_u64().unwrap() >= 2, "{report}");
    other.run(&["verify", "--content"]).ok();
}

#[test]
fn lying_deltas_are_refused() {
    // A child whose first chunk differs from its parent's by a few bytes
    // travels as a zstd delta against the parent's chunk.
    let fake = Fake::start();
    let env = Env::new();
    let (src, base) = source("base");
    let mut first = mixed_bytes(1, 200_000);
    first[1000..1016].copy_from_slice(b"a changed block.");
    let mut spec = sample_spec(&src, "child").parent(base);
    spec.data = vec![
        (0, first),
        (1 << 20, vec![0xab; 64 * 1024]),
        (3 << 20, mixed_bytes(2, 300_000)),
    ];
    let child = add(&src, "child", &spec);
    env.run(
        &src,
        &[
            "push",
            "child",
            &fake.at("child"),
            "--insecure",
            "--with-parents",
        ],
        b"",
    )
    .ok();
    let (_, manifest) = fake.manifest("child");
    let original = fake.manifest_bytes("child");
    let map: Value = serde_json::from_slice(&fake.blob(&layer(&manifest, 0))).unwrap();
    let deltas = map["deltas"].as_array().cloned().unwrap_or_default();
    assert!(
        !deltas.is_empty(),
        "the changed chunk is not a delta: {map}"
    );
    let (delta, delta_base) = (
        deltas[0][0].as_u64().unwrap(),
        deltas[0][1].as_u64().unwrap(),
    );
    let chunks = map["chunks"].as_array().unwrap().len() as u64;
    let plain = (0..chunks)
        .find(|&i| i != delta && i != delta_base)
        .unwrap();
    let tags = ["child".to_string(), format!("sha256-{}", child.hex())];
    let serve = |edit: &dyn Fn(&mut Value)| {
        let mut m = map.clone();
        edit(&mut m);
        let bytes = serde_json::to_vec(&m).unwrap();
        let mut man = manifest.clone();
        man["layers"][0]["digest"] = fake.put_blob(&bytes).into();
        man["layers"][0]["size"] = bytes.len().into();
        fake.put_manifest_bytes(man.to_string().as_bytes(), None, &[&tags[0], &tags[1]]);
    };
    let dst = populated();
    let target = fake.at("child");
    let delta_chunk = map["chunks"][delta as usize][0]
        .as_str()
        .unwrap()
        .to_string();

    // Decoded against another chunk than its base: not the chunk (5).
    serve(&|m| m["deltas"][0][1] = plain.into());
    refused(&env, &dst, &target, 5, &[&delta_chunk]);
    // A base out of range, a delta of a delta, a chunk given two bases (6).
    serve(&|m| m["deltas"][0][1] = u32::MAX.into());
    refused(&env, &dst, &target, 6, &["names no pair of chunks"]);
    serve(&|m| {
        m["deltas"]
            .as_array_mut()
            .unwrap()
            .push(json!([delta_base, plain]))
    });
    refused(&env, &dst, &target, 6, &["itself a delta"]);
    serve(&|m| {
        m["deltas"]
            .as_array_mut()
            .unwrap()
            .push(json!([delta, plain]))
    });
    refused(&env, &dst, &target, 6, &["two bases"]);

    fake.put_manifest_bytes(&original, None, &[&tags[0], &tags[1]]);
    let run = env.run(&dst, &["pull", &target, "--insecure", "--json"], b"");
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(report["head"], child.to_string());
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn foreign_manifests_and_configs_are_refused_with_6() {
    let p = Pushed::new();
    // An ordinary container image's manifest: no artifactType, an image config.
    p.rewrite(
        |_| {},
        |m| {
            m.as_object_mut().unwrap().remove("artifactType");
        },
    );
    p.refused(6, &["artifactType", "not a microsandbox snapshot"]);
    p.rewrite(
        |_| {},
        |m| m["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into(),
    );
    p.refused(
        6,
        &[
            "application/vnd.oci.image.config.v1+json",
            "not a snapshot manifest",
        ],
    );
    p.rewrite(
        |_| {},
        |m| m["layers"][1]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip".into(),
    );
    p.refused(6, &["tar+gzip", "not a pack"]);

    // A multi-platform image index under the tag, whatever Accept said.
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": p.manifest_digest, "size": p.manifest_bytes.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    });
    p.retag(index.to_string().as_bytes());
    p.refused(6, &["not an OCI manifest"]);
}

#[test]
fn hostile_image_caches_are_refused() {
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    let cache = src.path("cache");
    let image = make_image_cache(&cache, "python:3.12", 7, &[16384, 8192]);
    let dir = src.path("src/base");
    make_snapshot(&dir, &SnapSpec::new(&image).label("name", "base"));
    src.run(&[
        "add",
        dir.to_str().unwrap(),
        "--name",
        "base",
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .ok();
    let target = fake.at("base");
    env.run(
        &src,
        &["push", "base", &target, "--insecure", "--with-image"],
        b"",
    )
    .ok();
    let tag = format!("image-sha256-{}", image.manifest_digest.hex());
    let (_, manifest) = fake.manifest(&tag);
    let original = fake.manifest_bytes(&tag);
    let dst = populated();
    let serve = |edit: &dyn Fn(&mut Value)| {
        let mut m = manifest.clone();
        edit(&mut m);
        fake.put_manifest_bytes(m.to_string().as_bytes(), None, &[&tag]);
    };
    let huge = (1u64 << 62).to_string();
    let title = "org.opencontainers.image.title";

    serve(&|m| m["layers"][0]["annotations"][title] = "../../../evil".into());
    refused(
        &env,
        &dst,
        &target,
        6,
        &["../../../evil", "not named as a cache file"],
    );
    serve(&|m| m["layers"][0]["size"] = (1u64 << 62).into());
    refused(&env, &dst, &target, 6, &[&huge]);
    serve(&|m| m["artifactType"] = "application/vnd.microsandbox.snapshot.v1".into());
    refused(
        &env,
        &dst,
        &target,
        6,
        &[&format!("{REPO}:{tag}"), "not a microsandbox image cache"],
    );

    // A cache file whose bytes are not its digest.
    fake.put_manifest_bytes(&original, None, &[&tag]);
    let blob = layer(&manifest, 0);
    fake.corrupt_blob(&blob);
    refused(&env, &dst, &target, 5, &[&blob]);
    fake.corrupt_blob(&blob);

    let run = env.run(&dst, &["pull", &target, "--insecure", "--json"], b"");
    let report: Value = serde_json::from_str(&run.ok().stdout).unwrap();
    let files = manifest["layers"].as_array().unwrap().len();
    assert_eq!(report["image_files_installed"], files, "{report}");
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn hostile_names_fall_back_to_the_digest() {
    // The name a snapshot was pushed under is only a suggestion: a path, a
    // terminal escape, or the name of another snapshot here is not taken.
    for title in ["../../../etc/evil", "red\u{1b}[31m", "other"] {
        let p = Pushed::new();
        p.rewrite(
            |_| {},
            |m| m["annotations"]["org.opencontainers.image.title"] = title.into(),
        );
        let report = p.pulls();
        assert_eq!(report["name"], p.digest.archive_prefix(), "{title:?}");
        let names: Vec<Value> = p
            .dst
            .json(&["sql", "SELECT name FROM snapshots ORDER BY name"]);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.iter().any(|n| n["name"] == "other"), "{names:?}");
    }
}

#[test]
fn non_canonical_config_is_refused_with_6() {
    let p = Pushed::new();
    let config = p
        .fake
        .blob(p.manifest["config"]["digest"].as_str().unwrap());
    let parsed: Value = serde_json::from_slice(&config).unwrap();
    let pretty = serde_json::to_vec_pretty(&parsed).unwrap();
    assert_ne!(pretty, config);
    let digest = p.fake.put_blob(&pretty);
    let mut manifest = p.manifest.clone();
    manifest["config"]["digest"] = digest.into();
    manifest["config"]["size"] = pretty.len().into();
    p.retag(manifest.to_string().as_bytes());
    p.refused(6, &["canonical"]);
}

#[test]
fn lying_chunk_maps_are_refused_with_6() {
    let p = Pushed::new();
    let huge = 1u64 << 62;
    assert_eq!(p.map["files"][0]["path"], "upper.ext4");

    p.rewrite(|m| m["files"][0]["size"] = huge.into(), |_| {});
    p.refused(6, &["upper.ext4", &huge.to_string()]);

    p.rewrite(
        |m| m["files"][0]["extents"].as_array_mut().unwrap().reverse(),
        |_| {},
    );
    p.refused(6, &["out of order"]);

    p.rewrite(|m| m["files"][0]["extents"][0][0] = huge.into(), |_| {});
    p.refused(6, &[&huge.to_string()]);

    p.rewrite(|m| m["files"][0]["extents"][0][1] = huge.into(), |_| {});
    p.refused(6, &["chunk map"]);

    p.rewrite(|m| m["files"][0]["extents"][0][1] = u32::MAX.into(), |_| {});
    p.refused(6, &["out of range"]);

    p.rewrite(|m| m["chunk_size"] = huge.into(), |_| {});
    p.refused(6, &["chunk size"]);

    // Frames: a pack index, an offset, a length out of bounds.
    p.rewrite(|m| m["chunks"][0][1] = u32::MAX.into(), |_| {});
    p.refused(6, &["pack index", "out of range"]);
    p.rewrite(|m| m["chunks"][0][2] = huge.into(), |_| {});
    p.refused(6, &[&huge.to_string(), "runs past its pack"]);
    p.rewrite(|m| m["chunks"][0][3] = huge.into(), |_| {});
    p.refused(6, &[&huge.to_string(), "cannot hold a chunk"]);
    let stranger = Digest::of(b"not a layer").to_string();
    p.rewrite(|m| m["packs"][0] = stranger.clone().into(), |_| {});
    p.refused(6, &[&stranger, "not a layer"]);

    // The manifest's descriptors claiming 2^62 bytes: the chunk map, a
    // pack, the config.
    p.rewrite(|_| {}, |m| m["layers"][0]["size"] = huge.into());
    p.refused(6, &[&huge.to_string(), "chunk map"]);
    p.rewrite(|_| {}, |m| m["layers"][1]["size"] = huge.into());
    p.refused(6, &[&huge.to_string(), "pack"]);
    p.rewrite(|_| {}, |m| m["config"]["size"] = huge.into());
    p.refused(6, &[&huge.to_string()]);

    // Every frame good, but a data chunk left out: the upper assembled
    // from the map is not the one its manifest's integrity names.
    p.rewrite(
        |m| {
            m["files"][0]["extents"].as_array_mut().unwrap().pop();
        },
        |_| {},
    );
    p.refused(5, &["upper.ext4"]);

    // A chunk the map says is all zeros: a hole, which a chunk list never
    // names; refused from the map, before any pack is read.
    let (index, ..) = p.first_chunk();
    let zeros = Digest::of(&vec![0u8; 131072]).to_string();
    p.rewrite(|m| m["chunks"][index][0] = zeros.clone().into(), |_| {});
    p.refused(6, &["upper.ext4", "holds only zeros"]);

    // A frame that decompresses to more than a chunk (a zstd bomb).
    p.swap_first_chunk_frame(&zstd::bulk::compress(&vec![1u8; 4 << 20], 3).unwrap());
    p.refused(6, &["decompresses to more than the chunk's 131072 bytes"]);

    // A range answered with more than was asked for.
    p.retag(&p.manifest_bytes);
    p.fake.config(json!({"range_overflow": true}));
    p.refused(6, &["more than the range"]);
    p.fake.config(json!({"range_overflow": false}));

    // A range answered from one byte on (honestly labelled): refused by
    // its Content-Range, before a frame is decoded from the wrong bytes.
    let pack = layer(&p.manifest, 1);
    p.fake
        .config(json!({"range_shift": true, "only_blobs": [pack]}));
    p.refused(6, &[&pack, "bytes 1-", "not the range asked for"]);
    p.fake
        .config(json!({"range_shift": false, "only_blobs": null}));

    // A snapshot that is consistent throughout but claims a 2^62-byte
    // upper: its config, chunk map and manifest all agree.
    let config = p
        .fake
        .blob(p.manifest["config"]["digest"].as_str().unwrap());
    let mut parsed: Value = serde_json::from_slice(&config).unwrap();
    parsed["upper"]["size_bytes"] = huge.into();
    let config = serde_json::to_vec(&parsed).unwrap();
    let snapshot = p.fake.put_blob(&config);
    let config_len = config.len();
    p.rewrite(
        |m| {
            m["snapshot"] = snapshot.clone().into();
            m["files"][0]["size"] = huge.into();
        },
        |m| {
            m["config"]["digest"] = snapshot.clone().into();
            m["config"]["size"] = config_len.into();
        },
    );
    p.refused(6, &["upper.ext4", &huge.to_string(), "limit"]);

    p.retag(&p.manifest_bytes);
    p.pulls();
}

#[test]
fn endless_manifests_and_blobs_are_refused_early() {
    let p = Pushed::new();
    // "Endless": 1 GiB. A refusing client has read at most its bound; the
    // rest of what the fake managed to send sits in kernel buffers (the
    // receiver's autotunes up to tcp_rmem's maximum, 32 MiB here).
    let total: u64 = 1 << 30;
    let slack: u64 = 60 << 20;
    let bound = msb_registry::remote::format::MAX_OCI_MANIFEST_BYTES;
    // The fake logs a stream once its client hangs up, which a loaded
    // machine may let it notice a moment after the pull has exited.
    let streamed = || -> Vec<u64> {
        for _ in 0..200 {
            let s: Vec<u64> = p
                .fake
                .log()
                .iter()
                .filter_map(|e| e["streamed"].as_u64())
                .collect();
            if !s.is_empty() {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Vec::new()
    };
    for content_length in [true, false] {
        let stream = json!({"bytes": total, "content_length": content_length});
        p.fake.config(json!({"stream_manifests": stream}));
        p.fake.control(json!({"op": "reset_log"}));
        p.refused(6, &["manifest", &bound.to_string()]);
        let s = streamed();
        assert_eq!(s.len(), 1, "one manifest streamed: {s:?}");
        assert!(
            s[0] < bound + slack,
            "{s:?} bytes sent to a refusing client"
        );

        // The chunk map's blob runs on past the size its descriptor gives.
        let map = layer(&p.manifest, 0);
        p.fake
            .config(json!({"stream_manifests": null, "stream_blobs": stream, "only_blobs": [map]}));
        p.fake.control(json!({"op": "reset_log"}));
        p.refused(6, &[&map]);
        let s = streamed();
        assert_eq!(s.len(), 1, "one blob streamed: {s:?}");
        assert!(s[0] < slack, "{s:?} bytes sent to a refusing client");
        p.fake
            .config(json!({"stream_blobs": null, "only_blobs": null}));
    }
    p.pulls();
}

#[test]
fn transfers_in_flight_stay_within_jobs() {
    let fake = Fake::start();
    let env = Env::new();
    let src = Reg::new();
    // 128 chunks of data: four packs of 32.
    let mut spec = sample_spec(&src, "wide");
    spec.len = 20 << 20;
    spec.data = vec![(0, mixed_bytes(5, 16 << 20))];
    add(&src, "wide", &spec);
    fake.config(json!({"stall": 0.2}));
    let target = fake.at("wide");
    let pushed: Value = serde_json::from_str(
        &env.run(
            &src,
            &[
                "push",
                "wide",
                &target,
                "--insecure",
                "--jobs",
                "2",
                "--json",
            ],
            b"",
        )
        .ok()
        .stdout,
    )
    .unwrap();
    assert!(pushed["blobs_uploaded"].as_u64().unwrap() >= 4, "{pushed}");
    let dst = populated();
    let pulled: Value = serde_json::from_str(
        &env.run(
            &dst,
            &["pull", &target, "--insecure", "--jobs", "2", "--json"],
            b"",
        )
        .ok()
        .stdout,
    )
    .unwrap();
    assert_eq!(pulled["chunks_downloaded"], 128, "{pulled}");
    let seen = fake.control(json!({"op": "in_flight"}));
    let (uploads, gets) = (
        seen["uploads"].as_u64().unwrap(),
        seen["blob_gets"].as_u64().unwrap(),
    );
    // At most --jobs (how many more than one ran side by side is the
    // scheduler's business, not asserted).
    for (what, n) in [("uploads", uploads), ("range reads", gets)] {
        assert!((1..=2).contains(&n), "{n} {what} at once with --jobs 2");
    }
    dst.run(&["verify", "--content"]).ok();
}

#[test]
fn a_failing_registry_exits_8_and_the_rerun_resumes() {
    let p = Pushed::new();
    let before = (p.dst.tree(), index(&p.dst));
    let pull = || {
        p.env
            .run(&p.dst, &["pull", &p.fake.at("base"), "--insecure"], b"")
    };
    let pack = layer(&p.manifest, 1);
    p.fake
        .config(json!({"blob_status": 500, "only_blobs": [pack]}));
    failed(&pull(), 8, &[&p.fake.host(), &pack, "500"]);

    // The pull's staging stays for a rerun; nothing else changed.
    let open = open_pulls(&p.dst);
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(open[0].1.starts_with("pull "), "{open:?}");
    let staging = format!("staging/{}", open[0].0);
    let after = p.dst.tree();
    for (path, size) in &before.0 {
        assert_eq!(after.get(path), Some(size), "{path} changed");
    }
    for path in after.keys().filter(|k| !before.0.contains_key(*k)) {
        assert!(path.starts_with(&staging), "{path} is new");
    }
    assert_eq!(index(&p.dst), before.1);
    p.dst.run(&["verify", "--content"]).ok();

    // A connection cut in the middle of a blob: the same staging, adopted.
    p.fake
        .config(json!({"blob_status": null, "drop_blobs": true}));
    failed(&pull(), 8, &[&p.fake.host(), &pack]);
    assert_eq!(open_pulls(&p.dst), open);

    // The registry mended: the rerun takes what was written and fetches the rest.
    p.fake
        .config(json!({"drop_blobs": false, "only_blobs": null}));
    let report = p.pulls();
    let chunks = p.map["chunks"].as_array().unwrap().len() as u64;
    let got =
        report["chunks_downloaded"].as_u64().unwrap() + report["chunks_resumed"].as_u64().unwrap();
    assert_eq!(got, chunks, "{report}");
    assert!(
        !p.dst.tree().keys().any(|k| k.starts_with(&staging)),
        "staging left behind"
    );
}

#[test]
fn a_failed_push_tags_nothing_and_the_rerun_sends_the_rest() {
    let fake = Fake::start();
    let env = Env::new();
    let (src, digest) = source("base");
    let target = fake.at("base");
    let push = || {
        env.run(
            &src,
            &["push", "base", &target, "--insecure", "--json"],
            b"",
        )
    };
    let tags = || {
        let v = fake.control(json!({"op": "tags", "repo": REPO}));
        let mut t: Vec<String> = v["tags"].as_object().unwrap().keys().cloned().collect();
        t.sort();
        t
    };

    // Uploads refused, then the manifests: exit 8, and no tag names anything.
    fake.config(json!({"upload_status": 500}));
    failed(&push(), 8, &[&fake.host(), "500"]);
    assert_eq!(tags(), Vec::<String>::new());
    fake.config(json!({"upload_status": null, "manifest_status": 500}));
    failed(&push(), 8, &[&fake.host(), "manifest", "500"]);
    assert_eq!(tags(), Vec::<String>::new());

    // Mended: every blob landed last time, only the manifest and tags go now.
    fake.config(json!({"manifest_status": null}));
    let report: Value = serde_json::from_str(&push().ok().stdout).unwrap();
    assert_eq!(
        (&report["blobs_uploaded"], &report["bytes_uploaded"]),
        (&json!(0), &json!(0)),
        "{report}"
    );
    let expected = vec!["base".to_string(), format!("sha256-{}", digest.hex())];
    assert_eq!(tags(), expected);

    // The repository loses everything (its tags deleted, its garbage
    // collected) behind the index's back: the push learns it from the
    // registry's MANIFEST_BLOB_UNKNOWN, forgets, and sends it all again.
    fake.control(json!({"op": "wipe", "repo": REPO}));
    let report: Value = serde_json::from_str(&push().ok().stdout).unwrap();
    assert!(report["blobs_uploaded"].as_u64().unwrap() >= 3, "{report}");
    assert_eq!(tags(), expected);
    let dst = populated();
    env.run(&dst, &["pull", &target, "--insecure"], b"").ok();
    dst.run(&["verify", "--content"]).ok();
    src.run(&["verify", "--content"]).ok();
}

#[test]
fn gc_keeps_a_dead_pulls_staging_for_its_grace_period() {
    let p = Pushed::new();
    let pack = layer(&p.manifest, 1);
    p.fake
        .config(json!({"blob_status": 503, "only_blobs": [pack]}));
    let pull = || {
        p.env.run(
            &p.dst,
            &["pull", &p.fake.at("base"), "--insecure", "--json"],
            b"",
        )
    };
    failed(&pull(), 8, &[&pack, "503"]);
    let open = open_pulls(&p.dst);
    assert_eq!(open.len(), 1, "{open:?}");
    let staging = format!("staging/{}/", open[0].0);
    assert!(p.dst.tree().contains_key(&staging));

    // Young: kept. Past its grace: removed like a dead import's, and the
    // next pull starts afresh.
    p.dst.run(&["gc"]).ok();
    assert!(
        p.dst.tree().contains_key(&staging),
        "gc removed a young pull"
    );
    assert_eq!(open_pulls(&p.dst), open);
    p.dst.run(&["gc", "--grace", "0"]).ok();
    assert!(!p.dst.tree().contains_key(&staging), "gc kept a dead pull");
    assert!(open_pulls(&p.dst).is_empty());
    p.dst.run(&["verify", "--content"]).ok();
    p.fake
        .config(json!({"blob_status": null, "only_blobs": null}));
    let report = p.pulls();
    assert_eq!(report["chunks_resumed"], 0, "{report}");
}

#[test]
fn an_unreachable_registry_exits_8() {
    let env = Env::new();
    let dst = populated();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let host = format!("127.0.0.1:{port}");
    refused(&env, &dst, &format!("{host}/{REPO}:base"), 8, &[&host]);
}
