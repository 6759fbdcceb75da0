//! A client of the OCI distribution API, as much of it as push and pull
//! need: blobs (HEAD, GET, monolithic upload, cross-repository mount) and
//! manifests (HEAD, GET, PUT), with docker's auth flows (anonymous, basic,
//! bearer tokens from the registry's token service). Every body read from
//! the registry is bounded and every blob digest-checked as it streams; an
//! error names the registry and what it said, never a credential.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use sha2::{Digest as _, Sha256};

use super::credentials::Credentials;
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
}

/// The largest error body or token response read.
const MAX_SMALL_BODY: u64 = 64 * 1024;
/// Attempts for a request that fails to connect or is cut off.
const ATTEMPTS: u32 = 3;

/// Whether a request may push or only pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `pull`.
    Pull,
    /// `pull,push`.
    Push,
}

#[derive(Debug, Clone, Default)]
enum Scheme {
    #[default]
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Default)]
struct AuthState {
    scheme: Scheme,
    tokens: HashMap<String, String>,
}

/// A client of one registry.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    registry: String,
    credentials: Credentials,
    auth: Mutex<AuthState>,
}

/// What a HEAD found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The content's digest, as the registry gives it.
    pub digest: Option<Digest>,
    /// Its length.
    pub size: u64,
}

impl Client {
    /// A client of `registry` (`host[:port]`).
    pub fn new(registry: &str, opts: &ClientOptions) -> Result<Client> {
        let scheme = if opts.insecure { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{registry}/"))
            .map_err(|e| Error::Usage(format!("registry {registry}: {e}")))?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("msb-registry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::limited(5));
        if let Some(path) = &opts.ca_cert {
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
            builder = builder.tls_certs_merge(certs);
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
        let res = self
            .send(Method::GET, self.url("v2/"), repository, access, |r| r)
            .await?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(self.unexpected("GET /v2/", res).await)
        }
    }

    /// The size of blob `digest` in `repository`, if it holds it.
    pub async fn head_blob(&self, repository: &str, digest: &Digest) -> Result<Option<u64>> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let res = self
            .send(Method::HEAD, url, repository, Access::Pull, |r| r)
            .await?;
        match res.status() {
            s if s.is_success() => Ok(Some(content_length(&res).unwrap_or(0))),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.unexpected(&format!("HEAD blob {digest}"), res).await),
        }
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
    /// at the end. Returns the bytes received.
    pub async fn get_blob_into(
        &self,
        repository: &str,
        digest: &Digest,
        size: u64,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<u64> {
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let mut res = self
            .send(Method::GET, url, repository, Access::Pull, |r| r)
            .await?;
        match res.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::NotFound {
                    what: "blob",
                    reference: format!("{}/{repository}@{digest}", self.registry),
                });
            }
            _ => return Err(self.unexpected(&format!("GET blob {digest}"), res).await),
        }
        let subject = format!("blob {digest}");
        if let Some(len) = content_length(&res)
            && len > size
        {
            return Err(super::format::malformed(
                &subject,
                format!("the registry sends {len} bytes; the manifest says {size}"),
            ));
        }
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        while let Some(piece) = res.chunk().await.map_err(|e| self.transfer(&subject, &e))? {
            got += piece.len() as u64;
            if got > size {
                return Err(super::format::malformed(
                    &subject,
                    format!("the registry sends more than the {size} bytes the manifest says"),
                ));
            }
            hasher.update(&piece);
            sink(&piece)?;
        }
        if got != size {
            return Err(self.remote(format!(
                "{subject}: connection ended after {got} of {size} bytes"
            )));
        }
        let found = Digest::from_bytes(hasher.finalize().into());
        if found != *digest {
            return Err(Error::Integrity {
                subject: format!("{}/{repository}@{digest}", self.registry),
                detail: format!("the registry served bytes whose digest is {found}"),
            });
        }
        Ok(got)
    }

    /// Bytes `start..start + len` of blob `digest` of `repository` (`size`
    /// bytes in all), by an HTTP range request; a registry that ignores
    /// the range is read through up to the end of the range. The caller
    /// checks what the bytes hold (the blob's digest cannot be).
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
        let url = self.url(&format!("v2/{repository}/blobs/{digest}"));
        let range = format!("bytes={start}-{}", start + len - 1);
        let mut res = self
            .send(Method::GET, url, repository, Access::Pull, |r| {
                r.header(reqwest::header::RANGE, range.as_str())
            })
            .await?;
        // 206: the range itself; 200 (Range ignored): the whole blob, read
        // through to the range's end. Only a 206 can say too much.
        let partial = res.status() == StatusCode::PARTIAL_CONTENT;
        let skip = match res.status() {
            StatusCode::PARTIAL_CONTENT => 0,
            StatusCode::OK => start,
            StatusCode::NOT_FOUND => {
                return Err(Error::NotFound {
                    what: "blob",
                    reference: format!("{}/{repository}@{digest}", self.registry),
                });
            }
            _ => return Err(self.unexpected(&format!("GET {subject}"), res).await),
        };
        // Checked here, not only on the pieces read: the last piece may end
        // exactly at the range, leaving the excess unread and unnoticed.
        if partial && content_length(&res).is_some_and(|l| l > len) {
            return Err(super::format::malformed(
                &subject,
                "the registry sends more than the range asked for".into(),
            ));
        }
        if partial
            && let Some(answered) = res
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
            && !answered.starts_with(&format!("bytes {start}-{}/", start + len - 1))
        {
            return Err(super::format::malformed(
                &subject,
                format!(
                    "the registry answers with {}, not the range asked for",
                    crate::model::text::escape(answered)
                ),
            ));
        }
        let mut body = Vec::with_capacity(len as usize);
        let mut seen = 0u64;
        while body.len() as u64 != len {
            let Some(piece) = res.chunk().await.map_err(|e| self.transfer(&subject, &e))? else {
                return Err(self.remote(format!("{subject}: connection ended early")));
            };
            let from = skip.saturating_sub(seen).min(piece.len() as u64) as usize;
            seen += piece.len() as u64;
            let want = (len - body.len() as u64) as usize;
            let take = &piece[from..];
            if partial && take.len() > want {
                return Err(super::format::malformed(
                    &subject,
                    "the registry sends more than the range asked for".into(),
                ));
            }
            body.extend_from_slice(&take[..take.len().min(want)]);
        }
        Ok(Bytes::from(body))
    }

    /// Mount blob `digest` into `repository` from `from` (same registry).
    /// `Ok(true)` when the registry mounted it; `Ok(false)` when it would
    /// not (the caller uploads instead).
    pub async fn mount_blob(&self, repository: &str, digest: &Digest, from: &str) -> Result<bool> {
        let mut url = self.url(&format!("v2/{repository}/blobs/uploads/"));
        url.query_pairs_mut()
            .append_pair("mount", &digest.to_string())
            .append_pair("from", from);
        let scope_from = format!("repository:{from}:pull");
        let res = self
            .send_scoped(
                Method::POST,
                url,
                &[&scope(repository, Access::Push), &scope_from],
                |r| r.header(CONTENT_LENGTH, 0),
            )
            .await?;
        match res.status() {
            StatusCode::CREATED => Ok(true),
            // 202: the registry opened an upload instead; leave it to expire.
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.unexpected(&format!("mount blob {digest}"), res).await),
        }
    }

    /// Upload `body` as blob `digest` of `repository` in one request
    /// (POST for a session, PUT with the digest).
    pub async fn put_blob(&self, repository: &str, digest: &Digest, body: Bytes) -> Result<()> {
        let location = self.start_upload(repository).await?;
        let url = with_digest(location, digest);
        let len = body.len();
        let res = self
            .send(Method::PUT, url, repository, Access::Push, move |r| {
                r.header(CONTENT_TYPE, "application/octet-stream")
                    .header(CONTENT_LENGTH, len)
                    .body(body.clone())
            })
            .await?;
        self.finish_upload(digest, res).await
    }

    /// Upload the file `path` (`len` bytes, digest `digest`) as a blob,
    /// streaming it.
    pub async fn put_blob_file(
        &self,
        repository: &str,
        digest: &Digest,
        path: &Path,
        len: u64,
    ) -> Result<()> {
        let location = self.start_upload(repository).await?;
        let url = with_digest(location, digest);
        let file = tokio::fs::File::from_std(crate::store::files::open_regular(path)?);
        let stream = file_stream(file);
        let req = self
            .http
            .put(url.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        let res = self
            .authorize(req, &url, &[&scope(repository, Access::Push)])
            .send()
            .await
            .map_err(|e| self.transfer(&format!("upload of {}", path.display()), &e))?;
        self.finish_upload(digest, res).await
    }

    async fn start_upload(&self, repository: &str) -> Result<Url> {
        let url = self.url(&format!("v2/{repository}/blobs/uploads/"));
        let res = self
            .send(Method::POST, url.clone(), repository, Access::Push, |r| {
                r.header(CONTENT_LENGTH, 0)
            })
            .await?;
        if res.status() != StatusCode::ACCEPTED {
            return Err(self.unexpected("start blob upload", res).await);
        }
        let location = res
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.remote("blob upload: no Location in the registry's answer"))?;
        url.join(location)
            .map_err(|e| self.remote(format!("blob upload: bad Location: {e}")))
    }

    async fn finish_upload(&self, digest: &Digest, res: Response) -> Result<()> {
        if res.status() == StatusCode::CREATED || res.status().is_success() {
            Ok(())
        } else {
            Err(self.unexpected(&format!("upload blob {digest}"), res).await)
        }
    }

    /// The digest and size of manifest `reference` (tag or digest) of
    /// `repository`, if it holds one.
    pub async fn head_manifest(&self, repository: &str, reference: &str) -> Result<Option<Found>> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let res = self
            .send(Method::HEAD, url, repository, Access::Pull, |r| {
                r.header(ACCEPT, super::format::OCI_MANIFEST)
            })
            .await?;
        match res.status() {
            s if s.is_success() => Ok(Some(Found {
                digest: res
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
                size: content_length(&res).unwrap_or(0),
            })),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self
                .unexpected(&format!("HEAD manifest {reference}"), res)
                .await),
        }
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
        let mut res = self
            .send(Method::GET, url, repository, Access::Pull, |r| {
                r.header(ACCEPT, super::format::OCI_MANIFEST)
            })
            .await?;
        match res.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => {
                return Err(self
                    .unexpected(&format!("GET manifest {reference}"), res)
                    .await);
            }
        }
        let subject = format!(
            "manifest {}",
            super::reference::joined(&self.registry, repository, reference)
        );
        let max = super::format::MAX_OCI_MANIFEST_BYTES;
        let too_large =
            || super::format::malformed(&subject, format!("manifest larger than {max} bytes"));
        if content_length(&res).is_some_and(|l| l > max) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(piece) = res.chunk().await.map_err(|e| self.transfer(&subject, &e))? {
            if (body.len() + piece.len()) as u64 > max {
                return Err(too_large());
            }
            body.extend_from_slice(&piece);
        }
        let digest = Digest::of(&body);
        if let Ok(asked) = reference.parse::<Digest>()
            && asked != digest
        {
            return Err(Error::Integrity {
                subject,
                detail: format!("the registry served a manifest whose digest is {digest}"),
            });
        }
        if let Some(said) = res_digest_header(&res)
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

    /// Store `body` (an OCI image manifest) as `reference` (tag or digest) of `repository`.
    pub async fn put_manifest(&self, repository: &str, reference: &str, body: Bytes) -> Result<()> {
        let url = self.url(&format!("v2/{repository}/manifests/{reference}"));
        let res = self
            .send(Method::PUT, url, repository, Access::Push, move |r| {
                r.header(CONTENT_TYPE, super::format::OCI_MANIFEST)
                    .body(body.clone())
            })
            .await?;
        if res.status().is_success() {
            Ok(())
        } else {
            Err(self
                .unexpected(&format!("PUT manifest {reference}"), res)
                .await)
        }
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        repository: &str,
        access: Access,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        self.send_scoped(method, url, &[&scope(repository, access)], build)
            .await
    }

    /// Send a request, answering the registry's auth challenge once, and
    /// retrying a request that could not connect or was cut off.
    async fn send_scoped(
        &self,
        method: Method,
        url: Url,
        scopes: &[&str],
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response> {
        let mut challenged = false;
        let mut attempt = 0;
        if let Some((realm, service)) = self.bearer_without_token(scopes) {
            let token = self.fetch_token(&realm, service.as_deref(), scopes).await?;
            let mut auth = self.auth.lock().expect("auth state lock");
            auth.tokens.insert(scopes.join(" "), token);
        }
        loop {
            attempt += 1;
            let req = self.authorize(
                build(self.http.request(method.clone(), url.clone())),
                &url,
                scopes,
            );
            let res = match req.send().await {
                Ok(res) => res,
                // A refused certificate is refused again: no retry.
                Err(e)
                    if attempt < ATTEMPTS
                        && (e.is_connect() || e.is_request())
                        && !chain(&e).contains("certificate")
                        && !chain(&e).contains("InvalidContentType") =>
                {
                    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                    continue;
                }
                Err(e) => {
                    return Err(self.transfer(&format!("{method} {}", url.path()), &e));
                }
            };
            match res.status() {
                // Another host's challenge (an upload Location elsewhere)
                // is not answered with our credentials.
                StatusCode::UNAUTHORIZED if !challenged && self.is_registry(&url) => {
                    challenged = true;
                    let challenge = res
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.answer(&challenge, scopes).await?;
                    attempt = 0;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let said = error_text(res).await;
                    return Err(Error::RemoteAuth {
                        registry: self.registry.clone(),
                        detail: if self.credentials.is_anonymous() {
                            format!(
                                "{said}; the registry wants credentials: give --username and --password-stdin, or `docker login {}`",
                                self.registry
                            )
                        } else {
                            format!("{said}; the credentials given were refused")
                        },
                    });
                }
                _ => return Ok(res),
            }
        }
    }

    /// The token service to ask, when the registry uses bearer tokens and
    /// we hold none for `scopes` yet (a new scope costs no extra 401).
    fn bearer_without_token(&self, scopes: &[&str]) -> Option<(String, Option<String>)> {
        let auth = self.auth.lock().expect("auth state lock");
        match &auth.scheme {
            Scheme::Bearer { realm, service } if !auth.tokens.contains_key(&scopes.join(" ")) => {
                Some((realm.clone(), service.clone()))
            }
            _ => None,
        }
    }

    /// Whether `url` is on the registry itself (scheme, host and port):
    /// credentials and tokens go nowhere else.
    fn is_registry(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// `req` (to `url`) with the Authorization the registry asked for, if
    /// any, and only when `url` is on the registry: a Location naming
    /// another host gets none, as a redirect there gets none.
    fn authorize(&self, req: RequestBuilder, url: &Url, scopes: &[&str]) -> RequestBuilder {
        if !self.is_registry(url) {
            return req;
        }
        let auth = self.auth.lock().expect("auth state lock");
        match (&auth.scheme, &self.credentials) {
            (Scheme::Basic, Credentials::Basic { username, password }) => {
                req.basic_auth(username, Some(password))
            }
            (Scheme::Bearer { .. }, _) => match auth.tokens.get(&scopes.join(" ")) {
                Some(token) => req.bearer_auth(token),
                None => req,
            },
            _ => req,
        }
    }

    /// Take the registry's challenge: remember basic, or fetch a token.
    async fn answer(&self, challenge: &str, scopes: &[&str]) -> Result<()> {
        let (kind, params) = parse_challenge(challenge);
        match kind.to_ascii_lowercase().as_str() {
            "basic" => {
                if !matches!(self.credentials, Credentials::Basic { .. }) {
                    return Err(Error::RemoteAuth {
                        registry: self.registry.clone(),
                        detail: format!(
                            "the registry wants a user name and password: give --username and --password-stdin, or `docker login {}`",
                            self.registry
                        ),
                    });
                }
                self.auth.lock().expect("auth state lock").scheme = Scheme::Basic;
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .cloned()
                    .ok_or_else(|| self.remote("a Bearer challenge without a realm"))?;
                let service = params.get("service").cloned();
                let token = self.fetch_token(&realm, service.as_deref(), scopes).await?;
                let mut auth = self.auth.lock().expect("auth state lock");
                auth.scheme = Scheme::Bearer { realm, service };
                auth.tokens.insert(scopes.join(" "), token);
                Ok(())
            }
            _ => Err(Error::RemoteAuth {
                registry: self.registry.clone(),
                detail: format!(
                    "unsupported authentication challenge {}",
                    crate::model::text::escape(&kind)
                ),
            }),
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
    ) -> Result<String> {
        let mut url = Url::parse(realm).map_err(|e| {
            self.remote(format!(
                "token realm {}: {e}",
                crate::model::text::escape(realm)
            ))
        })?;
        if url.scheme() != "https" && !(url.scheme() == "http" && self.base.scheme() == "http") {
            return Err(self.remote(format!(
                "token realm {} is not HTTPS; credentials are not sent there",
                crate::model::text::escape(realm)
            )));
        }
        let req = match &self.credentials {
            Credentials::IdentityToken(refresh) => {
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", refresh.clone()),
                    ("client_id", "msb-registry".to_string()),
                    ("scope", scopes.join(" ")),
                ];
                if let Some(s) = service {
                    form.push(("service", s.to_string()));
                }
                let body = url::form_urlencoded_pairs(&form);
                self.http
                    .post(url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body)
            }
            other => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes {
                        q.append_pair("scope", s);
                    }
                    q.append_pair("client_id", "msb-registry");
                }
                let req = self.http.get(url);
                match other {
                    Credentials::Basic { username, password } => {
                        req.basic_auth(username, Some(password))
                    }
                    _ => req,
                }
            }
        };
        let mut res = req
            .send()
            .await
            .map_err(|e| self.transfer("token request", &e))?;
        if res.status() == StatusCode::UNAUTHORIZED || res.status() == StatusCode::FORBIDDEN {
            let said = error_text(res).await;
            let hint = if self.credentials.is_anonymous() {
                format!(
                    "; the registry wants credentials: give --username and --password-stdin, or `docker login {}`",
                    self.registry
                )
            } else {
                String::new()
            };
            return Err(Error::RemoteAuth {
                registry: self.registry.clone(),
                detail: format!("the token service refused: {said}{hint}"),
            });
        }
        if !res.status().is_success() {
            return Err(self.unexpected("token request", res).await);
        }
        let mut body = Vec::new();
        while let Some(piece) = res.chunk().await.map_err(|e| self.transfer("token", &e))? {
            body.extend_from_slice(&piece);
            if body.len() as u64 > MAX_SMALL_BODY {
                return Err(self.remote("token response larger than 64 KiB"));
            }
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            self.remote("the token service answered with something that is not a token")
        })?;
        answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.remote("the token service answered without a token"))
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

fn content_length(res: &Response) -> Option<u64> {
    res.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn res_digest_header(res: &Response) -> Option<Digest> {
    res.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn with_digest(mut location: Url, digest: &Digest) -> Url {
    location
        .query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    location
}

/// What an error response says, from the distribution error body when it
/// has one: `CODE: message`, one line, escaped, bounded.
async fn error_text(mut res: Response) -> String {
    let status = res.status();
    let mut body = Vec::new();
    while let Ok(Some(piece)) = res.chunk().await {
        body.extend_from_slice(&piece);
        if body.len() as u64 > MAX_SMALL_BODY {
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    let text = match serde_json::from_slice::<Errors>(&body) {
        Ok(e) if !e.errors.is_empty() => e
            .errors
            .iter()
            .map(|i| {
                format!(
                    "{}: {}",
                    i.code.as_deref().unwrap_or("ERROR"),
                    i.message.as_deref().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        _ => format!("{status}"),
    };
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let cut: String = one_line.chars().take(300).collect();
    crate::model::text::escape(&cut).into_owned()
}

/// The error and its causes, on one line (reqwest hides the interesting
/// part — refused, reset, certificate — in the sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Split `Bearer realm="…",service="…"` into its scheme and parameters.
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (kind, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_string());
        rest = tail.trim_start_matches(',').trim();
    }
    (kind.to_string(), params)
}

/// A file as a stream of 256 KiB pieces, for a streaming upload body.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

mod url {
    /// `application/x-www-form-urlencoded` of `pairs`.
    pub fn form_urlencoded_pairs(pairs: &[(&str, String)]) -> String {
        let mut s = reqwest::Url::parse("x:/").expect("static URL");
        {
            let mut q = s.query_pairs_mut();
            for (k, v) in pairs {
                q.append_pair(k, v);
            }
        }
        s.query().unwrap_or("").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_docker_sends_them() {
        let (kind, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(kind, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (kind, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(kind, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }
}
