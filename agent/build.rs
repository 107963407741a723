//! Turns the rule catalogue (`catalogue/*.yaml`) into JSON at build time, so that the binary
//! reads JSON at start-up instead of parsing YAML (about ten times faster; the check command
//! runs once per invocation, so this is most of its start-up).
//!
//! Scalars keep their text: a plain `1.20` becomes the string `"1.20"`, never the number
//! 1.2, because the catalogue's versions are strings to its types. Only plain `true`,
//! `false`, `null`, `~`, an empty value and whole numbers become JSON's own types. Anything
//! this conversion does not handle (tags, merge keys, several documents) stops the build.
//! The catalogue's unit tests check that the JSON and the YAML give the same catalogue.

use std::fmt::Write as _;
use std::path::Path;

use saphyr_parser::{Event, Parser, ScalarStyle};

const FILES: [&str; 3] = ["flags", "rules", "versions"];

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    for name in FILES {
        let src_path = format!("catalogue/{name}.yaml");
        println!("cargo::rerun-if-changed={src_path}");
        let src = std::fs::read_to_string(&src_path)
            .unwrap_or_else(|e| panic!("cannot read {src_path}: {e}"));
        let json = to_json(&src).unwrap_or_else(|e| panic!("{src_path}: {e}"));
        let dest = Path::new(&out).join(format!("{name}.json"));
        std::fs::write(&dest, json)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", dest.display()));
    }
}

/// One YAML document as JSON text.
fn to_json(src: &str) -> Result<String, String> {
    let mut parser = Parser::new_from_str(src);
    let mut conv = Converter {
        anchors: Vec::new(),
    };
    let mut out = None;
    loop {
        let (event, span) = match parser.next_event() {
            Some(Ok(pair)) => pair,
            Some(Err(e)) => return Err(format!("line {}: {}", e.marker().line(), e.info())),
            None => return Err("the YAML ends early".into()),
        };
        match event {
            Event::StreamStart | Event::DocumentEnd | Event::Nothing => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) if out.is_some() => {
                return Err(format!(
                    "line {}: a second document (the catalogue is one)",
                    span.start.line()
                ));
            }
            Event::DocumentStart(_) => {
                let (ev, _) = next(&mut parser)?;
                out = Some(conv.node(&mut parser, ev)?);
            }
            other => return Err(format!("line {}: unexpected {other:?}", span.start.line())),
        }
    }
    out.ok_or_else(|| "empty document".into())
}

fn next<'a>(
    parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
) -> Result<(Event<'a>, saphyr_parser::Span), String> {
    match parser.next_event() {
        Some(Ok(pair)) => Ok(pair),
        Some(Err(e)) => Err(format!("line {}: {}", e.marker().line(), e.info())),
        None => Err("the YAML ends early".into()),
    }
}

struct Converter {
    /// Anchor id → the JSON of the anchored node (aliases repeat it).
    anchors: Vec<(usize, String)>,
}

impl Converter {
    fn node<'a>(
        &mut self,
        parser: &mut Parser<'a, saphyr_parser::StrInput<'a>>,
        event: Event<'a>,
    ) -> Result<String, String> {
        let (json, anchor) = match event {
            Event::Scalar(value, style, anchor, tag) => {
                if tag.is_some() {
                    return Err(format!("scalar {value:?} has a tag; write it plainly"));
                }
                (scalar(&value, style), anchor)
            }
            Event::SequenceStart(anchor, tag) => {
                if tag.is_some() {
                    return Err("a sequence has a tag".into());
                }
                let mut s = String::from("[");
                loop {
                    let (ev, _) = next(parser)?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    if s.len() > 1 {
                        s.push(',');
                    }
                    s.push_str(&self.node(parser, ev)?);
                }
                s.push(']');
                (s, anchor)
            }
            Event::MappingStart(anchor, tag) => {
                if tag.is_some() {
                    return Err("a mapping has a tag".into());
                }
                let mut s = String::from("{");
                loop {
                    let (ev, span) = next(parser)?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let Event::Scalar(key, _, _, None) = ev else {
                        return Err(format!(
                            "line {}: mapping keys are plain strings here",
                            span.start.line()
                        ));
                    };
                    if key == "<<" {
                        return Err(format!(
                            "line {}: merge keys are not supported",
                            span.start.line()
                        ));
                    }
                    if s.len() > 1 {
                        s.push(',');
                    }
                    s.push_str(&string(&key));
                    s.push(':');
                    let (ev, _) = next(parser)?;
                    s.push_str(&self.node(parser, ev)?);
                }
                s.push('}');
                (s, anchor)
            }
            Event::Alias(id) => {
                return self
                    .anchors
                    .iter()
                    .find(|(a, _)| *a == id)
                    .map(|(_, j)| j.clone())
                    .ok_or_else(|| format!("alias to unknown anchor {id}"));
            }
            other => return Err(format!("unexpected {other:?}")),
        };
        if anchor != 0 {
            self.anchors.push((anchor, json.clone()));
        }
        Ok(json)
    }
}

/// A scalar as JSON: plain booleans, nulls and whole numbers as themselves, the rest as
/// strings with their text.
fn scalar(value: &str, style: ScalarStyle) -> String {
    if style == ScalarStyle::Plain {
        match value {
            "true" | "false" => return value.to_string(),
            "null" | "~" | "" => return "null".to_string(),
            _ => {}
        }
        let digits = value.strip_prefix('-').unwrap_or(value);
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
        {
            return value.to_string();
        }
    }
    string(value)
}

/// A JSON string literal.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
