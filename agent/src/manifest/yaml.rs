//! A bounded YAML/JSON document tree with source spans.
//!
//! The kubelet decodes static pods with go-yaml (JSON is YAML), taking only the first
//! document. We build our own small tree from saphyr-parser's event stream rather than use a
//! serde deserializer because later stages need the exact byte span of every scalar: a fix
//! must edit one argument and leave every other byte as it was.
//!
//! The builder is defensive: nesting depth, node count and alias expansion are bounded, so a
//! hostile file (an alias bomb, a 100 000-deep sequence) becomes an error in microseconds
//! instead of exhausting memory or the stack.

use std::borrow::Cow;
use std::ops::Range;

mod block;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// Deepest nesting we accept. Real pod manifests are around 8 levels deep.
pub const MAX_DEPTH: usize = 64;
/// Most nodes (after alias expansion) we build for one document.
pub const MAX_NODES: usize = 200_000;

/// Why a document could not be turned into a tree.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    /// The text is not well-formed YAML or JSON.
    #[error("invalid YAML at line {line}, column {col}: {msg}")]
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// What the parser said.
        msg: String,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("document is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// More than [`MAX_NODES`] nodes, usually an alias bomb.
    #[error("document expands to more than {MAX_NODES} nodes (YAML alias bomb?)")]
    TooManyNodes,
    /// An alias names an anchor that was never defined.
    #[error("alias refers to an unknown anchor at line {line}")]
    UnknownAlias {
        /// 1-based line of the alias.
        line: usize,
    },
    /// The stream holds no document at all.
    #[error("file holds no YAML document")]
    Empty,
}

/// How a scalar was written; decides whether its span can be edited in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `foo`
    Plain,
    /// `'foo'`
    SingleQuoted,
    /// `"foo"`
    DoubleQuoted,
    /// `|` or `>` block scalar.
    Block,
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node<'a> {
    /// A scalar with its decoded value, style and the byte range of its source token
    /// (quotes included). Scalars copied in by an alias have no span.
    Scalar {
        /// Decoded value (borrowed from the source where it is written as it reads).
        value: Cow<'a, str>,
        /// Source style.
        style: Style,
        /// Byte range in the source text, `None` for alias copies.
        span: Option<Range<usize>>,
    },
    /// A sequence.
    Seq(Vec<Node<'a>>),
    /// A mapping, in source order.
    Map(Vec<(Node<'a>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// Looks a key up in a mapping (by scalar key).
    pub fn get(&self, key: &str) -> Option<&Node<'a>> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .rev() // a duplicated key: the last one wins, as in go-yaml's map decoding
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value of a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The items of a sequence.
    pub fn as_seq(&self) -> Option<&[Node<'a>]> {
        match self {
            Node::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// A short name of the node's kind for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Scalar { value, style, .. } if value.is_empty() && *style == Style::Plain => {
                "null"
            }
            Node::Scalar { .. } => "scalar",
            Node::Seq(_) => "sequence",
            Node::Map(_) => "mapping",
        }
    }
}

/// The first document of a stream, and whether more followed it.
#[derive(Debug)]
pub struct Document<'a> {
    /// Root node of the first document.
    pub root: Node<'a>,
    /// True when the stream holds a second document, which the kubelet ignores.
    pub has_more_documents: bool,
    /// Byte offset where the second document starts, when there is one.
    pub more_documents_at: Option<usize>,
}

/// Parses the first document of `src`.
pub fn parse_first_document(src: &str) -> Result<Document<'_>, YamlError> {
    if let Some(root) = block::parse(src) {
        return Ok(Document {
            root,
            has_more_documents: false,
            more_documents_at: None,
        });
    }
    full(src)
}

/// When the fast path accepts `src` and the full parser disagrees, what differs. Property
/// tests and the fuzz target call it on every input they make.
pub fn fast_path_disagreement(src: &str) -> Option<String> {
    let fast = block::parse(src)?;
    match full(src) {
        Ok(doc) if doc.root == fast && !doc.has_more_documents => None,
        Ok(doc) => Some(first_difference(&fast, &doc.root)),
        Err(e) => Some(format!("fast path: {fast:?}\nfull parser: {e}")),
    }
}

/// The first node where two trees differ, for a readable failure.
fn first_difference(a: &Node, b: &Node) -> String {
    match (a, b) {
        (Node::Seq(x), Node::Seq(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .find(|(p, q)| p != q)
            .map_or_else(String::new, |(p, q)| first_difference(p, q)),
        (Node::Map(x), Node::Map(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .find(|(p, q)| p != q)
            .map_or_else(String::new, |((k1, v1), (k2, v2))| {
                if k1 == k2 {
                    first_difference(v1, v2)
                } else {
                    first_difference(k1, k2)
                }
            }),
        _ => format!("fast path: {a:?}\nfull parser: {b:?}"),
    }
}

/// The full parser (saphyr-parser), for everything the fast path leaves.
fn full(src: &str) -> Result<Document<'_>, YamlError> {
    let offsets = CharOffsets::new(src);
    let mut parser = Parser::new_from_str(src);
    let mut builder = Builder {
        offsets: &offsets,
        anchors: Vec::new(),
        nodes: 0,
    };
    let mut root = None;
    let mut more_documents_at = None;
    loop {
        let (event, span) = next(&mut parser)?;
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) if root.is_some() => {
                // A second document exists; the kubelet ignores it and so do we, but we
                // must not let a syntax error in it fail the file either.
                more_documents_at = Some(offsets.byte(span.start.index()));
                break;
            }
            Event::DocumentStart(_) => {
                let (ev, sp) = next(&mut parser)?;
                root = Some(builder.node(&mut parser, ev, sp, 0)?);
            }
            other => {
                return Err(YamlError::Syntax {
                    line: span.start.line(),
                    col: span.start.col() + 1,
                    msg: format!("unexpected event {other:?}"),
                });
            }
        }
    }
    let root = root.ok_or(YamlError::Empty)?;
    Ok(Document {
        root,
        has_more_documents: more_documents_at.is_some(),
        more_documents_at,
    })
}

fn next<'a>(
    parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
) -> Result<(Event<'a>, Span), YamlError> {
    match parser.next_event() {
        Some(Ok(pair)) => Ok(pair),
        // saphyr-parser has its own nesting limit; report it as what it is.
        Some(Err(e)) if e.info().contains("recursion limit") => Err(YamlError::TooDeep),
        Some(Err(e)) => Err(YamlError::Syntax {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            msg: e.info().to_string(),
        }),
        None => Err(YamlError::Syntax {
            line: 0,
            col: 0,
            msg: "unexpected end of input".into(),
        }),
    }
}

struct Builder<'o, 'a> {
    offsets: &'o CharOffsets,
    /// Anchored nodes by anchor id, with the number of nodes each expands to.
    anchors: Vec<(usize, Node<'a>, usize)>,
    nodes: usize,
}

impl<'a> Builder<'_, 'a> {
    fn count(&mut self, n: usize) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return Err(YamlError::TooManyNodes);
        }
        Ok(())
    }

    fn node(
        &mut self,
        parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
        event: Event<'a>,
        span: Span,
        depth: usize,
    ) -> Result<Node<'a>, YamlError> {
        if depth > MAX_DEPTH {
            return Err(YamlError::TooDeep);
        }
        let before = self.nodes;
        self.count(1)?;
        let (node, anchor) = match event {
            Event::Scalar(value, style, anchor, _tag) => {
                let style = match style {
                    ScalarStyle::Plain => Style::Plain,
                    ScalarStyle::SingleQuoted => Style::SingleQuoted,
                    ScalarStyle::DoubleQuoted => Style::DoubleQuoted,
                    ScalarStyle::Literal | ScalarStyle::Folded => Style::Block,
                };
                let span = self.offsets.range(span.start.index(), span.end.index());
                (
                    Node::Scalar {
                        value,
                        style,
                        span: Some(span),
                    },
                    anchor,
                )
            }
            Event::SequenceStart(anchor, _) => {
                let mut items = Vec::new();
                loop {
                    let (ev, sp) = next(parser)?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(parser, ev, sp, depth + 1)?);
                }
                (Node::Seq(items), anchor)
            }
            Event::MappingStart(anchor, _) => {
                let mut entries = Vec::new();
                loop {
                    let (ev, sp) = next(parser)?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let key = self.node(parser, ev, sp, depth + 1)?;
                    let (ev, sp) = next(parser)?;
                    let value = self.node(parser, ev, sp, depth + 1)?;
                    entries.push((key, value));
                }
                (Node::Map(entries), anchor)
            }
            Event::Alias(id) => {
                let (node, size) = self
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _, _)| *a == id)
                    .map(|(_, n, s)| (n.clone(), *s))
                    .ok_or(YamlError::UnknownAlias {
                        line: span.start.line(),
                    })?;
                // The alias node itself was counted once above; count the rest of the copy.
                self.count(size.saturating_sub(1))?;
                return Ok(strip_spans(node));
            }
            other => {
                return Err(YamlError::Syntax {
                    line: span.start.line(),
                    col: span.start.col() + 1,
                    msg: format!("unexpected event {other:?}"),
                });
            }
        };
        if anchor != 0 {
            let size = self.nodes - before;
            self.anchors.push((anchor, node.clone(), size));
        }
        Ok(node)
    }
}

/// Copies made by an alias do not come from their own source bytes, so they lose their spans:
/// nothing may edit them in place.
fn strip_spans(node: Node<'_>) -> Node<'_> {
    match node {
        Node::Scalar { value, style, .. } => Node::Scalar {
            value,
            style,
            span: None,
        },
        Node::Seq(items) => Node::Seq(items.into_iter().map(strip_spans).collect()),
        Node::Map(entries) => Node::Map(
            entries
                .into_iter()
                .map(|(k, v)| (strip_spans(k), strip_spans(v)))
                .collect(),
        ),
    }
}

/// saphyr-parser reports positions in characters; edits need bytes.
struct CharOffsets {
    /// Byte offset of every char index, plus one past the end; empty for pure ASCII.
    table: Vec<usize>,
    len: usize,
}

impl CharOffsets {
    fn new(src: &str) -> Self {
        let table = if src.is_ascii() {
            Vec::new()
        } else {
            src.char_indices()
                .map(|(i, _)| i)
                .chain(std::iter::once(src.len()))
                .collect()
        };
        Self {
            table,
            len: src.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        if self.table.is_empty() {
            char_index.min(self.len)
        } else {
            self.table.get(char_index).copied().unwrap_or(self.len)
        }
    }

    fn range(&self, start: usize, end: usize) -> Range<usize> {
        self.byte(start)..self.byte(end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_cover_the_source_token_including_quotes() {
        let src = "a: [\"--x=1\", '--y', --z]\nü: \"--é=1\"\n";
        let doc = parse_first_document(src).unwrap();
        let items = doc.root.get("a").unwrap().as_seq().unwrap();
        let texts: Vec<&str> = items
            .iter()
            .map(|n| match n {
                Node::Scalar { span: Some(s), .. } => &src[s.clone()],
                _ => panic!("no span"),
            })
            .collect();
        assert_eq!(texts, ["\"--x=1\"", "'--y'", "--z"]);
        match doc.root.get("ü").unwrap() {
            Node::Scalar { span: Some(s), .. } => assert_eq!(&src[s.clone()], "\"--é=1\""),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_first_document_counts_and_later_garbage_is_ignored() {
        let doc = parse_first_document("a: 1\n---\n: : [\n").unwrap();
        assert!(doc.has_more_documents);
        assert_eq!(doc.root.get("a").unwrap().as_str(), Some("1"));
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            src.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert_eq!(
            parse_first_document(&src).unwrap_err(),
            YamlError::TooManyNodes
        );
    }

    #[test]
    fn deep_nesting_is_refused() {
        let src = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(parse_first_document(&src).unwrap_err(), YamlError::TooDeep);
    }

    #[test]
    fn empty_stream_is_an_error() {
        assert_eq!(parse_first_document("").unwrap_err(), YamlError::Empty);
        assert_eq!(
            parse_first_document("# only a comment\n").unwrap_err(),
            YamlError::Empty
        );
    }

    #[test]
    fn alias_copies_have_no_span() {
        let doc = parse_first_document("a: &x --f=1\nb: *x\n").unwrap();
        assert!(matches!(
            doc.root.get("b"),
            Some(Node::Scalar { span: None, .. })
        ));
        assert!(matches!(
            doc.root.get("a"),
            Some(Node::Scalar { span: Some(_), .. })
        ));
    }
}
