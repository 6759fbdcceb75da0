//! The trust file: OpenSSH's `allowed_signers` format (ssh-keygen(1),
//! "ALLOWED SIGNERS"), as git's `gpg.ssh.allowedSignersFile` uses it. One
//! line per key: `principals [options] keytype base64 [comment]`; `#`
//! comments and blank lines are skipped. Options are `namespaces="…"`,
//! `valid-after="…"` and `valid-before="…"`; `cert-authority` is refused
//! (only plain keys are trusted here), as is any other option. The parser
//! is strict and bounded: a line it cannot read refuses the whole file,
//! naming the line, since a trust file read in part trusts the wrong keys.

use ssh_key::{HashAlg, PublicKey};

/// The largest trust file read (1 MiB).
pub const MAX_TRUST_BYTES: u64 = 1 << 20;

/// The most keys one trust file may list.
pub const MAX_ENTRIES: usize = 10_000;

/// One key the trust file allows.
#[derive(Debug, Clone)]
pub struct AllowedSigner {
    /// The comma-separated principal patterns, as written.
    pub principals: String,
    /// The namespace patterns the key may sign in; `None` means any.
    pub namespaces: Option<Vec<String>>,
    /// Unix seconds before which the key is not yet valid.
    pub valid_after: Option<i64>,
    /// Unix seconds from which the key is no longer valid.
    pub valid_before: Option<i64>,
    /// The key.
    pub key: PublicKey,
    /// Its `SHA256:<base64>` fingerprint.
    pub fingerprint: String,
    /// The line it was read from (1-based).
    pub line: usize,
}

/// A parsed trust file.
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    /// Every key, in file order.
    pub entries: Vec<AllowedSigner>,
}

/// Why an entry does not allow a signature, for the refusal message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotAllowed {
    /// No line lists the key.
    UnknownKey,
    /// A line lists it, but not for this namespace.
    Namespace(String),
    /// The key's `valid-after` is still ahead.
    NotYetValid(String),
    /// The key's `valid-before` has passed.
    Expired(String),
    /// A line lists the key, but not for the principal the signer claimed.
    Principal(String),
}

impl std::fmt::Display for NotAllowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAllowed::UnknownKey => write!(f, "its key is not in the trust file"),
            NotAllowed::Namespace(p) => {
                write!(f, "the trust file allows {p} only other namespaces")
            }
            NotAllowed::NotYetValid(p) => {
                write!(f, "the key of {p} is not valid yet (valid-after)")
            }
            NotAllowed::Expired(p) => write!(f, "the key of {p} has expired (valid-before)"),
            NotAllowed::Principal(p) => {
                write!(
                    f,
                    "the trust file lists the key for {p}, not the claimed principal"
                )
            }
        }
    }
}

impl AllowedSigners {
    /// Parse a trust file's text. A refusal names the line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if entries.len() == MAX_ENTRIES {
                return Err(format!("more than {MAX_ENTRIES} keys"));
            }
            let entry = parse_line(line, i + 1).map_err(|why| format!("line {}: {why}", i + 1))?;
            entries.push(entry);
        }
        Ok(AllowedSigners { entries })
    }

    /// The principals allowed to sign with `key` in `namespace` at `now`
    /// (Unix seconds), claiming `claimed` when the signer named itself; or
    /// why none is, from the line that came closest.
    pub fn allow(
        &self,
        key: &PublicKey,
        namespace: &str,
        claimed: Option<&str>,
        now: i64,
    ) -> Result<String, NotAllowed> {
        let mut why = NotAllowed::UnknownKey;
        for e in self
            .entries
            .iter()
            .filter(|e| e.key.key_data() == key.key_data())
        {
            let refusal = if !e
                .namespaces
                .as_ref()
                .is_none_or(|n| n.iter().any(|p| matches_pattern(p, namespace)))
            {
                NotAllowed::Namespace(e.principals.clone())
            } else if e.valid_after.is_some_and(|t| now < t) {
                NotAllowed::NotYetValid(e.principals.clone())
            } else if e.valid_before.is_some_and(|t| now >= t) {
                NotAllowed::Expired(e.principals.clone())
            } else {
                match claimed {
                    Some(c) if !matches_list(&e.principals, c) => {
                        NotAllowed::Principal(e.principals.clone())
                    }
                    Some(c) => return Ok(c.to_string()),
                    None => return Ok(e.principals.clone()),
                }
            };
            why = refusal;
        }
        Err(why)
    }
}

/// One non-comment line.
fn parse_line(line: &str, number: usize) -> Result<AllowedSigner, String> {
    let (principals, rest) = take_field(line)?;
    if principals.is_empty() {
        return Err("no principals".into());
    }
    let principals = principals.trim_matches('"').to_string();
    let rest = rest.trim_start();
    let (options, key_text) = if starts_with_key_type(rest) {
        ("", rest)
    } else {
        let (options, after) = take_field(rest)?;
        (options, after.trim_start())
    };
    let mut entry = AllowedSigner {
        principals,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        fingerprint: String::new(),
        key: PublicKey::from_openssh(key_text).map_err(|e| format!("unreadable key: {e}"))?,
        line: number,
    };
    entry.fingerprint = entry.key.fingerprint(HashAlg::Sha256).to_string();
    for option in split_options(options)? {
        apply_option(&mut entry, option)?;
    }
    Ok(entry)
}

/// The key types OpenSSH writes (`ssh-…`, `ecdsa-…`, `sk-…`): where the
/// options field would be, a key begins instead.
fn starts_with_key_type(s: &str) -> bool {
    ["ssh-", "ecdsa-", "sk-"].iter().any(|p| s.starts_with(p))
}

/// The first whitespace-delimited field, where double quotes may hold spaces.
fn take_field(s: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return Ok((&s[..i], &s[i..])),
            _ => {}
        }
    }
    if quoted {
        Err("unterminated quote".into())
    } else {
        Ok((s, ""))
    }
}

/// Split `a,b="x,y",c` at the commas outside quotes.
fn split_options(s: &str) -> Result<Vec<&str>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    Ok(out)
}

fn apply_option(entry: &mut AllowedSigner, option: &str) -> Result<(), String> {
    let (name, value) = match option.split_once('=') {
        Some((n, v)) => (n, Some(unquote(v)?)),
        None => (option, None),
    };
    match (name.to_ascii_lowercase().as_str(), value) {
        ("namespaces", Some(v)) => {
            entry.namespaces = Some(v.split(',').map(str::to_string).collect());
        }
        ("valid-after", Some(v)) => entry.valid_after = Some(parse_time(v)?),
        ("valid-before", Some(v)) => entry.valid_before = Some(parse_time(v)?),
        ("cert-authority", None) => {
            return Err("cert-authority is not supported: list each signing key itself".into());
        }
        (other, _) => return Err(format!("unknown or malformed option {other:?}")),
    }
    Ok(())
}

fn unquote(v: &str) -> Result<&str, String> {
    match v.strip_prefix('"') {
        Some(inner) => inner
            .strip_suffix('"')
            .ok_or_else(|| format!("unterminated quote in {v:?}")),
        None => Ok(v),
    }
}

/// `YYYYMMDD[HHMM[SS]][Z]`, read as UTC (OpenSSH reads a time without `Z`
/// as local time; a registry shared by machines in several zones cannot).
pub fn parse_time(v: &str) -> Result<i64, String> {
    let digits = v.strip_suffix(['Z', 'z']).unwrap_or(v);
    let bad = || format!("time {v:?} is not YYYYMMDD[HHMM[SS]][Z]");
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| digits.get(r).map_or(Ok(0), str::parse::<u32>);
    let field = |r| num(r).map_err(|_| bad());
    let month = time::Month::try_from(field(4..6)? as u8).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(field(0..4)? as i32, month, field(6..8)? as u8)
        .map_err(|_| bad())?;
    let at = time::Time::from_hms(
        field(8..10)? as u8,
        field(10..12)? as u8,
        field(12..14)? as u8,
    )
    .map_err(|_| bad())?;
    Ok(time::PrimitiveDateTime::new(date, at)
        .assume_utc()
        .unix_timestamp())
}

/// Whether `name` matches one of the comma-separated patterns of `list`
/// (OpenSSH's `match_pattern_list`: `*`, `?`, and `!` to exclude).
pub fn matches_list(list: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        match pattern.strip_prefix('!') {
            Some(p) if matches_pattern(p, name) => return false,
            Some(_) => {}
            None => matched |= matches_pattern(pattern, name),
        }
    }
    matched
}

/// Glob match with `*` and `?`.
pub fn matches_pattern(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBVfxDMyFUGk4CeXqa6jOE4iVRIEFr1Ul4bDhvX8DzBN";

    #[test]
    fn reads_principals_options_and_key() {
        let text = format!(
            "# fleet\n\nalice@example.com,ops {KEY} laptop\n\"bob\" namespaces=\"git,msb-*\",valid-after=\"20300101\",valid-before=20310101Z {KEY}\n"
        );
        let a = AllowedSigners::parse(&text).unwrap();
        assert_eq!(a.entries.len(), 2);
        assert_eq!(a.entries[0].principals, "alice@example.com,ops");
        assert_eq!(a.entries[0].line, 3);
        assert!(a.entries[0].fingerprint.starts_with("SHA256:"));
        let b = &a.entries[1];
        assert_eq!(b.principals, "bob");
        assert_eq!(b.namespaces.as_deref().unwrap(), ["git", "msb-*"]);
        assert_eq!(b.valid_after, Some(1_893_456_000));
        assert_eq!(b.valid_before, Some(1_924_992_000));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for (text, why) in [
            (format!("alice cert-authority {KEY}"), "cert-authority"),
            (
                format!("alice no-touch-required {KEY}"),
                "unknown or malformed option",
            ),
            (
                format!("alice valid-after=\"2030\" {KEY}"),
                "is not YYYYMMDD",
            ),
            (
                format!("alice valid-after=\"20301301\" {KEY}"),
                "is not YYYYMMDD",
            ),
            (
                "alice ssh-ed25519 AAAAnotbase64".to_string(),
                "unreadable key",
            ),
            (
                format!("alice namespaces=\"git {KEY}"),
                "unterminated quote",
            ),
            ("alice".to_string(), "unreadable key"),
        ] {
            let e = AllowedSigners::parse(&text).unwrap_err();
            assert!(e.starts_with("line 1: ") && e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn allows_by_key_namespace_time_and_principal() {
        let text = format!(
            "alice namespaces=\"msb-registry-snapshot\",valid-after=20300101,valid-before=20310101 {KEY}"
        );
        let a = AllowedSigners::parse(&text).unwrap();
        let key = &a.entries[0].key;
        let inside = 1_900_000_000;
        assert_eq!(
            a.allow(key, "msb-registry-snapshot", None, inside),
            Ok("alice".into())
        );
        assert_eq!(
            a.allow(key, "git", None, inside),
            Err(NotAllowed::Namespace("alice".into()))
        );
        assert_eq!(
            a.allow(key, "msb-registry-snapshot", None, 1_800_000_000),
            Err(NotAllowed::NotYetValid("alice".into()))
        );
        assert_eq!(
            a.allow(key, "msb-registry-snapshot", None, 1_924_992_000),
            Err(NotAllowed::Expired("alice".into()))
        );
        assert_eq!(
            a.allow(key, "msb-registry-snapshot", Some("mallory"), inside),
            Err(NotAllowed::Principal("alice".into()))
        );
        let empty = AllowedSigners::default();
        assert_eq!(empty.allow(key, "x", None, 0), Err(NotAllowed::UnknownKey));
    }

    #[test]
    fn patterns() {
        assert!(matches_list(
            "*@example.com,!eve@example.com",
            "al@example.com"
        ));
        assert!(!matches_list(
            "*@example.com,!eve@example.com",
            "eve@example.com"
        ));
        assert!(matches_pattern("msb-?egistry-*", "msb-registry-snapshot"));
        assert!(!matches_pattern("git", "msb-registry-snapshot"));
    }
}
