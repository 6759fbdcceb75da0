//! Docker's auth flows for the client: basic credentials, and bearer
//! tokens from the registry's token service (per repository scope,
//! fetched once), sent only to the registry itself.

use std::collections::HashMap;

use reqwest::header::CONTENT_TYPE;
use reqwest::{RequestBuilder, Response, StatusCode, Url};

use super::body::{error_text, read_body};
use super::{Client, MAX_SMALL_BODY};
use crate::model::error::Error;
use crate::remote::credentials::Credentials;
use crate::remote::deadline::Activity;
use crate::remote::retry::{Fail, is_transient};

#[derive(Debug, Clone, Default)]
pub(super) enum Scheme {
    #[default]
    Unknown,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Default)]
pub(super) struct AuthState {
    scheme: Scheme,
    tokens: HashMap<String, String>,
}

impl Client {
    /// A token for `scopes` before the request, when the registry uses
    /// bearer tokens and we hold none for them yet.
    pub(super) async fn token_ahead(&self, scopes: &[&str]) -> Result<(), Fail> {
        if let Some((realm, service)) = self.bearer_without_token(scopes) {
            let token = self.fetch_token(&realm, service.as_deref(), scopes).await?;
            let mut auth = self.auth.lock().expect("auth state lock");
            auth.tokens.insert(scopes.join(" "), token);
        }
        Ok(())
    }

    /// The token service to ask, when the registry uses bearer tokens and
    /// we hold none for `scopes` yet (a new scope costs no extra 401).
    pub(super) fn bearer_without_token(&self, scopes: &[&str]) -> Option<(String, Option<String>)> {
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
    pub(super) fn is_registry(&self, url: &Url) -> bool {
        url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default()
    }

    /// `req` (to `url`) with the Authorization the registry asked for, if
    /// any, and only when `url` is on the registry: a Location naming
    /// another host gets none, as a redirect there gets none.
    pub(super) fn authorize(
        &self,
        req: RequestBuilder,
        url: &Url,
        scopes: &[&str],
    ) -> RequestBuilder {
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
    pub(super) async fn answer(
        &self,
        challenge: &str,
        scopes: &[&str],
    ) -> std::result::Result<(), Fail> {
        let (kind, params) = parse_challenge(challenge);
        match kind.to_ascii_lowercase().as_str() {
            "basic" => {
                if !matches!(self.credentials, Credentials::Basic { .. }) {
                    return Err(Fail::Stop(Error::RemoteAuth {
                        registry: self.registry.clone(),
                        detail: format!(
                            "the registry wants a user name and password: give --username and --password-stdin, or `docker login {}`",
                            self.registry
                        ),
                    }));
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
            _ => Err(Fail::Stop(Error::RemoteAuth {
                registry: self.registry.clone(),
                detail: format!(
                    "unsupported authentication challenge {}",
                    crate::model::text::escape(&kind)
                ),
            })),
        }
    }

    /// A token for `scopes` from the token service at `realm`.
    pub(super) async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
    ) -> std::result::Result<String, Fail> {
        let url = Url::parse(realm).map_err(|e| {
            self.remote(format!(
                "token realm {}: {e}",
                crate::model::text::escape(realm)
            ))
        })?;
        if url.scheme() != "https" && !(url.scheme() == "http" && self.base.scheme() == "http") {
            return Err(self
                .remote(format!(
                    "token realm {} is not HTTPS; credentials are not sent there",
                    crate::model::text::escape(realm)
                ))
                .into());
        }
        let res = self
            .token_request(url, service, scopes)
            .send()
            .await
            .map_err(|e| self.cut_off("token request", &e))?;
        match res.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(self.token_refused(res).await.into())
            }
            s if is_transient(s) => Err(self.transient("token request", res).await),
            s if !s.is_success() => Err(self.unexpected("token request", res).await.into()),
            _ => self.read_token(res).await,
        }
    }

    /// Docker's token request: an OAuth2 refresh-token POST for an
    /// identity token, else a GET with basic credentials when we have them.
    fn token_request(
        &self,
        mut url: Url,
        service: Option<&str>,
        scopes: &[&str],
    ) -> RequestBuilder {
        if let Credentials::IdentityToken(refresh) = &self.credentials {
            let mut form = vec![
                ("grant_type", "refresh_token".to_string()),
                ("refresh_token", refresh.clone()),
                ("client_id", "msb-registry".to_string()),
                ("scope", scopes.join(" ")),
            ];
            if let Some(s) = service {
                form.push(("service", s.to_string()));
            }
            return self
                .http
                .post(url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(url::form_urlencoded_pairs(&form));
        }
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
        match &self.credentials {
            Credentials::Basic { username, password } => req.basic_auth(username, Some(password)),
            _ => req,
        }
    }

    async fn token_refused(&self, res: Response) -> Error {
        let said = error_text(res).await;
        let hint = if self.credentials.is_anonymous() {
            format!(
                "; the registry wants credentials: give --username and --password-stdin, or `docker login {}`",
                self.registry
            )
        } else {
            String::new()
        };
        Error::RemoteAuth {
            registry: self.registry.clone(),
            detail: format!("the token service refused: {said}{hint}"),
        }
    }

    /// The token in the token service's answer (at most 64 KiB of JSON).
    async fn read_token(&self, res: Response) -> std::result::Result<String, Fail> {
        let mut body = Vec::new();
        read_body(res, 0, None, false, &Activity::default(), &mut |piece| {
            body.extend_from_slice(piece);
            if body.len() as u64 > MAX_SMALL_BODY {
                return Err(self.remote("token response larger than 64 KiB").into());
            }
            Ok(())
        })
        .await
        .map_err(|f| self.fail_in("token", f))?;
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            self.remote("the token service answered with something that is not a token")
        })?;
        Ok(answer
            .token
            .or(answer.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.remote("the token service answered without a token"))?)
    }
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
