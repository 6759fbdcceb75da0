//! The documentation stays true: every `msb-registry` command of the `sh`
//! blocks in README.md and docs/*.md runs against a registry the demo
//! built, every relative link and `#anchor` points at something that
//! exists, every source path named in code exists, and docs/library.md's
//! program is the crate's doctest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::{Reg, Run, bin};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, then every page under docs/ by name.
fn pages_in(repo: &Path) -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo.join("docs"))
        .map(|dir| {
            dir.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "md"))
                .collect()
        })
        .unwrap_or_default();
    docs.sort();
    std::iter::once(repo.join("README.md"))
        .chain(docs)
        .collect()
}

/// `docs/oci.md` for a page of the repository.
fn name_of(repo: &Path, page: &Path) -> String {
    page.strip_prefix(repo).unwrap().display().to_string()
}

// ------------------------------------------------------------ sh blocks

/// A `sh` block of a page: its commands, or why it is not run.
struct Block {
    line: usize,
    skip: Option<String>,
    commands: Vec<String>,
}

/// Every fenced `sh` block, with its `msb-registry` commands (a command
/// runs on while a quote is open; `# comments` outside quotes are dropped).
fn sh_blocks(text: &str) -> Vec<Block> {
    let lines: Vec<&str> = text.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```sh" {
            i += 1;
            continue;
        }
        let skip = lines[..i]
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().strip_prefix("<!-- not run:"))
            .map(|r| r.trim_end_matches("-->").trim().to_string());
        let mut block = Block {
            line: i + 1,
            skip,
            commands: Vec::new(),
        };
        i += 1;
        let mut current: Option<String> = None;
        while i < lines.len() && lines[i].trim() != "```" {
            let line = lines[i];
            match current.take() {
                Some(mut cmd) => {
                    cmd.push('\n');
                    cmd.push_str(line);
                    current = Some(cmd);
                }
                None if line.starts_with("msb-registry ") || line == "msb-registry" => {
                    current = Some(line.to_string());
                }
                None => {}
            }
            if let Some(cmd) = current.take() {
                match strip_comment(&cmd) {
                    Some(done) => block.commands.push(done),
                    None => current = Some(cmd),
                }
            }
            i += 1;
        }
        assert!(current.is_none(), "line {}: unclosed quote", block.line);
        blocks.push(block);
        i += 1;
    }
    blocks
}

/// The command without a trailing `# comment`, or None while a quote is open.
fn strip_comment(cmd: &str) -> Option<String> {
    let mut quote: Option<char> = None;
    for (at, c) in cmd.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') if cmd[..at].ends_with(' ') => return Some(cmd[..at].trim().into()),
            (None, _) => {}
        }
    }
    quote.is_none().then(|| cmd.trim().to_string())
}

#[test]
fn commands_are_extracted_across_lines_and_comments() {
    let text = "intro\n<!-- not run: needs a network -->\n```sh\nmsb-registry gc\n```\n\
                ```sh\ncargo test\nmsb-registry list   # every snapshot\nmsb-registry sql \"SELECT 1\n  # not a comment\n  FROM x\"\n```\n";
    let blocks = sh_blocks(text);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].skip.as_deref(), Some("needs a network"));
    assert_eq!(blocks[1].skip, None);
    assert_eq!(
        blocks[1].commands,
        [
            "msb-registry list",
            "msb-registry sql \"SELECT 1\n  # not a comment\n  FROM x\""
        ]
    );
}

/// Run the commands of one page, in order, in a fresh copy of the demo's
/// registry (`registry`): each must exit 0. Returns how many ran.
fn run_page(name: &str, blocks: &[Block], registry: &Path, dir: &Path) -> usize {
    let (root, work, tmp) = (dir.join("registry"), dir.join("work"), dir.join("tmp"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    let copied = Command::new("cp")
        .args(["-a", "--sparse=always"])
        .arg(registry)
        .arg(&root)
        .status()
        .unwrap();
    assert!(copied.success(), "copying the demo registry for {name}");
    // `msb-registry` on PATH is the binary under test.
    let bin_dir = Path::new(bin()).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    for block in blocks.iter().filter(|b| b.skip.is_none()) {
        for cmd in &block.commands {
            let out = Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(&work)
                .env("PATH", &path)
                .env("MSB_REGISTRY_ROOT", &root)
                .env("TMPDIR", &tmp)
                .env_remove("MSB_FAILPOINT")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let run = Run::from(out);
            assert_eq!(
                run.code, 0,
                "{name}, block at line {}: `{cmd}` exited {}\nstdout: {}\nstderr: {}",
                block.line, run.code, run.stdout, run.stderr
            );
            ran += 1;
        }
    }
    let verify = Command::new(bin())
        .arg("--root")
        .arg(&root)
        .arg("verify")
        .output()
        .unwrap();
    Run::from(verify).ok();
    ran
}

/// Every `msb-registry` command in the `sh` blocks of README.md and of
/// each docs/ page runs, in order, and exits 0: each page starts from a
/// fresh copy of the registry `demo` built (blocks marked
/// `<!-- not run: … -->` are skipped, and there must be a reason).
#[test]
fn every_documented_command_runs_against_the_demo_registry() {
    let scratch = Reg::new();
    let demo: Value = Run::from(
        Command::new(bin())
            .args(["demo", "--json", "-q", "--root"])
            .arg(scratch.path("demo"))
            .output()
            .unwrap(),
    )
    .ok()
    .json();
    let registry = PathBuf::from(demo["imported_root"].as_str().unwrap());
    let mut ran = BTreeMap::new();
    for page in pages_in(repo()) {
        let name = name_of(repo(), &page);
        let blocks = sh_blocks(&std::fs::read_to_string(&page).unwrap());
        for block in &blocks {
            if let Some(reason) = &block.skip {
                assert!(!reason.is_empty(), "{name} line {}: say why", block.line);
            }
        }
        if blocks
            .iter()
            .all(|b| b.skip.is_some() || b.commands.is_empty())
        {
            continue;
        }
        let dir = scratch.path(&format!("pages/{}", name.replace('/', "-")));
        ran.insert(name.clone(), run_page(&name, &blocks, &registry, &dir));
    }
    eprintln!("commands run per page: {ran:?}");
    assert!(ran["README.md"] >= 15, "only {ran:?} README commands");
    assert!(ran.len() >= 6, "commands found on only {ran:?}");
}

// ------------------------------------------------------------ links

/// GitHub's anchor for a heading: lowercase, markup and punctuation
/// dropped (`-` and `_` kept), each space a `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The page's lines outside fenced code blocks, with their numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The anchors of a page's headings; a repeated heading gets `-1`, `-2`, …
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(match *n {
            0 => base.clone(),
            k => format!("{base}-{k}"),
        });
        *n += 1;
    }
    out
}

/// A line with its `code spans` cut out, and the spans.
fn split_code(line: &str) -> (String, Vec<&str>) {
    let mut text = String::new();
    let mut spans = Vec::new();
    let mut parts = line.split('`');
    if let Some(first) = parts.next() {
        text.push_str(first);
    }
    let rest: Vec<&str> = parts.collect();
    for pair in rest.chunks(2) {
        if pair.len() == 2 {
            spans.push(pair[0]);
            text.push_str(pair[1]);
        } else {
            text.push('`');
            text.push_str(pair[0]);
        }
    }
    (text, spans)
}

/// The targets of the inline links `[text](target)` of a line.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(['<', '>']).to_string());
        rest = &after[end..];
    }
    out
}

/// Every broken relative link, `#anchor` and named source path of `pages`,
/// as `page:line: what`.
fn broken_links(repo: &Path, pages: &[PathBuf]) -> Vec<String> {
    let mut problems = Vec::new();
    for page in pages {
        let name = name_of(repo, page);
        let text = std::fs::read_to_string(page).unwrap();
        for (n, line) in prose(&text) {
            let (plain, spans) = split_code(line);
            for target in link_targets(&plain) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                if let Err(why) = resolve(page, &text, &target) {
                    problems.push(format!("{name}:{n}: ({target}) {why}"));
                }
            }
            for span in spans {
                let source = span.starts_with("src/") || span.starts_with("tests/");
                let literal = !span.contains([' ', '*', '<', '{', '…']);
                if source && literal && !repo.join(span).exists() {
                    problems.push(format!("{name}:{n}: `{span}` does not exist"));
                }
            }
        }
    }
    problems
}

/// Whether a link's file exists and, for `#anchor`, a heading of it has
/// that anchor; `text` is the linking page's own.
fn resolve(page: &Path, text: &str, target: &str) -> Result<(), String> {
    let (file, anchor) = match target.split_once('#') {
        Some((file, anchor)) => (file, Some(anchor)),
        None => (target, None),
    };
    let path = page.parent().unwrap().join(file);
    if !file.is_empty() && !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    let Some(anchor) = anchor else {
        return Ok(());
    };
    let target_text = if file.is_empty() {
        text.to_string()
    } else {
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?
    };
    if anchors(&target_text).contains(anchor) {
        Ok(())
    } else {
        Err(format!("no heading with anchor #{anchor}"))
    }
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let pages = pages_in(repo());
    assert!(pages.len() > 10, "{pages:?}");
    let problems = broken_links(repo(), &pages);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The checker itself: GitHub's slugs, and a broken file, anchor and
/// source path are each found while good ones pass.
#[test]
fn the_link_checker_finds_broken_links_and_anchors() {
    assert_eq!(slug("`--json` shapes"), "--json-shapes");
    assert_eq!(
        slug("Push and pull: OCI registries"),
        "push-and-pull-oci-registries"
    );
    assert_eq!(
        slug("microsandbox's view of its snapshots"),
        "microsandboxs-view-of-its-snapshots"
    );
    assert_eq!(slug("The chunk index and `du`"), "the-chunk-index-and-du");
    let scratch = Reg::new();
    let dir = scratch.path("repo");
    std::fs::create_dir_all(dir.join("docs")).unwrap();
    std::fs::write(
        dir.join("README.md"),
        "# Top\n\n## Top\n\nSee [a](docs/a.md#the-part), [b](docs/b.md), [c](docs/a.md#nope),\n\
         [d](#top-1), [e](#top-2), [f](https://example.com/x.md), [h](#not-a-heading), `src/gone.rs`,\n\
         `[g](nope.md)`.\n\
         ```sh\n# Not a heading\n```\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("docs/a.md"),
        "# A\n\n## The part\n\n[back](../README.md#top)\n",
    )
    .unwrap();
    let problems = broken_links(&dir, &pages_in(&dir));
    let missing = dir.join("docs/b.md");
    let expected = [
        format!(
            "README.md:5: (docs/b.md) {} does not exist",
            missing.display()
        ),
        "README.md:5: (docs/a.md#nope) no heading with anchor #nope".to_string(),
        "README.md:6: (#top-2) no heading with anchor #top-2".to_string(),
        "README.md:6: (#not-a-heading) no heading with anchor #not-a-heading".to_string(),
        "README.md:6: `src/gone.rs` does not exist".to_string(),
    ];
    assert_eq!(problems, expected);
}

// ------------------------------------------------------------ the library page

/// docs/library.md's Rust program is the crate's doctest, line for line
/// (the doctest hides `fn main` and its `Ok(())` behind `# `).
#[test]
fn the_library_page_shows_the_crate_doctest() {
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).unwrap();
    let doctest: Vec<String> = lib
        .lines()
        .map_while(|l| l.strip_prefix("//!"))
        .skip_while(|l| l.trim() != "```")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .map(|l| l.trim().trim_start_matches("# ").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let page = std::fs::read_to_string(repo().join("docs/library.md")).unwrap();
    let shown: Vec<String> = page
        .lines()
        .skip_while(|l| l.trim() != "```rust")
        .skip(1)
        .take_while(|l| l.trim() != "```")
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(doctest.len() > 20, "{doctest:?}");
    assert_eq!(shown, doctest);
}
