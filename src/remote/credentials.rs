//! Credentials for a registry, found the way docker finds them: given on
//! the command line, else the docker config (`$DOCKER_CONFIG/config.json`
//! or `~/.docker/config.json`: `auths`, `credHelpers`, `credsStore`), else
//! none. A secret is never printed, logged or stored.

use std::fmt;

use docker_credential::{CredentialRetrievalError, DockerCredential};

use crate::model::error::{Error, Result};

/// What to authenticate with.
#[derive(Clone, Default)]
pub enum Credentials {
    /// Nothing: anonymous access.
    #[default]
    Anonymous,
    /// A user name and password (or personal access token).
    Basic {
        /// The user name.
        username: String,
        /// The password; never shown.
        password: String,
    },
    /// A docker identity token: an OAuth2 refresh token for the token service.
    IdentityToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Whether there is anything to present.
    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credentials::Anonymous)
    }

    /// The credentials the docker configuration holds for `registry`
    /// (`host[:port]`; Docker Hub's under docker's key for it,
    /// `https://index.docker.io/v1/`); anonymous when it has none or there
    /// is no config.
    pub fn from_docker_config(registry: &str) -> Result<Credentials> {
        let refused = |detail: String| Error::RemoteAuth {
            registry: registry.to_string(),
            detail,
        };
        match docker_credential::get_credential(super::reference::credentials_key(registry)) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                Ok(Credentials::Basic { username, password })
            }
            Ok(DockerCredential::IdentityToken(token)) => Ok(Credentials::IdentityToken(token)),
            Err(
                CredentialRetrievalError::NoCredentialConfigured
                | CredentialRetrievalError::ConfigNotFound,
            ) => Ok(Credentials::Anonymous),
            Err(CredentialRetrievalError::ConfigReadError) => match config_path() {
                Some(path) if path.exists() => Err(refused(format!(
                    "cannot read the docker config {}",
                    path.display()
                ))),
                _ => Ok(Credentials::Anonymous),
            },
            // The helper's stdout may hold a secret: name the helper and
            // the first line of what it said on stderr, nothing more.
            Err(CredentialRetrievalError::HelperFailure { helper, stderr, .. }) => {
                // `helper` is the program's full name, docker-credential-….
                Err(refused(format!(
                    "credential helper {helper} failed: {}",
                    crate::model::text::escape(stderr.lines().next().unwrap_or("").trim())
                )))
            }
            Err(e) => Err(refused(format!("docker config: {e}"))),
        }
    }
}

/// The docker config file docker would read.
fn config_path() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".docker")))?;
    Some(dir.join("config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        let c = Credentials::Basic {
            username: "ann".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credentials::IdentityToken("tok".into())).contains("tok"));
    }
}
