//! What of a manifest may leave the node (DESIGN invariant 7), and the unified diffs that
//! events carry.
//!
//! Redaction works from the parser's own tree, not from lines: the YAML parser knows the byte
//! span of every scalar in every form it reads (block and flow style, quoted or plain,
//! `value:` before or after `name:`, a value on the next line, block scalars), so the bytes
//! replaced are exactly the bytes the kubelet would read as a sensitive value. Replaced:
//! - the value of a sensitive flag in any `command`/`args` list of the pod (containers, init
//!   containers, probes' exec commands), written `--f=v`, `-f=v` (etcd takes one dash), or
//!   `--f v` with the value as the next item;
//! - the same inside `sh -c` scripts, split as the shell splits them (`--f='v'`, `--f v`),
//!   and every `NAME=value` assignment there;
//! - every `env[].value` and `httpHeaders[].value`, whatever they hold;
//! - every document after the first (the kubelet ignores them; we do not show them).
//!
//! It fails closed: a file that is not a Pod gets no text at all, and so does a pod where a
//! sensitive value has no source bytes of its own (a YAML alias copy), since the bytes that
//! hold it cannot be found. A script whose words do not map one to one onto the source is
//! replaced whole.

use std::ops::Range;

use similar::TextDiff;

use crate::manifest::pod::Pod;
use crate::manifest::shell;
use crate::manifest::yaml::{self, Node};

/// What a redacted value becomes.
pub const REDACTED: &str = "<redacted>";

/// Largest diff an event carries; longer ones are cut with a note.
pub const MAX_DIFF_BYTES: usize = 64 * 1024;

/// Whether a flag name (without dashes) can carry a secret: the catalogue marks some, and any
/// name that says password or secret is treated the same.
pub fn sensitive_by_name(name: &str) -> bool {
    (name.contains("password") || name.contains("secret"))
        && !name.ends_with("-file")
        && !name.ends_with("-dir")
}

/// Why a file's text is withheld from events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Withheld {
    /// Not a Pod manifest: its content is never shown (a key, a kubeconfig, anything else).
    #[error("not a pod manifest: {0}")]
    NotAManifest(String),
    /// A sensitive value whose source bytes the parser cannot place.
    #[error("a sensitive value at {0} has no source bytes of its own (YAML alias)")]
    Unplaced(String),
}

/// The text of a pod manifest with every sensitive value replaced by [`REDACTED`], or why no
/// text may be shown. `sensitive` says whether a flag name (without dashes) can carry a
/// secret.
pub fn manifest_text(src: &str, sensitive: &dyn Fn(&str) -> bool) -> Result<String, Withheld> {
    let doc = yaml::parse_first_document(src).map_err(|e| Withheld::NotAManifest(e.to_string()))?;
    Pod::from_node(&doc.root).map_err(|e| Withheld::NotAManifest(e.to_string()))?;
    let mut spans = Spans {
        src,
        sensitive,
        out: Vec::new(),
    };
    spans.walk(&doc.root, "")?;
    if let Some(rest) = doc.more_documents_at {
        spans.out.push(rest..src.len());
    }
    replace(src, spans.out)
        .ok_or_else(|| Withheld::Unplaced("a span off character boundaries".into()))
}

/// Collects the byte ranges to redact.
struct Spans<'a> {
    src: &'a str,
    sensitive: &'a dyn Fn(&str) -> bool,
    out: Vec<Range<usize>>,
}

impl Spans<'_> {
    fn walk(&mut self, node: &Node, at: &str) -> Result<(), Withheld> {
        match node {
            Node::Scalar { .. } => Ok(()),
            Node::Seq(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, n)| self.walk(n, &format!("{at}[{i}]"))),
            Node::Map(entries) => {
                let list = |key: &str| node.get(key).and_then(Node::as_seq).unwrap_or(&[]);
                let argv: Vec<&Node> = list("command").iter().chain(list("args")).collect();
                self.argv(&argv, at)?;
                for key in ["env", "httpHeaders"] {
                    for (i, item) in list(key).iter().enumerate() {
                        if let Some(value) = item.get("value") {
                            self.whole(value, &format!("{at}.{key}[{i}].value"))?;
                        }
                    }
                }
                entries.iter().try_for_each(|(k, v)| {
                    let key = k.as_str().unwrap_or("?");
                    self.walk(v, &format!("{at}.{key}"))
                })
            }
        }
    }

    /// A command line: sensitive flag values, and the words of any script in it.
    fn argv(&mut self, argv: &[&Node], at: &str) -> Result<(), Withheld> {
        let mut value_next = false;
        for (i, node) in argv.iter().enumerate() {
            let Node::Scalar { value, .. } = node else {
                continue;
            };
            let here = format!("{at}.argv[{i}]");
            if std::mem::take(&mut value_next) {
                self.whole(node, &here)?;
                continue;
            }
            match sensitive_flag(value, self.sensitive) {
                Some(Some(eq)) => self.tail(node, eq + 1, &here)?,
                Some(None) => value_next = true,
                None => {}
            }
            if value.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
                self.script(node, &here)?;
            }
        }
        Ok(())
    }

    /// A scalar read as a shell script: each sensitive word value, mapped to the source when
    /// the script is written verbatim, else the whole scalar.
    fn script(&mut self, node: &Node, at: &str) -> Result<(), Withheld> {
        let Node::Scalar { value, span, .. } = node else {
            return Ok(());
        };
        let mut hits = Vec::new();
        for words in shell::split_commands(value) {
            let mut value_next = false;
            for w in &words {
                let raw = &value[w.range.clone()];
                if std::mem::take(&mut value_next) {
                    hits.push(w.range.clone());
                    continue;
                }
                let assignment = !w.text.starts_with('-')
                    && w.text.split_once('=').is_some_and(|(name, _)| {
                        !name.is_empty()
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                match sensitive_flag(&w.text, self.sensitive) {
                    _ if assignment => {
                        let eq = raw.find('=').unwrap_or(raw.len());
                        hits.push(w.range.start + eq + 1..w.range.end);
                    }
                    Some(Some(_)) => {
                        // The name has no quotes of its own, so the first `=` in the raw word
                        // is the one that ends it.
                        let eq = raw.find('=').unwrap_or(raw.len());
                        hits.push(w.range.start + eq + 1..w.range.end);
                    }
                    Some(None) => value_next = true,
                    None => {}
                }
            }
        }
        hits.retain(|r| !r.is_empty());
        if hits.is_empty() {
            return Ok(());
        }
        match verbatim_start(self.src, node) {
            Some(base) => {
                let end = span.as_ref().map_or(0, |s| s.end);
                self.out.extend(
                    hits.into_iter()
                        .map(|r| base + r.start..(base + r.end).min(end)),
                );
                Ok(())
            }
            None => self.whole(node, at),
        }
    }

    /// The value part of a scalar from byte `from` of its decoded text; the whole scalar when
    /// its source is not the text itself.
    fn tail(&mut self, node: &Node, from: usize, at: &str) -> Result<(), Withheld> {
        let Node::Scalar { value, span, .. } = node else {
            return self.whole(node, at);
        };
        match (verbatim_start(self.src, node), span) {
            (Some(base), Some(span)) if from < value.len() => {
                self.out.push(base + from..span.end.min(base + value.len()));
                Ok(())
            }
            (Some(_), Some(_)) => Ok(()), // `--f=`: nothing to hide
            _ => self.whole(node, at),
        }
    }

    /// Every scalar of a node, whole.
    fn whole(&mut self, node: &Node, at: &str) -> Result<(), Withheld> {
        match node {
            Node::Scalar { span: Some(s), .. } => {
                self.out.push(s.clone());
                Ok(())
            }
            Node::Scalar { span: None, .. } => Err(Withheld::Unplaced(at.to_string())),
            Node::Seq(items) => items.iter().try_for_each(|n| self.whole(n, at)),
            Node::Map(entries) => entries.iter().try_for_each(|(_, v)| self.whole(v, at)),
        }
    }
}

/// `Some(Some(i))` for a sensitive `--flag=value` (or `-flag=value`) with `=` at byte `i`,
/// `Some(None)` for a bare sensitive `--flag` whose value is the next word, `None` otherwise.
fn sensitive_flag(word: &str, sensitive: &dyn Fn(&str) -> bool) -> Option<Option<usize>> {
    let body = word.strip_prefix("--").or_else(|| word.strip_prefix('-'))?;
    let (name, eq) = match body.find('=') {
        Some(i) => (&body[..i], Some(word.len() - body.len() + i)),
        None => (body, None),
    };
    (!name.is_empty() && sensitive(name)).then_some(eq)
}

/// Where a scalar's decoded text starts in the source, when the source holds it byte for byte
/// (plain, or quoted without escapes).
fn verbatim_start(src: &str, node: &Node) -> Option<usize> {
    let Node::Scalar {
        value,
        span: Some(span),
        ..
    } = node
    else {
        return None;
    };
    let raw = src.get(span.clone())?;
    let inner = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .unwrap_or(raw);
    (inner == value).then(|| span.start + (raw.len() - inner.len()) / 2)
}

/// `src` with each range (merged where they overlap) replaced by [`REDACTED`].
/// `None` when a range does not fall on character boundaries: nothing is shown then (fail
/// closed), rather than a text with that value left in.
fn replace(src: &str, mut ranges: Vec<Range<usize>>) -> Option<String> {
    ranges.sort_by_key(|r| (r.start, r.end));
    let mut out = String::with_capacity(src.len());
    let mut at = 0;
    for r in ranges {
        let (start, end) = (r.start.max(at), r.end.min(src.len()));
        if start >= end {
            continue;
        }
        // Spans come from the parser and fall on character boundaries; if one did not, the
        // value it covers must not be shown.
        let (Some(keep), Some(_)) = (src.get(at..start), src.get(start..end)) else {
            return None;
        };
        out.push_str(keep);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&src[at..]);
    Some(out)
}

/// A unified diff from `old` to `new` (`None` = no file), labelled with `path`, at most
/// [`MAX_DIFF_BYTES`]. The labels are `a/PATH` and `b/PATH`, so that `patch -p1` applies it
/// from the root for an absolute path, and from the current directory for a relative one.
pub fn unified_diff(path: &str, old: Option<&str>, new: Option<&str>) -> String {
    let a = old.unwrap_or("");
    let b = new.unwrap_or("");
    let rel = path.strip_prefix('/').unwrap_or(path);
    let from = if old.is_some() {
        format!("a/{rel}")
    } else {
        "/dev/null".into()
    };
    let to = if new.is_some() {
        format!("b/{rel}")
    } else {
        "/dev/null".into()
    };
    let mut diff = TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(3)
        .header(&from, &to)
        .to_string();
    if diff.len() > MAX_DIFF_BYTES {
        let full = diff.len();
        let mut cut = MAX_DIFF_BYTES;
        while !diff.is_char_boundary(cut) {
            cut -= 1;
        }
        diff.truncate(cut);
        diff.push_str(&format!(
            "\n[diff cut: {full} bytes, {MAX_DIFF_BYTES} shown]\n"
        ));
    }
    diff
}

/// At most `max` characters of `text`, control characters dropped: for names and subjects
/// that come from a file or a server and go into evidence, which leaves the node and reaches
/// terminals (an escape sequence in a crafted name must not).
pub fn clip(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests;
