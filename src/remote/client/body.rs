//! Bodies for the client: reading a response's (bounded by the caller,
//! counted for the deadline), sending ours in small counted pieces, and
//! an error answer's text.

use bytes::Bytes;
use reqwest::Response;
use reqwest::header::CONTENT_LENGTH;

use super::{MAX_SMALL_BODY, PIECE};
use crate::model::digest::Digest;
use crate::model::error::Error;
use crate::remote::deadline::Activity;
use crate::remote::retry::Fail;

/// What an error response says, from the distribution error body when it
/// has one: `CODE: message`, one line, escaped, bounded.
pub(super) async fn error_text(mut res: Response) -> String {
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
pub(super) fn chain(e: &dyn std::error::Error) -> String {
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

/// A failure while reading a body: the network's, or the reader's own.
pub(super) enum BodyFail {
    Net(reqwest::Error),
    Fail(Fail),
}

impl From<Fail> for BodyFail {
    fn from(f: Fail) -> Self {
        BodyFail::Fail(f)
    }
}

impl From<Error> for BodyFail {
    fn from(e: Error) -> Self {
        BodyFail::Fail(Fail::Stop(e))
    }
}

/// Read `res`'s body into `take`, counting it in `activity`: the first
/// `skip` bytes dropped, and when `stop_at` is given, no more than that
/// after them (`cut`: the last piece shortened to fit; else handed over
/// whole, for `take` to judge).
pub(super) async fn read_body(
    mut res: Response,
    skip: u64,
    stop_at: Option<u64>,
    cut: bool,
    activity: &Activity,
    take: &mut dyn FnMut(&[u8]) -> std::result::Result<(), BodyFail>,
) -> std::result::Result<(), BodyFail> {
    let (mut seen, mut given) = (0u64, 0u64);
    while stop_at.is_none_or(|n| given < n) {
        let Some(piece) = res.chunk().await.map_err(BodyFail::Net)? else {
            break;
        };
        activity.moved(piece.len());
        let from = skip.saturating_sub(seen).min(piece.len() as u64) as usize;
        seen += piece.len() as u64;
        let mut part = &piece[from..];
        if cut && let Some(n) = stop_at {
            part = &part[..part.len().min((n - given) as usize)];
        }
        given += part.len() as u64;
        take(part)?;
    }
    Ok(())
}

/// `body` as a stream of pieces, each counted in `activity` as it goes.
pub(super) fn pieces(
    body: Bytes,
    activity: Activity,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let n = body.len().div_ceil(PIECE);
    futures_util::stream::iter((0..n).map(move |i| {
        let piece = body.slice(i * PIECE..((i + 1) * PIECE).min(body.len()));
        activity.moved(piece.len());
        Ok(piece)
    }))
}

/// The file `path` as a stream of pieces, opened when first read, each
/// piece counted in `activity`.
pub(super) fn file_stream(
    path: std::path::PathBuf,
    activity: Activity,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    enum State {
        Closed(std::path::PathBuf),
        Open(tokio::fs::File),
    }
    futures_util::stream::unfold(Some(State::Closed(path)), move |state| {
        let activity = activity.clone();
        async move {
            let mut file = match state? {
                State::Open(file) => file,
                State::Closed(path) => match crate::store::files::open_regular(&path) {
                    Ok(file) => tokio::fs::File::from_std(file),
                    Err(e) => return Some((Err(std::io::Error::other(e.to_string())), None)),
                },
            };
            let mut buf = vec![0u8; PIECE];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    activity.moved(n);
                    Some((Ok(Bytes::from(buf)), Some(State::Open(file))))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

pub(super) fn content_length(res: &Response) -> Option<u64> {
    res.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

pub(super) fn res_digest_header(res: &Response) -> Option<Digest> {
    res.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}
