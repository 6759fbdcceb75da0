//! Text a terminal would interpret: the characters refused in names, labels
//! and file names, and the escaping every human-readable output applies to
//! what it prints (rows in the index may predate the refusal).

use std::borrow::Cow;

/// True for a character a terminal acts on instead of showing: C0 controls,
/// DEL, C1 controls (Unicode `Cc`), and the bidirectional marks, embeddings,
/// overrides and isolates that reorder what follows them, plus the line and
/// paragraph separators.
pub fn is_terminal_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
                | '\u{2028}' | '\u{2029}'
        )
}

/// True when `text` holds a character of [`is_terminal_control`].
pub fn has_terminal_control(text: &str) -> bool {
    text.chars().any(is_terminal_control)
}

/// `text` with every [`is_terminal_control`] character written as a Rust
/// escape (`\n`, `\u{1b}`, `\u{202e}`); other text, backslashes included, is
/// left as it is, so escaping twice changes nothing.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !has_terminal_control(text) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_terminal_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Characters of a name from outside (an archive member's path, a pax
/// keyword, a carried snapshot name) that a message quotes; the rest is
/// cut, so a 1 MB name never makes a 1 MB error line.
pub const SHOWN_NAME_CHARS: usize = 120;

/// How a message quotes a name read from outside: its bytes as UTF-8
/// (invalid sequences as U+FFFD), cut to [`SHOWN_NAME_CHARS`] characters
/// with the full length appended when longer, then [`escape`]d. The one
/// place every archive name printed in a refusal goes through.
pub fn shown_name(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(SHOWN_NAME_CHARS).collect();
    let mut out = escape(&head).into_owned();
    if chars.next().is_some() {
        out.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_names_are_cut_and_escaped() {
        assert_eq!(
            shown_name(b"sha256-0123456789abcdef/upper.ext4"),
            "sha256-0123456789abcdef/upper.ext4"
        );
        let long = vec![b'a'; 1 << 20];
        let shown = shown_name(&long);
        assert_eq!(
            shown,
            format!("{}… (1048576 bytes)", "a".repeat(SHOWN_NAME_CHARS))
        );
        assert_eq!(shown_name(b"a\x1b[2J\xffb\n"), "a\\u{1b}[2J\u{fffd}b\\n");
        let json = format!("{{\"key\": \"{}\"}}\n", "v".repeat(4000));
        let shown = shown_name(json.as_bytes());
        assert!(shown.len() < 200 && !shown.contains('\n'), "{shown}");
    }

    #[test]
    fn escapes_what_a_terminal_interprets_and_nothing_else() {
        assert_eq!(escape("plain é ✓ \\x"), "plain é ✓ \\x");
        assert_eq!(escape("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(escape("\x7f\u{9b}\t\n"), "\\u{7f}\\u{9b}\\t\\n");
        assert_eq!(escape("x\u{202e}gpj.exe"), "x\\u{202e}gpj.exe");
        assert_eq!(escape("\u{2067}"), "\\u{2067}");
        let once = escape("\x1b\n").into_owned();
        assert_eq!(escape(&once), once);
    }
}
