//! A client of the OCI distribution API, as much of it as push and pull
//! need: blobs (HEAD, GET, monolithic upload, cross-repository mount) and
//! manifests (HEAD, GET, PUT), with docker's auth flows (anonymous, basic,
//! bearer tokens from the registry's token service). Every body read from
//! the registry is bounded and every blob digest-checked as it streams; an
//! error names the registry and what it said, never a credential.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};

mod auth;
mod body;
mod tags;

use self::auth::AuthState;
use self::body::{
    BodyFail, chain, content_length, error_text, file_stream, pieces, read_body, res_digest_header,
};
use super::credentials::Credentials;
use super::deadline::{Activity, Cut, Deadline, Limits};
use super::retry::{Fail, RetryPolicy, is_transient, jitter, retry_after};
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};

/// How to reach a registry.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Plain HTTP instead of verified HTTPS.
    pub insecure: bool,
    /// A PEM file of extra CA certificates to trust.
    pub ca_cert: Option<std::path::PathBuf>,
    /// What to authenticate with.
    pub credentials: Credentials,
    /// The overall timeout and the minimum rate of every attempt.
    pub limits: Limits,
    /// When and how often a failed request is tried again.
    pub retry: RetryPolicy,
    /// Where the one-line notice of each retry goes.
    pub notices: Notices,
}

/// A receiver of one-line notices (each retry); the library prints
/// nothing itself.
#[derive(Clone, Default)]
pub struct Notices(Option<Arc<Say>>);

/// What a notice is handed to.
type Say = dyn Fn(&str) + Send + Sync;

impl Notices {
    /// Notices passed to `say`.
    pub fn new(say: impl Fn(&str) + Send + Sync + 'static) -> Notices {
        Notices(Some(Arc::new(say)))
    }

    fn say(&self, line: &str) {
        if let Some(say) = &self.0 {
            say(line);
        }
    }
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Notices"
        } else {
            "NoNotices"
        })
    }
}

/// The largest error body or token response read.
const MAX_SMALL_BODY: u64 = 64 * 1024;
/// The pieces a body is sent in: small, so that progress is seen at a
/// finer grain than `--min-rate` × `--stall-timeout` bytes.
const PIECE: usize = 16 * 1024;

/// Whether a request may push or only pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `pull`.
    Pull,
    /// `pull,push`.
    Push,
}

/// A client of one registry.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    registry: String,
    credentials: Credentials,
    auth: Mutex<AuthState>,
    deadline: Deadline,
    retry: RetryPolicy,
    notices: Notices,
}

/// What a HEAD found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The content's digest, as the registry gives it.
    pub digest: Option<Digest>,
    /// Its length.
    pub size: u64,
}

/// A part of a blob to read: `len` bytes from `start` of the `size`.
struct Span<'a> {
    repository: &'a str,
    digest: &'a Digest,
    size: u64,
    start: u64,
    len: u64,
    /// The whole blob, asked for without a Range until part of it is read.
    whole: bool,
    subject: &'a str,
}

impl Client {
    /// A client of `registry` (`host[:port]`, or `docker.io` for Docker
    /// Hub, reached at its API host); the `--timeout` starts now.
    pub fn new(registry: &str, opts: &ClientOptions) -> Result<Client> {
        let scheme = if opts.insecure { "http" } else { "https" };
        let host = super::reference::api_host(registry);
        let base = Url::parse(&format!("{scheme}://{host}/"))
            .map_err(|e| Error::Usage(format!("registry {registry}: {e}")))?;
        // Read stalls are the deadline's business (a window per attempt).
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("msb-registry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(path) = &opts.ca_cert {
            builder = builder.tls_certs_merge(read_ca_certs(path)?);
        }
        let http = builder.build().map_err(|e| Error::Remote {
            registry: registry.to_string(),
            detail: format!("cannot set up the HTTP client: {}", chain(&e)),
        })?;
        Ok(Client {
            http,
            base,
            registry: registry.to_string(),
            credentials: opts.credentials.clone(),
            auth: Mutex::new(AuthState::default()),
            deadline: Deadline::start(opts.limits),
            retry: opts.retry,
            notices: opts.notices.clone(),
        })
    }

    /// `host[:port]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    fn url(&self, path: &str) -> Url {
        self.base.join(path).expect("registry paths are valid URLs")
    }

    fn remote(&self, detail: impl Into<String>) -> Error {
        Error::Remote {
            registry: self.registry.clone(),
            detail: detail.into(),
        }
    }

    /// Check that the registry answers the distribution API (and that our
    /// credentials are good for `repository`).
    pub async fn ping(&self, repository: &str, access: Access) -> Result<()> {
        let (url, scope) = (self.url("v2/"), scope(repository, access));
        self.retrying("GET /v2/", async |_| {
            let res = self
                .send_once(&Method::GET, &url, &[&scope], &|r| r)
                .await?;
            let status = res.status();
            if status.is_success() {
                return Ok(());
            }
            let error = self.unexpected("GET /v2/", res).await;
            // What a TLS server answers a plain-HTTP request with.
            Err(
                if status == StatusCode::BAD_REQUEST && self.base.scheme() == "http" {
                    with_hint(
                        error,
                        "; the registry seems to speak HTTPS: drop --insecure",
                    )
                } else {
                    error
                }
                .into(),
            )
        })
        .await
    }

    /// The size of blob `digest` in `repository`, if it holds it.
    pub async fn head_blob(&self, repository: &str, digest: &Digest) -> Result<Option<u64>> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let scope = scope(repository, Access::Pull);
        let what = format!("HEAD blob {digest}");
        self.retrying(&what, async |_| {
            let res = self
                .send_once(&Method::HEAD, &url, &[&scope], &|r| r)
                .await?;
            match res.status() {
                s if s.is_success() => Ok(Some(content_length(&res).unwrap_or(0))),
                StatusCode::NOT_FOUND => Ok(None),
                _ => Err(self.unexpected(&what, res).await.into()),
            }
        })
        .await
    }

    /// Blob `digest` of `repository`, which must be `size` bytes, read
    /// whole (for chunks, chunk maps and configs: all small and bounded)
    /// and checked against its digest.
    pub async fn get_blob(&self, repository: &str, digest: &Digest, size: u64) -> Result<Bytes> {
        let mut body = Vec::with_capacity(size.min(8 << 20) as usize);
        self.get_blob_into(repository, digest, size, |piece| {
            body.extend_from_slice(piece);
            Ok(())
        })
        .await?;
        Ok(Bytes::from(body))
    }

    /// Stream blob `digest` of `repository` (`size` bytes) into `sink`,
    /// refusing it the moment it runs past `size`, and checking its digest
    /// at the end. A retry after a cut continues from the byte reached.
    /// Returns the bytes received.
    pub async fn get_blob_into(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let subject = format!("blob {digest}");
        let span = Span {
            repository,
            digest,
            size,
            start: 0,
            len: size,
            whole: true,
            subject: &subject,
        };
        let mut hasher = Sha256::new();
        let mut done = 0u64;
        let mut sink = |piece: &[u8]| {
            hasher.update(piece);
            sink(piece)
        };
        self.retrying(&format!("GET {subject}"), async |activity| {
            self.read_span(&span, &mut done, &mut sink, activity).await
        })
        .await?;
        let found = Digest::from_bytes(hasher.finalize().into());
        if found != *digest {
            return Err(Error::Integrity {
                subject: format!("{}/{repository}@{digest}", self.registry),
                detail: format!("the registry served bytes whose digest is {found}"),
            });
        }
        Ok(done)
    }

    /// Bytes `start..start + len` of blob `digest` of `repository` (`size`
    /// bytes in all), by an HTTP range request; a registry that ignores
    /// the range is read through up to the end of the range. A retry
    /// after a cut asks only for the rest. The caller checks what the
    /// bytes hold (the blob's digest cannot be).
    pub async fn get_range(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        start: u64,
        len: u64,
    ) -> Result<Bytes> {
        let subject = format!("blob {digest} bytes {start}+{len}");
        if len == 0 || start.checked_add(len).is_none_or(|end| end > size) {
            return Err(super::format::malformed(
                &subject,
                format!("outside the blob's {size} bytes"),
            ));
        }
        let span = Span {
            repository,
            digest,
            size,
            start,
            len,
            whole: false,
            subject: &subject,
        };
        let mut body = Vec::with_capacity(len as usize);
        let mut done = 0u64;
        self.retrying(&format!("GET {subject}"), async |activity| {
            let mut sink = |piece: &[u8]| {
                body.extend_from_slice(piece);
                Ok(())
            };
            self.read_span(&span, &mut done, &mut sink, activity).await
        })
        .await?;
        Ok(Bytes::from(body))
    }

    /// One attempt at the bytes of `span` from `*done` on, into `sink`,
    /// advancing `*done`.
    async fn read_span(
        &self,
        span: &Span<'_>,
        done: &mut u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
        activity: &Activity,
    ) -> std::result::Result<(), Fail> {
        let ranged = !(span.whole && *done == 0);
        let from = span.start + *done;
        let range = format!("bytes={from}-{}", span.start + span.len.max(1) - 1);
        let url = self.url(&format!("v2/{}/blobs/{}", span.repository, span.digest));
        let scope = scope(span.repository, Access::Pull);
        let res = self
            .send_once(&Method::GET, &url, &[&scope], &|r| {
                if ranged {
                    r.header(reqwest::header::RANGE, range.as_str())
                } else {
                    r
                }
            })
            .await?;
        let (skip, res) = self.span_answer(span, res, ranged, from).await?;
        let partial = res.status() == StatusCode::PARTIAL_CONTENT;
        // A registry ignoring the Range is read only up to the span's end.
        let stop_at = ranged.then_some(span.len - *done);
        read_body(
            res,
            skip,
            stop_at,
            ranged && !partial,
            activity,
            &mut |piece| {
                if piece.len() as u64 > span.len - *done && (partial || !ranged) {
                    return Err(span_overflow(span).into());
                }
                *done += piece.len() as u64;
                sink(piece).map_err(|e| Fail::Stop(e).into())
            },
        )
        .await
        .map_err(|f| self.fail_in(span.subject, f))?;
        if *done != span.len {
            return Err(Fail::again(self.remote(format!(
                "{}: connection ended after {} of {} bytes",
                span.subject, *done, span.len
            ))));
        }
        Ok(())
    }

    /// Check the answer to a read of `span` from byte `from`: the bytes to
    /// skip before the span's (a registry ignoring the Range sends the
    /// whole blob), or why the answer is refused.
    async fn span_answer(
        &self,
        span: &Span<'_>,
        res: Response,
        ranged: bool,
        from: u64,
    ) -> std::result::Result<(u64, Response), Fail> {
        let rest = span.len - (from - span.start);
        match res.status() {
            StatusCode::PARTIAL_CONTENT if ranged => {
                // Checked here, not only on the pieces read: the last piece
                // may end exactly at the range, leaving the excess unread.
                if content_length(&res).is_some_and(|l| l > rest) {
                    return Err(span_overflow(span));
                }
                let asked = format!("bytes {from}-{}/", span.start + span.len - 1);
                if let Some(answered) = res
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    && !answered.starts_with(&asked)
                {
                    return Err(Fail::Stop(super::format::malformed(
                        span.subject,
                        format!(
                            "the registry answers with {}, not the range asked for",
                            crate::model::text::escape(answered)
                        ),
                    )));
                }
                Ok((0, res))
            }
            StatusCode::OK => {
                if let Some(len) = content_length(&res)
                    && len > span.size
                {
                    return Err(Fail::Stop(super::format::malformed(
                        span.subject,
                        format!(
                            "the registry sends {len} bytes; the manifest says {}",
                            span.size
                        ),
                    )));
                }
                Ok((if ranged { from } else { 0 }, res))
            }
            StatusCode::NOT_FOUND => Err(Fail::Stop(Error::NotFound {
                what: "blob",
                reference: format!("{}/{}@{}", self.registry, span.repository, span.digest),
            })),
            _ => Err(Fail::Stop(
                self.unexpected(&format!("GET {}", span.subject), res).await,
            )),
        }
    }

    /// Mount blob `digest` into `repository` from `from` (same registry).
    /// `Ok(true)` when the registry mounted it; `Ok(false)` when it would
    /// not (the caller uploads instead).
    pub async fn mount_blob(&self, repository: &str, digest: &Digest, from: &str) -> Result<bool> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let scopes = [
            scope(repository, Access::Push),
            format!("repository:{from}:pull"),
        ];
        let scopes = [scopes[0].as_str(), scopes[1].as_str()];
        let what = format!("mount blob {digest}");
        self.retrying(&what, async |_| {
            let res = self
                .send_once(&Method::POST, &url, &scopes, &|r| {
                    r.header(CONTENT_LENGTH, 0)
                })
                .await?;
            match res.status() {
                StatusCode::CREATED => Ok(true),
                // 202: the registry opened an upload instead (as ECR does);
                // leave it to expire.
                s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(false),
                _ => Err(self.unexpected(&what, res).await.into()),
            }
        })
        .await
    }

    /// Upload `body` as blob `digest` of `repository` in one request
    /// (POST for a session, PUT with the digest); a retry starts the
    /// upload again.
    pub async fn put_blob(&self, repository: &str, digest: &Digest, body: Bytes) -> Result<()> {
        let len = body.len() as u64;
        self.upload(repository, digest, len, &|activity| {
            reqwest::Body::wrap_stream(pieces(body.clone(), activity.clone()))
        })
        .await
    }

    /// Upload the file `path` (`len` bytes, digest `digest`) as a blob,
    /// streaming it; a retry starts the upload again.
    pub async fn put_blob_file(
        &self,
        repository: &str,
        digest: &Digest,
        path: &Path,
        len: u64,
    ) -> Result<()> {
        // Opened here so a missing file is our error, not the network's.
        crate::store::files::open_regular(path)?;
        self.upload(repository, digest, len, &|activity| {
            reqwest::Body::wrap_stream(file_stream(path.to_path_buf(), activity.clone()))
        })
        .await
    }

    /// POST for a session, then PUT the body `body` makes, `len` bytes.
    async fn upload(
        &self,
        repository: &str,
        digest: &Digest,
        len: u64,
        body: &(dyn Fn(&Activity) -> reqwest::Body + Sync),
    ) -> Result<()> {
        let what = format!("upload blob {digest}");
        let scope = scope(repository, Access::Push);
        self.retrying(&what, async |activity| {
            let location = self.start_upload(repository).await?;
            let url = with_digest(location, digest);
            let res = self
                .send_once(&Method::PUT, &url, &[&scope], &|r| {
                    r.header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_LENGTH, len)
                        .body(body(activity))
                })
                .await?;
            if res.status().is_success() {
                Ok(())
            } else {
                Err(self.unexpected(&what, res).await.into())
            }
        })
        .await
    }

    async fn start_upload(&self, repository: &str) -> std::result::Result<Url, Fail> {
        let url = self.url(&format!("v2/{repository}/blobs/uploads/"));
        let scope = scope(repository, Access::Push);
        let res = self
            .send_once(&Method::POST, &url, &[&scope], &|r| {
                r.header(CONTENT_LENGTH, 0)
            })
            .await?;
        if res.status() != StatusCode::ACCEPTED {
            return Err(self.unexpected("start blob upload", res).await.into());
        }
        let location = res
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.remote("blob upload: no Location in the registry's answer"))?;
        Ok(url
            .join(location)
            .map_err(|e| self.remote(format!("blob upload: bad Location: {e}")))?)
    }

    /// The digest and size of manifest `reference` (tag or digest) of
    /// `repository`, if it holds one.
    pub async fn head_manifest(&self, repository: &str, reference: &str) -> Result<Option<Found>> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let scope = scope(repository, Access::Pull);
        let what = format!("HEAD manifest {reference}");
        self.retrying(&what, async |_| {
            let res = self
                .send_once(&Method::HEAD, &url, &[&scope], &|r| {
                    r.header(ACCEPT, super::format::OCI_MANIFEST)
                })
                .await?;
            match res.status() {
                s if s.is_success() => Ok(Some(Found {
                    digest: res_digest_header(&res),
                    size: content_length(&res).unwrap_or(0),
                })),
                StatusCode::NOT_FOUND => Ok(None),
                _ => Err(self.unexpected(&what, res).await.into()),
            }
        })
        .await
    }

    /// Manifest `reference` of `repository`: its bytes (at most
    /// `MAX_OCI_MANIFEST_BYTES`) and digest. A manifest asked for by digest
    /// must hash to it.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<(Bytes, Digest)>> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let scope = scope(repository, Access::Pull);
        let subject = format!(
            "manifest {}",
            super::reference::joined(&self.registry, repository, reference)
        );
        let what = format!("GET manifest {reference}");
        let got = self
            .retrying(&what, async |activity| {
                let res = self
                    .send_once(&Method::GET, &url, &[&scope], &|r| {
                        r.header(ACCEPT, super::format::OCI_MANIFEST)
                    })
                    .await?;
                match res.status() {
                    s if s.is_success() => {}
                    StatusCode::NOT_FOUND => return Ok(None),
                    _ => return Err(self.unexpected(&what, res).await.into()),
                }
                let said = res_digest_header(&res);
                let body = self.read_manifest(&subject, res, activity).await?;
                Ok(Some((body, said)))
            })
            .await?;
        let Some((body, said)) = got else {
            return Ok(None);
        };
        let digest = Digest::of(&body);
        if let Ok(asked) = reference.parse::<Digest>()
            && asked != digest
        {
            return Err(Error::Integrity {
                subject,
                detail: format!("the registry served a manifest whose digest is {digest}"),
            });
        }
        if let Some(said) = said
            && said != digest
        {
            return Err(Error::Integrity {
                subject,
                detail: format!(
                    "the registry says its digest is {said}; its bytes hash to {digest}"
                ),
            });
        }
        Ok(Some((Bytes::from(body), digest)))
    }

    /// A manifest's body, refused past `MAX_OCI_MANIFEST_BYTES`.
    async fn read_manifest(
        &self,
        subject: &str,
        res: Response,
        activity: &Activity,
    ) -> std::result::Result<Vec<u8>, Fail> {
        let max = super::format::MAX_OCI_MANIFEST_BYTES;
        let too_large =
            || super::format::malformed(subject, format!("manifest larger than {max} bytes"));
        if content_length(&res).is_some_and(|l| l > max) {
            return Err(too_large().into());
        }
        let mut body = Vec::new();
        read_body(res, 0, None, false, activity, &mut |piece| {
            if (body.len() + piece.len()) as u64 > max {
                return Err(too_large().into());
            }
            body.extend_from_slice(piece);
            Ok(())
        })
        .await
        .map_err(|f| self.fail_in(subject, f))?;
        Ok(body)
    }

    /// Store `body` (an OCI image manifest) as `reference` (tag or digest) of `repository`.
    pub async fn put_manifest(&self, repository: &str, reference: &str, body: Bytes) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let scope = scope(repository, Access::Push);
        let what = format!("PUT manifest {reference}");
        self.retrying(&what, async |_| {
            let res = self
                .send_once(&Method::PUT, &url, &[&scope], &|r| {
                    r.header(CONTENT_TYPE, super::format::OCI_MANIFEST)
                        .body(body.clone())
                })
                .await?;
            if res.status().is_success() {
                Ok(())
            } else {
                Err(self.unexpected(&what, res).await.into())
            }
        })
        .await
    }

    /// Run `attempt` until it succeeds or fails for good: a transient
    /// failure is tried again after the policy's wait (saying so), while
    /// attempts remain and the `--timeout` leaves time for it; each
    /// attempt is cut when it moves too little for a window.
    async fn retrying<T>(
        &self,
        what: &str,
        mut attempt: impl AsyncFnMut(&Activity) -> std::result::Result<T, Fail>,
    ) -> Result<T> {
        let mut retry = 0;
        loop {
            if let Some(cut) = self.deadline.refuses(Duration::ZERO) {
                return Err(self.remote(format!("{what}: {cut}")));
            }
            let activity = Activity::default();
            let fail = match self.deadline.guard(&activity, attempt(&activity)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(fail)) => fail,
                Err(cut @ Cut::Timeout(_)) => return Err(self.remote(format!("{what}: {cut}"))),
                Err(cut) => Fail::again(self.remote(format!("{what}: {cut}"))),
            };
            let (error, asked) = match fail {
                Fail::Stop(e) => return Err(e),
                Fail::Again { error, retry_after } => (error, retry_after),
            };
            retry += 1;
            let wait = self.retry.delay(retry, asked, jitter());
            let why_not = if retry > self.retry.retries {
                Some(format!("{} attempts", retry))
            } else if asked.is_some_and(|a| a > self.retry.max_retry_after) {
                Some(format!(
                    "it asks to be retried after {} s, longer than the {} s waited at most",
                    wait.as_secs(),
                    self.retry.max_retry_after.as_secs()
                ))
            } else {
                self.deadline
                    .refuses(wait)
                    .map(|cut| format!("{cut} before a retry"))
            };
            if let Some(why) = why_not {
                return Err(with_detail(error, &why));
            }
            self.notices.say(&format!(
                "warning: retry {retry} of {} in {:.1} s: {error}",
                self.retry.retries,
                wait.as_secs_f64()
            ));
            tokio::time::sleep(wait).await;
        }
    }

    /// Send one request, answering the registry's auth challenge once; a
    /// transient answer or a cut connection is a [`Fail::Again`].
    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        scopes: &[&str],
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Sync),
    ) -> std::result::Result<Response, Fail> {
        self.token_ahead(scopes).await?;
        let what = format!("{method} {}", url.path());
        let mut challenged = false;
        loop {
            let req = self.http.request(method.clone(), url.clone());
            let res = self
                .authorize(build(req), url, scopes)
                .send()
                .await
                .map_err(|e| self.cut_off(&what, &e))?;
            match res.status() {
                // Another host's challenge (an upload Location elsewhere)
                // is not answered with our credentials.
                StatusCode::UNAUTHORIZED if !challenged && self.is_registry(url) => {
                    challenged = true;
                    let challenge = res
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.answer(&challenge, scopes).await?;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(self.refused(res).await.into());
                }
                s if is_transient(s) => return Err(self.transient(&what, res).await),
                _ => return Ok(res),
            }
        }
    }

    /// The error of a 401 or 403 the challenge did not mend.
    async fn refused(&self, res: Response) -> Error {
        let said = error_text(res).await;
        Error::RemoteAuth {
            registry: self.registry.clone(),
            detail: if self.credentials.is_anonymous() {
                format!(
                    "{said}; the registry wants credentials: give --username and --password-stdin, or `docker login {}`",
                    self.registry
                )
            } else {
                format!("{said}; the credentials given were refused")
            },
        }
    }

    /// A transient answer, with the wait it asks for.
    async fn transient(&self, what: &str, res: Response) -> Fail {
        let retry_after = retry_after(res.headers());
        Fail::Again {
            error: self.unexpected(what, res).await,
            retry_after,
        }
    }

    /// A failed send or body read: transient unless no retry can mend it
    /// (a refused certificate, plain HTTP answering TLS, a redirect loop).
    fn cut_off(&self, what: &str, e: &reqwest::Error) -> Fail {
        let text = chain(e);
        let error = self.transfer(what, e);
        if e.is_builder()
            || e.is_redirect()
            || text.contains("certificate")
            || text.contains("InvalidContentType")
        {
            Fail::Stop(error)
        } else {
            Fail::again(error)
        }
    }

    /// A body-read failure of `subject`, named.
    fn fail_in(&self, subject: &str, f: BodyFail) -> Fail {
        match f {
            BodyFail::Net(e) => self.cut_off(subject, &e),
            BodyFail::Fail(f) => f,
        }
    }

    fn transfer(&self, what: &str, e: &reqwest::Error) -> Error {
        let text = chain(e);
        let hint = if self.base.scheme() == "https" && text.contains("InvalidContentType") {
            "; the registry seems to speak plain HTTP (--insecure, for a registry on localhost)"
        } else if text.contains("certificate") || text.contains("UnknownIssuer") {
            "; for a registry with a private CA give --ca-cert FILE"
        } else {
            ""
        };
        self.remote(format!("{what}: {text}{hint}"))
    }

    async fn unexpected(&self, what: &str, res: Response) -> Error {
        let status = res.status();
        let said = error_text(res).await;
        self.remote(format!("{what}: HTTP {status}: {said}"))
    }
}

/// `repository:<name>:pull[,push]`.
fn scope(repository: &str, access: Access) -> String {
    match access {
        Access::Pull => format!("repository:{repository}:pull"),
        Access::Push => format!("repository:{repository}:pull,push"),
    }
}

fn with_digest(mut location: Url, digest: &Digest) -> Url {
    location
        .query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    location
}

/// The refusal of a registry sending more than a span asked for.
fn span_overflow(span: &Span<'_>) -> Fail {
    let reason = if span.whole {
        format!(
            "the registry sends more than the {} bytes the manifest says",
            span.size
        )
    } else {
        "the registry sends more than the range asked for".to_string()
    };
    Fail::Stop(super::format::malformed(span.subject, reason))
}

/// `error` with `hint` appended to what it says.
fn with_hint(error: Error, hint: &str) -> Error {
    match error {
        Error::Remote { registry, detail } => Error::Remote {
            registry,
            detail: format!("{detail}{hint}"),
        },
        other => other,
    }
}

/// `error` with `why` it is final appended to what it says.
fn with_detail(error: Error, why: &str) -> Error {
    with_hint(error, &format!(" (gave up: {why})"))
}

/// The certificates of the PEM file given as `--ca-cert`.
fn read_ca_certs(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).at("read", path)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        Error::Usage(format!(
            "--ca-cert {}: not a PEM certificate: {e}",
            path.display()
        ))
    })?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "--ca-cert {}: no PEM certificate in it",
            path.display()
        )));
    }
    Ok(certs)
}
