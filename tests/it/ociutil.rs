//! A real OCI registry for the push/pull tests: Debian's `docker-registry`
//! (Distribution 2.8) on 127.0.0.1, a free port, filesystem storage in a
//! temporary directory, optionally behind TLS with a CA made by `openssl`
//! here and htpasswd basic auth; killed on drop. The tools these tests
//! drive are required: a missing one fails the test naming the script that
//! installs it, unless `MSB_SKIP_OCI=1` opts out.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that skips the tests needing a registry.
pub const SKIP_ENV: &str = "MSB_SKIP_OCI";

/// Tools the registry tests run, with the Debian package holding each.
const TOOLS: &[(&str, &str)] = &[
    ("docker-registry", "docker-registry"),
    ("skopeo", "skopeo"),
    ("htpasswd", "apache2-utils"),
    ("openssl", "openssl"),
    ("mkfs.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("sqlite3", "sqlite3"),
];

/// Whether the registry tests run: false only under `MSB_SKIP_OCI=1`
/// (said on stderr); panics naming `scripts/test.sh` when a tool is
/// missing, so a bare machine fails loudly instead of skipping.
#[track_caller]
pub fn enabled() -> bool {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("skipping: {SKIP_ENV}=1");
        return false;
    }
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(tool, package)| format!("{tool} (Debian package {package})"))
        .collect();
    assert!(
        missing.is_empty(),
        "the OCI registry tests need {}: run the tests with `scripts/test.sh`, which installs \
         them (or install them with `sudo scripts/test-deps.sh`; {SKIP_ENV}=1 skips these tests)",
        missing.join(", ")
    );
    true
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].map(PathBuf::from))
        .any(|dir| dir.join(tool).is_file())
}

/// How a registry is served.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// HTTPS with a certificate for 127.0.0.1 signed by a fresh CA.
    pub tls: bool,
    /// htpasswd basic auth with this user and password.
    pub auth: Option<(String, String)>,
}

impl Options {
    /// Plain HTTP, anonymous.
    pub fn plain() -> Self {
        Options::default()
    }

    /// HTTPS with a fresh CA.
    pub fn tls() -> Self {
        Options {
            tls: true,
            auth: None,
        }
    }

    /// Add htpasswd basic auth for `user` / `password`.
    pub fn with_auth(mut self, user: &str, password: &str) -> Self {
        self.auth = Some((user.into(), password.into()));
        self
    }
}

/// A running `docker-registry` and the directory holding its config,
/// storage, certificates and log.
pub struct OciRegistry {
    dir: tempfile::TempDir,
    port: u16,
    opts: Options,
    child: Option<Child>,
}

impl OciRegistry {
    /// Start a registry served as `opts` says, and wait until `/v2/` answers.
    #[track_caller]
    pub fn start(opts: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("storage")).unwrap();
        if opts.tls {
            make_certificates(dir.path());
        }
        if let Some((user, password)) = &opts.auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd: {out:?}");
            std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
        }
        let mut reg = OciRegistry {
            dir,
            port: 0,
            opts,
            child: None,
        };
        // Another process may take the free port between our probe and the
        // registry's bind: then it exits at once, and a new port is tried.
        for _ in 0..5 {
            reg.port = free_port();
            if reg.spawn() {
                return reg;
            }
        }
        panic!("docker-registry did not start:\n{}", reg.log());
    }

    /// `127.0.0.1:PORT`, as a push target or pull source starts.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `HOST:PORT/REPO`.
    pub fn repo(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host())
    }

    /// The CA certificate (PEM) that signed the server's, under TLS.
    pub fn ca_cert(&self) -> PathBuf {
        assert!(self.opts.tls, "no TLS on this registry");
        self.dir.path().join("ca.crt")
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Bytes of every file under the storage directory.
    pub fn storage_bytes(&self) -> u64 {
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .map(|d| {
                    d.map(|e| {
                        let e = e.unwrap();
                        let m = e.metadata().unwrap();
                        if m.is_dir() { walk(&e.path()) } else { m.len() }
                    })
                    .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.storage())
    }

    /// The digests of every blob the registry stores (`sha256:<hex>`).
    pub fn blobs(&self) -> Vec<String> {
        let dir = self.storage().join("docker/registry/v2/blobs/sha256");
        let mut out = Vec::new();
        for prefix in std::fs::read_dir(&dir).into_iter().flatten() {
            for blob in std::fs::read_dir(prefix.unwrap().path()).unwrap() {
                let blob = blob.unwrap();
                if blob.path().join("data").is_file() {
                    out.push(format!("sha256:{}", blob.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        out
    }

    /// The bytes of the blob `digest` (`sha256:<hex>`) in storage.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::read(
            self.storage()
                .join("docker/registry/v2/blobs/sha256")
                .join(&hex[..2])
                .join(hex)
                .join("data"),
        )
        .unwrap()
    }

    /// The tags of `repo` as the storage holds them.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let dir = self
            .storage()
            .join("docker/registry/v2/repositories")
            .join(repo)
            .join("_manifests/tags");
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        out.sort();
        out
    }

    /// The blobs some repository links as uploaded (`_layers`): what a
    /// HEAD in that repository finds, unlike [`Self::blobs`], which also
    /// lists a blob whose commit a crash cut short before the link.
    pub fn linked_blobs(&self) -> Vec<String> {
        fn walk(dir: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten() {
                let path = e.unwrap().path();
                if path.file_name().is_some_and(|n| n == "_layers") {
                    for b in std::fs::read_dir(path.join("sha256")).into_iter().flatten() {
                        let b = b.unwrap();
                        if b.path().join("link").is_file() {
                            out.push(format!("sha256:{}", b.file_name().to_string_lossy()));
                        }
                    }
                } else if path.is_dir()
                    && !path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('_'))
                {
                    walk(&path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(
            &self.storage().join("docker/registry/v2/repositories"),
            &mut out,
        );
        out.sort();
        out.dedup();
        out
    }

    /// Kill the registry (SIGKILL, as a crash) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop the registry as an operator would (SIGTERM: requests in
    /// flight finish, within the configured drain time), else kill it.
    fn shut_down(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Start the registry again on the same port with the same storage,
    /// once what it was storing is stored (a SIGKILL could cut a blob's
    /// commit short, leaving storage a later HEAD answers 500 about).
    #[track_caller]
    pub fn restart(&mut self) {
        self.shut_down();
        // The old listener's port is free once its process is reaped; retry
        // briefly in case the kernel is slower to let it go.
        for _ in 0..20 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("docker-registry did not restart:\n{}", self.log());
    }

    /// What the registry has written to its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Run `docker-registry serve` on `self.port`; true once `/v2/`
    /// answers, false when the process exits first.
    fn spawn(&mut self) -> bool {
        let config = self.dir.path().join("config.yml");
        std::fs::write(&config, self.config()).unwrap();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .unwrap();
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; a registry must not outlive a
        // test process that is killed before its Drop runs.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if self.answers() {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether the registry answers: over plain HTTP a `GET /v2/` with a
    /// status line; over TLS an accepted connection (the handshake is the
    /// client's to test).
    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.opts.tls {
            return true;
        }
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        if stream
            .write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
    }

    fn config(&self) -> String {
        let dir = self.dir.path().display();
        let mut c = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {dir}/storage\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{}\n  secret: msb-registry-tests\n  draintimeout: 10s\n",
            self.port
        );
        if self.opts.tls {
            c += &format!("  tls:\n    certificate: {dir}/server.crt\n    key: {dir}/server.key\n");
        }
        if self.opts.auth.is_some() {
            c += &format!("auth:\n  htpasswd:\n    realm: msb-test\n    path: {dir}/htpasswd\n");
        }
        c
    }
}

impl Drop for OciRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA (`ca.crt`) and a server certificate for IP 127.0.0.1 signed by it
/// (`server.crt`, `server.key`) in `dir`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    openssl(
        &[
            &[
                "req",
                "-x509",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=msb test CA",
            ][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-nodes", "-subj", "/CN=127.0.0.1"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
}

/// The HTTP status of `HEAD path` on a plain-HTTP registry (anonymous),
/// accepting OCI manifests: 200 when a tag or manifest exists, 404 when not.
pub fn head_status(host: &str, path: &str) -> u16 {
    let mut stream = TcpStream::connect(host).unwrap();
    write!(
        stream,
        "HEAD {path} HTTP/1.0\r\nHost: {host}\r\n\
         Accept: application/vnd.oci.image.manifest.v1+json\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}
