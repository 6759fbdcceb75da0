//! Where a snapshot lives in an OCI registry: `[HOST[:PORT]/]REPOSITORY`
//! with a tag or a manifest digest, in the grammar docker, podman and
//! skopeo share: the first component names a host only when it holds a
//! `.` or a `:` or is `localhost`; otherwise the reference is Docker Hub's
//! (`docker.io`, reached at `registry-1.docker.io`), where a one-component
//! repository is an official image's (`library/NAME`).

use std::fmt;

use crate::model::digest::Digest;
use crate::model::error::{Error, Result};

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's registry API answers on.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The key Docker Hub's credentials are stored under in a docker config.
pub const DOCKER_HUB_CREDENTIALS: &str = "https://index.docker.io/v1/";

/// A repository of a registry, and optionally a tag or digest in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// `host[:port]`; `docker.io` for Docker Hub.
    pub registry: String,
    /// The repository path, lower case, `/`-separated.
    pub repository: String,
    /// A tag, when one was given.
    pub tag: Option<String>,
    /// A manifest digest, when one was given (`@sha256:…`).
    pub digest: Option<Digest>,
}

/// The tag naming a snapshot by its digest: `sha256-<hex>`.
pub fn snapshot_tag(snapshot: &Digest) -> String {
    format!("sha256-{}", snapshot.hex())
}

/// The snapshot a `sha256-<hex>` tag names by its identity, if `tag` is one.
pub fn snapshot_of_tag(tag: &str) -> Option<Digest> {
    Digest::from_hex(tag.strip_prefix("sha256-")?).ok()
}

/// The tag of an image's cache artifacts: `image-sha256-<hex>`.
pub fn image_tag(image_manifest: &Digest) -> String {
    format!("image-sha256-{}", image_manifest.hex())
}

/// `host/repository:tag`, or `host/repository@sha256:…` when `reference`
/// is a manifest digest, as a person would write it.
pub fn joined(registry: &str, repository: &str, reference: &str) -> String {
    let sep = if reference.parse::<Digest>().is_ok() {
        '@'
    } else {
        ':'
    };
    format!("{registry}/{repository}{sep}{reference}")
}

/// Whether `tag` is a valid OCI tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_')
        && tag.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The host whose `/v2/` API serves `registry`: Docker Hub's API host
/// for `docker.io`, else the registry itself.
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// The key docker stores `registry`'s credentials under.
pub fn credentials_key(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_CREDENTIALS
    } else {
        registry
    }
}

/// Whether `first`, a reference's first component, names a registry host.
fn names_a_host(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost"
}

/// Docker Hub's aliases, all one registry.
fn canonical_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
        other => other,
    }
}

fn is_valid_component(c: &str) -> bool {
    // [a-z0-9]+ separated by '.', '_', '__' or runs of '-'.
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn is_valid_host(h: &str) -> bool {
    // An IPv6 address is bracketed: `[::1]:5000`.
    if let Some(rest) = h.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        return addr.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(is_valid_port));
    }
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && port.is_none_or(is_valid_port)
}

fn is_valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

impl RemoteRef {
    /// Parse `[HOST[:PORT]/]REPOSITORY[:TAG][@sha256:HEX]`, Docker Hub's
    /// when no host is named (see the module's grammar).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "{}: {why} (expected [HOST[:PORT]/]REPOSITORY[:TAG] or [HOST[:PORT]/]REPOSITORY@sha256:HEX)",
                crate::model::text::escape(s)
            ))
        };
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(
                    d.parse::<Digest>()
                        .map_err(|_| bad("the part after @ is not a sha256 digest"))?,
                ),
            ),
            None => (s, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if names_a_host(first) => (canonical_host(first), path),
            _ => (DOCKER_HUB, rest),
        };
        if !is_valid_host(registry) {
            return Err(bad("the registry host is not a host name or host:port"));
        }
        let library;
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            library = format!("library/{path}");
            library.as_str()
        } else {
            path
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_string())),
            _ => (path, None),
        };
        if repository.is_empty() || !repository.split('/').all(is_valid_component) {
            return Err(bad(
                "the repository must be lower-case components of [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'",
            ));
        }
        if repository.len() > 255 {
            return Err(bad("the repository is longer than 255 characters"));
        }
        if let Some(t) = &tag
            && !is_valid_tag(t)
        {
            return Err(bad(
                "a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'",
            ));
        }
        Ok(RemoteRef {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// `host/repository`, without tag or digest.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository at `tag`.
    pub fn with_tag(&self, tag: &str) -> RemoteRef {
        RemoteRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// What to ask the registry for: the digest when given, else the tag.
    pub fn manifest_reference(&self) -> Option<String> {
        self.digest
            .map(|d| d.to_string())
            .or_else(|| self.tag.clone())
    }
}

impl fmt::Display for RemoteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_docker_writes() {
        let r = RemoteRef::parse("127.0.0.1:5000/team/snaps:py-deps").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/snaps");
        assert_eq!(r.tag.as_deref(), Some("py-deps"));
        assert_eq!(r.to_string(), "127.0.0.1:5000/team/snaps:py-deps");

        let hex = "ab".repeat(32);
        let r = RemoteRef::parse(&format!("ghcr.io/a/b@sha256:{hex}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference().unwrap(), format!("sha256:{hex}"));

        let r = RemoteRef::parse("localhost:5000/snaps").unwrap();
        assert_eq!((r.tag, r.digest), (None, None));
    }

    #[test]
    fn the_first_component_is_a_host_only_with_a_dot_a_colon_or_localhost() {
        let cases = [
            // Docker Hub: no host named.
            ("snaps", "docker.io", "library/snaps", None),
            ("snaps:app", "docker.io", "library/snaps", Some("app")),
            ("team/snaps:app", "docker.io", "team/snaps", Some("app")),
            ("team/sub/snaps", "docker.io", "team/sub/snaps", None),
            // Docker Hub by any of its names.
            (
                "docker.io/snaps:app",
                "docker.io",
                "library/snaps",
                Some("app"),
            ),
            ("docker.io/team/snaps", "docker.io", "team/snaps", None),
            (
                "index.docker.io/team/snaps:a",
                "docker.io",
                "team/snaps",
                Some("a"),
            ),
            (
                "registry-1.docker.io/snaps:a",
                "docker.io",
                "library/snaps",
                Some("a"),
            ),
            // Hosts: a dot, a port, or localhost.
            ("localhost/snaps:a", "localhost", "snaps", Some("a")),
            (
                "localhost:5000/team/snaps",
                "localhost:5000",
                "team/snaps",
                None,
            ),
            ("ghcr.io/team/snaps:a", "ghcr.io", "team/snaps", Some("a")),
            ("registry:5000/snaps", "registry:5000", "snaps", None),
            (
                "127.0.0.1:5000/snaps:a",
                "127.0.0.1:5000",
                "snaps",
                Some("a"),
            ),
            ("[::1]:5000/snaps", "[::1]:5000", "snaps", None),
        ];
        for (given, registry, repository, tag) in cases {
            let r = RemoteRef::parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(
                (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
                (registry, repository, tag),
                "{given}"
            );
        }
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(api_host("ghcr.io"), "ghcr.io");
        assert_eq!(credentials_key("docker.io"), "https://index.docker.io/v1/");
        assert_eq!(credentials_key("localhost:5000"), "localhost:5000");
        let hub = RemoteRef::parse("team/snaps:app").unwrap();
        assert_eq!(hub.to_string(), "docker.io/team/snaps:app");
    }

    #[test]
    fn refuses_what_is_not_a_reference() {
        for bad in [
            "host.example/",
            "snaps:",
            "Snaps",
            "localhost/",
            "host.example/Upper",
            "host.example/a//b",
            "host.example/a:-tag",
            "host.example/a:",
            "host.example/a@sha256:zz",
            "ho.st x/a",
            "host:99999999/a",
            "host.example/a-/b",
            "team/",
            "/snaps",
        ] {
            let e = RemoteRef::parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}: {e}");
        }
        assert!(is_valid_tag("sha256-abc"));
        let d = Digest::of(b"x");
        assert_eq!(snapshot_of_tag(&snapshot_tag(&d)), Some(d));
        assert_eq!(snapshot_of_tag("sha256-abc"), None);
        assert_eq!(snapshot_of_tag("py-deps"), None);
        assert!(!is_valid_tag(&"a".repeat(129)));
        assert!(!is_valid_tag("a/b"));
    }
}
