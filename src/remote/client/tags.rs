//! Whether a repository lists any tag: one cheap request that tells a
//! push into a fresh repository it need not ask about each blob.

use reqwest::{Method, StatusCode};

use super::body::{error_text, read_body};
use super::{Access, Client, MAX_SMALL_BODY, scope};
use crate::model::error::{Error, Result};

impl Client {
    /// `Ok(true)` when `repository` lists no tag (the registry does not
    /// know it, or its tag list is empty); `Ok(false)` when it lists one,
    /// or answers in any way that does not say so plainly (listing refused
    /// to our credentials, as ECR does without `ecr:ListImages`, no such
    /// route, a body too large or not the distribution API's).
    pub async fn lists_no_tags(&self, repository: &str) -> Result<bool> {
        match self.list_tags(repository).await {
            Err(Error::RemoteAuth { .. }) => Ok(false),
            other => other,
        }
    }

    async fn list_tags(&self, repository: &str) -> Result<bool> {
        let mut url = self.url(&format!("v2/{repository}/tags/list"));
        url.query_pairs_mut().append_pair("n", "1");
        let scope = scope(repository, Access::Pull);
        let what = "GET tags/list";
        self.retrying(what, async |activity| {
            let res = self
                .send_once(&Method::GET, &url, &[&scope], &|r| r)
                .await?;
            match res.status() {
                // The distribution API's answer for a repository it does
                // not know; a bare 404 may be a registry without the route.
                StatusCode::NOT_FOUND => {
                    return Ok(error_text(res).await.starts_with("NAME_UNKNOWN:"));
                }
                StatusCode::OK => {}
                _ => return Ok(false),
            }
            // Read one byte past the bound: a longer list is not looked into.
            let mut body = Vec::new();
            read_body(
                res,
                0,
                Some(MAX_SMALL_BODY + 1),
                true,
                activity,
                &mut |piece| {
                    body.extend_from_slice(piece);
                    Ok(())
                },
            )
            .await
            .map_err(|f| self.fail_in(what, f))?;
            #[derive(serde::Deserialize)]
            struct Tags {
                tags: Option<Vec<String>>,
            }
            Ok(body.len() as u64 <= MAX_SMALL_BODY
                && serde_json::from_slice::<Tags>(&body)
                    .is_ok_and(|t| t.tags.is_none_or(|t| t.is_empty())))
        })
        .await
    }
}
