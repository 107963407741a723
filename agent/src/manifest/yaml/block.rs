//! A fast path for the YAML that kubeadm and most people write: block mappings and sequences
//! of single-line scalars, ASCII, spaces for indentation.
//!
//! It builds exactly the tree [`super::parse_first_document`] builds from saphyr-parser's
//! events (same values, styles and spans), in a fraction of the time, and gives up
//! (`None`) on anything outside that subset: flow collections other than `{}` and `[]`,
//! anchors, aliases, tags, block and multi-line scalars, escapes, tabs, CR, control
//! characters, non-ASCII bytes,
//! document markers, directives, empty values that are not followed by a nested block, and
//! anything it does not recognise. Giving up costs nothing but time: the full parser runs.
//! Property tests and the fuzz target check that whatever it accepts equals the full parse.

use std::borrow::Cow;

use super::{MAX_DEPTH, MAX_NODES, Node, Style};

/// One line with content: its indentation and where its content starts and ends (comments
/// and trailing spaces are not content).
#[derive(Debug, Clone, Copy)]
struct Line {
    indent: usize,
    start: usize,
    end: usize,
}

/// Parses `src` when it is in the subset; `None` otherwise.
pub fn parse(src: &str) -> Option<Node<'_>> {
    let bytes = src.as_bytes();
    // Printable ASCII and newlines only (no tab, CR, control characters or DEL, which YAML
    // treats specially or refuses).
    // (No early exit: the loop vectorises, and real manifests pass it whole.)
    let odd = bytes.iter().fold(false, |odd, &b| {
        odd | ((b < b' ') & (b != b'\n')) | (b > b'~')
    });
    if odd {
        return None;
    }
    let mut lines = Vec::with_capacity(src.len() / 24);
    let mut start = 0;
    while start < bytes.len() {
        // memchr (through `str::find`) pays off over a whole line, unlike within tokens.
        let end = start + src[start..].find('\n').unwrap_or(bytes.len() - start);
        let raw = &bytes[start..end];
        let line_start = start;
        start = end + 1;
        let indent = raw.iter().take_while(|&&b| b == b' ').count();
        let content = &raw[indent..];
        if content.is_empty() || content[0] == b'#' {
            continue;
        }
        if content.starts_with(b"---") || content.starts_with(b"...") || content[0] == b'%' {
            return None;
        }
        let trailing = content.iter().rev().take_while(|&&b| b == b' ').count();
        lines.push(Line {
            indent,
            start: line_start + indent,
            end: end - trailing,
        });
    }
    let first = *lines.first()?;
    let mut p = Block {
        src,
        lines,
        at: 0,
        nodes: 0,
    };
    let root = p.block(first.indent, 0)?;
    (p.at == p.lines.len()).then_some(root)
}

struct Block<'a> {
    src: &'a str,
    lines: Vec<Line>,
    /// The line being read.
    at: usize,
    nodes: usize,
}

impl<'a> Block<'a> {
    fn line(&self) -> Option<Line> {
        self.lines.get(self.at).copied()
    }

    fn count(&mut self) -> Option<()> {
        self.nodes += 1;
        (self.nodes <= MAX_NODES).then_some(())
    }

    fn is_item(&self, l: Line) -> bool {
        let b = self.src.as_bytes();
        b[l.start] == b'-' && b.get(l.start + 1) == Some(&b' ')
    }

    /// The block that starts at the current line, indented `indent`.
    fn block(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        let l = self.line()?;
        if l.indent != indent {
            return None;
        }
        if self.is_item(l) {
            self.seq(indent, depth)
        } else {
            self.map(indent, depth)
        }
    }

    fn seq(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        self.count()?;
        let mut items = Vec::new();
        while let Some(l) = self.line() {
            if l.indent < indent {
                break;
            }
            if l.indent > indent || !self.is_item(l) {
                // a mapping key at the sequence's indent ends it only in the parent's eyes
                if l.indent == indent {
                    break;
                }
                return None;
            }
            // The item's content starts after `- ` and any further spaces.
            let rest = &self.src[l.start + 1..l.end];
            let skip = 1 + rest.bytes().take_while(|&b| b == b' ').count();
            let start = l.start + skip;
            let b = self.src.as_bytes();
            if start >= l.end
                || (b[start] == b'-' && matches!(b.get(start + 1), None | Some(b' ' | b'\n')))
            {
                return None; // `-` alone, or a nested `- -`
            }
            let item = Line {
                indent: l.indent + skip,
                start,
                end: l.end,
            };
            if self.key_end(item).is_some() {
                // `- key: value`: a mapping indented where its first key starts.
                self.lines[self.at] = item;
                items.push(self.map(item.indent, depth + 1)?);
            } else {
                items.push(self.scalar_line(item, indent)?);
            }
        }
        Some(Node::Seq(items))
    }

    fn map(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        self.count()?;
        let mut entries = Vec::new();
        while let Some(l) = self.line() {
            if l.indent < indent {
                break;
            }
            if l.indent > indent || self.is_item(l) {
                return None;
            }
            let (key, value_at) = self.key(l)?;
            let value_start = value_at
                + self.src.as_bytes()[value_at..l.end]
                    .iter()
                    .take_while(|&&b| b == b' ')
                    .count();
            let value = if value_start >= l.end {
                // `key:` and the value on the lines below: more indented, or a sequence at
                // the key's own indent. Anything else is an empty value: not handled here.
                self.at += 1;
                let next = self.line()?;
                if next.indent > indent || (next.indent == indent && self.is_item(next)) {
                    self.block(next.indent, depth + 1)?
                } else {
                    return None;
                }
            } else {
                let item = Line {
                    indent: l.indent,
                    start: value_start,
                    end: l.end,
                };
                self.scalar_line(item, indent)?
            };
            entries.push((key, value));
        }
        Some(Node::Map(entries))
    }

    /// A value that is the rest of line `l`: a scalar, `{}` or `[]`. The next line must not
    /// continue it (be more indented than `parent`).
    fn scalar_line(&mut self, l: Line, parent: usize) -> Option<Node<'a>> {
        self.count()?;
        let text = &self.src[l.start..l.end];
        let node = match text.as_bytes() {
            b"{}" => Node::Map(Vec::new()),
            b"[]" => Node::Seq(Vec::new()),
            _ => {
                let (node, end) = self.scalar(l.start, l.end)?;
                // saphyr-parser's span of a quoted scalar reaches over what follows it on the
                // line (spaces, a comment): leave those to it.
                let quoted = !matches!(
                    node,
                    Node::Scalar {
                        style: Style::Plain,
                        ..
                    }
                );
                if quoted && !matches!(self.src.as_bytes().get(end), None | Some(b'\n')) {
                    return None;
                }
                self.trailer(end, l.end)?;
                node
            }
        };
        self.at += 1;
        if self.line().is_some_and(|n| n.indent > parent) {
            return None; // a continuation line (multi-line scalar) or an error
        }
        Some(node)
    }

    /// After a token, only spaces and a comment may follow.
    fn trailer(&self, from: usize, end: usize) -> Option<()> {
        let rest = &self.src[from..end];
        let trimmed = rest.trim_start_matches(' ');
        (trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len()))
            .then_some(())
    }

    /// Where the key of line `l` ends (its `:`), when the line is `key: ...` or `key:`.
    fn key_end(&self, l: Line) -> Option<usize> {
        let b = self.src.as_bytes();
        let text = &self.src[l.start..l.end];
        match b[l.start] {
            b'\'' | b'"' => {
                let close = l.start + 1 + find_byte(&text[1..], b[l.start])?;
                (b.get(close + 1) == Some(&b':')
                    && matches!(b.get(close + 2), None | Some(b' ' | b'\n')))
                .then_some(close + 1)
            }
            _ => {
                // The first `: ` (or a `:` ending the line), unless a comment starts first.
                let t = text.as_bytes();
                for i in 0..t.len() {
                    match (t[i], t.get(i + 1)) {
                        (b':', None | Some(b' ')) => return Some(l.start + i),
                        (b' ', Some(b'#')) => return None,
                        _ => {}
                    }
                }
                None
            }
        }
    }

    /// The key of line `l` and where its value starts.
    fn key(&mut self, l: Line) -> Option<(Node<'a>, usize)> {
        self.count()?;
        let colon = self.key_end(l)?;
        let (node, end) = self.scalar(l.start, colon)?;
        (end == colon).then_some(())?;
        Some((node, colon + 1))
    }

    /// A scalar token starting at `start` and ending at or before `end`; its node and where
    /// it ends.
    fn scalar(&self, start: usize, end: usize) -> Option<(Node<'a>, usize)> {
        let src: &'a str = self.src;
        let b = self.src.as_bytes();
        match b[start] {
            b'\'' => {
                let mut value = Cow::Borrowed("");
                let mut i = start + 1;
                loop {
                    let q = i + find_byte(&src[i..end], b'\'')?;
                    if b.get(q + 1) == Some(&b'\'') && q + 1 < end {
                        // `''` is one quote: the value is no longer a slice of the source.
                        let owned = value.to_mut();
                        owned.push_str(&src[i..q]);
                        owned.push('\'');
                        i = q + 2;
                    } else {
                        match &mut value {
                            Cow::Borrowed(_) => value = Cow::Borrowed(&src[i..q]),
                            Cow::Owned(v) => v.push_str(&src[i..q]),
                        }
                        return Some((scalar(value, Style::SingleQuoted, start, q + 1), q + 1));
                    }
                }
            }
            b'"' => {
                let q = start + 1 + find_byte(&self.src[start + 1..end], b'"')?;
                let value = &self.src[start + 1..q];
                if find_byte(value, b'\\').is_some() {
                    return None;
                }
                Some((
                    scalar(value.into(), Style::DoubleQuoted, start, q + 1),
                    q + 1,
                ))
            }
            // Indicators that cannot start a plain scalar, or start something else.
            b'[' | b']' | b'{' | b'}' | b',' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'%'
            | b'@' | b'`' | b'?' | b':' => None,
            b'-' if start + 1 == end || b[start + 1] == b' ' => None,
            _ => {
                // One pass: the value ends where a comment starts, and holds no `: `.
                let t = &b[start..end];
                let mut len = t.len();
                for i in 0..t.len() {
                    match (t[i], t.get(i + 1)) {
                        (b' ', Some(b'#')) => {
                            len = i;
                            break;
                        }
                        (b':', Some(b' ')) => return None,
                        _ => {}
                    }
                }
                let value = src[start..start + len].trim_end_matches(' ');
                if value.ends_with(':') {
                    return None;
                }
                let stop = start + value.len();
                Some((scalar(value.into(), Style::Plain, start, stop), stop))
            }
        }
    }
}

/// Where byte `a` first occurs in `text` (a plain loop: lines are short, and memchr's
/// set-up costs more than it saves there).
fn find_byte(text: &str, a: u8) -> Option<usize> {
    text.bytes().position(|b| b == a)
}

fn scalar(value: Cow<'_, str>, style: Style, start: usize, end: usize) -> Node<'_> {
    Node::Scalar {
        value,
        style,
        span: Some(start..end),
    }
}

#[cfg(test)]
mod tests {
    use super::super::full;
    use super::*;

    fn same(src: &str) {
        let fast = parse(src).unwrap_or_else(|| panic!("not in the subset:\n{src}"));
        let full = full(src).unwrap();
        assert_eq!(fast, full.root, "{src}");
    }

    #[test]
    fn kubeadm_manifests_are_in_the_subset_and_parse_the_same() {
        for v in ["v1.24", "v1.28", "v1.31"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/data/kubeadm")
                .join(v);
            for e in std::fs::read_dir(dir).unwrap() {
                same(&std::fs::read_to_string(e.unwrap().path()).unwrap());
            }
        }
    }

    #[test]
    fn forms_in_the_subset() {
        for src in [
            "a: 1\nb: two words\n",
            "a:\n- x\n- 'y ''q'''\n- \"z\"\nb: c # comment\n",
            "a:\n  - k: v\n    l: w\n  - m\n",
            "spec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --a=b:c\n    image: x\n  status: {}\n  l: []\n",
            "'q k': v\n\"d\": 'e'\nurl: http://x:80/y#z\n",
            "# head\n\na: 1   \n   # indented comment\nb: 2\n",
        ] {
            same(src);
        }
    }

    #[test]
    fn forms_outside_the_subset_are_left_to_the_full_parser() {
        for src in [
            "a: [1, 2]\n",
            "a: &x 1\nb: *x\n",
            "a: |\n  text\n",
            "a: multi\n  line\n",
            "a: \"esc\\n\"\n",
            "a:\tb\n",
            "a: 1\r\n",
            "a: é\n",
            "a: b\x01\n",
            "a: b\x7f\n",
            "---\na: 1\n",
            "a: 1\n---\nb: 2\n",
            "a:\nb: 1\n",
            "a: b: c\n",
            "- - x\n",
            "a: !!str 1\n",
            "a: 'open\n",
            "a: 'x' y\n",
            "a: 'x' # quoted, then a comment\n",
            "a: 'x'  \n",
        ] {
            assert!(parse(src).is_none(), "{src}");
        }
    }

    use proptest::prelude::*;

    const TOKENS: &[&str] = &[
        "a",
        "b c",
        "'q'",
        "'it''s'",
        "\"d\"",
        "\"e f\"",
        "--x=1",
        "-x",
        "x:y",
        "x#y",
        "{}",
        "[]",
        "",
        ":",
        "?",
        "- y",
        "null",
        "a: b",
        "'x' y",
        "\"\"",
        "''",
        "http://h:1/p",
        "-",
        "#c",
        "~",
        "'",
        "\"",
        "x ",
        " x",
        "a:",
        "--f=a,b",
    ];

    fn line() -> impl Strategy<Value = String> {
        (
            0..7usize,
            prop::bool::ANY,
            prop::sample::select(TOKENS),
            prop::option::of(prop::sample::select(TOKENS)),
            prop::sample::select(&["", "  ", " # c", "#c"][..]),
        )
            .prop_map(|(indent, dash, key, value, tail)| {
                let mut l = " ".repeat(indent);
                if dash {
                    l.push_str("- ");
                }
                l.push_str(key);
                if let Some(v) = value {
                    l.push_str(": ");
                    l.push_str(v);
                }
                l.push_str(tail);
                l
            })
    }

    /// A tree in the subset, rendered in block style with random layout choices.
    #[derive(Debug, Clone)]
    enum Tree {
        Scalar(&'static str, u8),
        Seq(Vec<Tree>),
        Map(Vec<(&'static str, Tree)>),
    }

    const WORDS: &[&str] = &[
        "a",
        "b c",
        "--x=1",
        "-x",
        "x:y",
        "x#y",
        "null",
        "http://h:1/p",
        "~",
        "--f=a,b",
        "it's",
        "6443",
        "true",
        "e f",
        "x,y",
        "a]b",
        "a}b",
        "@",
        "%",
        "a - b",
    ];

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = (prop::sample::select(WORDS), 0..3u8).prop_map(|(w, q)| Tree::Scalar(w, q));
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(Tree::Seq),
                prop::collection::vec((prop::sample::select(WORDS), inner), 1..4)
                    .prop_map(Tree::Map),
            ]
        })
    }

    fn quote(w: &str, q: u8) -> String {
        match q {
            1 => format!("'{}'", w.replace('\'', "''")),
            2 if !w.contains('"') => format!("\"{w}\""),
            _ => w.to_string(),
        }
    }

    /// Renders `t` at `indent`; `extra` picks layout variants from a seed.
    fn render(t: &Tree, indent: usize, out: &mut String, seed: &mut u64) {
        fn flip(seed: &mut u64) -> u64 {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (*seed >> 33) % 4
        }
        let pad = " ".repeat(indent);
        match t {
            Tree::Scalar(w, q) => out.push_str(&format!("{pad}{}\n", quote(w, *q))),
            Tree::Seq(items) => {
                for item in items {
                    match item {
                        Tree::Scalar(w, q) => out.push_str(&format!("{pad}- {}\n", quote(w, *q))),
                        Tree::Map(_) => {
                            let mut sub = String::new();
                            render(item, indent + 2, &mut sub, seed);
                            out.push_str(&format!("{pad}- {}", &sub[indent + 2..]));
                        }
                        Tree::Seq(_) => {
                            out.push_str(&format!("{pad}-\n"));
                            render(item, indent + 2, out, seed);
                        }
                    }
                }
            }
            Tree::Map(entries) => {
                for (k, v) in entries {
                    let key = quote(k, (flip(seed) == 0) as u8);
                    match v {
                        Tree::Scalar(w, q) => {
                            let tail = ["", "  ", " # c", ""][flip(seed) as usize];
                            out.push_str(&format!("{pad}{key}: {}{tail}\n", quote(w, *q)));
                        }
                        Tree::Seq(_) if flip(seed) < 2 => {
                            out.push_str(&format!("{pad}{key}:\n"));
                            render(v, indent, out, seed);
                        }
                        _ => {
                            out.push_str(&format!("{pad}{key}:\n"));
                            if flip(seed) == 0 {
                                out.push_str(&format!("{pad}  # comment\n\n"));
                            }
                            render(v, indent + 2, out, seed);
                        }
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn whatever_the_fast_path_accepts_the_full_parser_reads_the_same(
            lines in prop::collection::vec(line(), 1..12),
        ) {
            let src = lines.join("\n") + "\n";
            if let Some(diff) = super::super::fast_path_disagreement(&src) {
                panic!("{diff}\non {src:?}");
            }
        }

        #[test]
        fn generated_block_documents_parse_the_same(t in tree(), mut seed in any::<u64>()) {
            let t = match t {
                Tree::Map(_) => t,
                other => Tree::Map(vec![("root", other)]),
            };
            let mut src = String::new();
            render(&t, 0, &mut src, &mut seed);
            if let Some(diff) = super::super::fast_path_disagreement(&src) {
                panic!("{diff}\non {src:?}");
            }
        }
    }
}
