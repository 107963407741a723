//! Minimal byte edits of a component's argv in the manifest source.
//!
//! Every edit names the argv words it changes and touches only their bytes (a removed word
//! takes its own line with it; an added word gets a line of its own, indented like its
//! neighbour). The caller checks the result by parsing it again and comparing the argv with
//! [`Edited::argv`], so a mistake here is refused, never written.
//!
//! What is never edited in place, and is refused with a reason instead:
//! - words with no source span: block scalars, alias copies, etcd `ETCD_*` environment values,
//!   words with `$(VAR)` expanded from the container's env (the edit would change the env);
//! - words of flow sequences (`[a, b]`) when removing or adding;
//! - additions inside a `sh -c` script, and replacements there that would need quoting.

use std::ops::Range;

use crate::manifest::ControlPlane;
use crate::manifest::flags::{Arg, ArgSource, FlagKind, FlagUse, split_list};
use crate::rules::catalogue::{FlagItem, FlagValue};
use crate::rules::{Catalogue, Fix};

/// The outcome of one fix on the source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    /// The new source.
    pub text: String,
    /// The argv (after the executable) the new source must parse to.
    pub argv: Vec<String>,
}

/// One operation on argv word `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Replace(usize, String),
    Delete(usize),
    /// Insert a new word before word `index` (`after == false`) or after it.
    Insert {
        index: usize,
        after: bool,
        word: String,
    },
}

/// Applies a flag fix (set, remove, add to or remove from a list) to `src`.
pub fn apply(src: &str, cp: &ControlPlane, cat: &Catalogue, fix: &Fix) -> Result<Edited, String> {
    let ops = ops_for(cp, cat, fix)?;
    render(src, cp, &ops)
}

/// Removes every `--remove` and adds `--flag=value` in sorted position, in one edit.
pub fn replace_flag(
    src: &str,
    cp: &ControlPlane,
    remove: &str,
    flag: &str,
    value: &str,
) -> Result<Edited, String> {
    if cp.flags.is_set(flag) {
        return Err(format!("--{flag} is already set"));
    }
    let mut ops: Vec<Op> = cp.flags.uses_of(remove).flat_map(delete_use).collect();
    ops.push(insert_sorted(cp, flag, format!("--{flag}={value}"))?);
    render(src, cp, &ops)
}

/// The operations that carry out `fix` on the component's flags.
fn ops_for(cp: &ControlPlane, cat: &Catalogue, fix: &Fix) -> Result<Vec<Op>, String> {
    let uses = |name: &str| -> Vec<FlagUse> { cp.flags.uses_of(name).cloned().collect() };
    match fix {
        Fix::Set(FlagValue { flag, value }) => {
            let found = uses(flag);
            if found.is_empty() {
                return Ok(vec![insert_sorted(cp, flag, format!("--{flag}={value}"))?]);
            }
            Ok(found.iter().map(|u| set_value(cp, u, value)).collect())
        }
        Fix::Remove(r) => {
            let found = uses(&r.flag);
            if found.is_empty() {
                return Err(format!("--{} is not set", r.flag));
            }
            Ok(found.iter().flat_map(delete_use).collect())
        }
        Fix::AddToList(FlagItem { flag, item }) => match uses(flag).last() {
            None => Ok(vec![insert_sorted(cp, flag, format!("--{flag}={item}"))?]),
            Some(u) => {
                let value = u.value.clone().unwrap_or_default();
                let joined = if value.trim().is_empty() {
                    item.clone()
                } else {
                    format!("{value},{item}")
                };
                Ok(vec![set_value(cp, u, &joined)])
            }
        },
        Fix::RemoveFromList(FlagItem { flag, item }) => {
            let map = cat.kind(cp.component, flag) == FlagKind::Map;
            let matches = |entry: &str| {
                entry == item
                    || (map && !item.contains('=') && entry.split('=').next() == Some(item))
            };
            let mut ops = Vec::new();
            for u in uses(flag) {
                let value = u.value.clone().unwrap_or_default();
                let entries: Vec<String> = split_list(&value).collect();
                if !entries.iter().any(|e| matches(e)) {
                    continue;
                }
                let kept: Vec<String> = entries.into_iter().filter(|e| !matches(e)).collect();
                if kept.is_empty() {
                    ops.extend(delete_use(&u));
                } else {
                    ops.push(set_value(cp, &u, &kept.join(",")));
                }
            }
            if ops.is_empty() {
                return Err(format!("{item} is not in --{flag}"));
            }
            Ok(ops)
        }
        Fix::AnonymousHealthOnly | Fix::AnonymousHealthAndDiscovery => {
            Err("not a flag edit".into())
        }
    }
}

/// Sets one occurrence to `value`, keeping its form (`--f=v`, `--f v`, `-f=v`).
fn set_value(cp: &ControlPlane, u: &FlagUse, value: &str) -> Op {
    match u.value_arg {
        Some(i) => Op::Replace(i, value.to_string()),
        None => {
            let text = &cp.flags.args[u.arg].text;
            let dashes = &text[..text.len() - text.trim_start_matches('-').len()];
            Op::Replace(u.arg, format!("{dashes}{}={value}", u.name))
        }
    }
}

fn delete_use(u: &FlagUse) -> Vec<Op> {
    let mut ops = vec![Op::Delete(u.arg)];
    ops.extend(u.value_arg.map(Op::Delete));
    ops
}

/// Adds `word` where kubeadm would have written it: flags are sorted by name, so before the
/// first flag whose name sorts after it, else after the last flag.
fn insert_sorted(cp: &ControlPlane, flag: &str, word: String) -> Result<Op, String> {
    let uses: Vec<&FlagUse> = cp
        .flags
        .uses
        .iter()
        .filter(|u| cp.flags.args[u.arg].source != ArgSource::Env)
        .collect();
    if let Some(next) = uses.iter().find(|u| u.name.as_str() > flag) {
        return Ok(Op::Insert {
            index: next.arg,
            after: false,
            word,
        });
    }
    let last = uses.last().ok_or_else(|| {
        format!(
            "the {} command has no flag to put --{flag} next to",
            cp.component
        )
    })?;
    Ok(Op::Insert {
        index: last.value_arg.unwrap_or(last.arg),
        after: true,
        word,
    })
}

/// Turns operations into byte edits and the expected argv.
fn render(src: &str, cp: &ControlPlane, ops: &[Op]) -> Result<Edited, String> {
    let args = &cp.flags.args;
    let mut argv: Vec<Option<String>> = args.iter().map(|a| Some(a.text.clone())).collect();
    let mut inserted: Vec<(usize, bool, String)> = Vec::new();
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let nl = if src.contains("\r\n") { "\r\n" } else { "\n" };
    for op in ops {
        match op {
            Op::Replace(i, word) => {
                let arg = &args[*i];
                let span = editable(arg)?;
                let token = match arg.source {
                    ArgSource::Shell => shell_word(word)?,
                    _ => yaml_scalar(word, &src[span.clone()], in_flow(src, span.start)),
                };
                edits.push((span, token));
                argv[*i] = Some(word.clone());
            }
            Op::Delete(i) => {
                let arg = &args[*i];
                let span = editable(arg)?;
                let range = match arg.source {
                    ArgSource::Shell => {
                        let start = src[..span.start].trim_end_matches([' ', '\t']).len();
                        if start == span.start {
                            return Err(format!("cannot remove {:?} from its script", arg.text));
                        }
                        start..span.end
                    }
                    _ => block_item_line(src, span.clone()).ok_or_else(|| {
                        format!(
                            "{:?} is not a block sequence item on a line of its own",
                            arg.text
                        )
                    })?,
                };
                edits.push((range, String::new()));
                argv[*i] = None;
            }
            Op::Insert { index, after, word } => {
                let arg = &args[*index];
                if arg.source == ArgSource::Shell {
                    return Err(format!(
                        "the {} flags are in a sh -c script; add {word} by hand",
                        cp.component
                    ));
                }
                let span = editable(arg)?;
                let line = block_item_line(src, span.clone()).ok_or_else(|| {
                    format!(
                        "{:?} is not a block sequence item on a line of its own",
                        arg.text
                    )
                })?;
                let prefix = &src[line.start..span.start];
                let new_line = format!("{prefix}{}{nl}", yaml_scalar(word, "", false));
                let at = if *after { line.end } else { line.start };
                // A last line without a newline: the new one starts on a line of its own.
                let new_line = if *after && !src[..at].ends_with('\n') {
                    format!("{nl}{}", new_line.trim_end_matches(['\r', '\n']))
                } else {
                    new_line
                };
                edits.push((at..at, new_line));
                inserted.push((*index, *after, word.clone()));
            }
        }
    }
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    for pair in edits.windows(2) {
        if pair[0].0.end > pair[1].0.start {
            return Err("overlapping edits".into());
        }
    }
    let mut text = String::with_capacity(src.len() + 64);
    let mut at = 0;
    for (range, new) in &edits {
        text.push_str(&src[at..range.start]);
        text.push_str(new);
        at = range.end;
    }
    text.push_str(&src[at..]);
    // The argv the result must parse to (the environment fallbacks come last, as parsed).
    let mut expected = Vec::new();
    for (i, word) in argv.iter().enumerate() {
        if args[i].source == ArgSource::Env {
            continue;
        }
        expected.extend(
            inserted
                .iter()
                .filter(|(at, after, _)| *at == i && !after)
                .map(|(_, _, w)| w.clone()),
        );
        expected.extend(word.clone());
        expected.extend(
            inserted
                .iter()
                .filter(|(at, after, _)| *at == i && *after)
                .map(|(_, _, w)| w.clone()),
        );
    }
    Ok(Edited {
        text,
        argv: expected,
    })
}

fn editable(arg: &Arg) -> Result<Range<usize>, String> {
    match (&arg.span, arg.source) {
        (_, ArgSource::Env) => Err(format!(
            "{} comes from the environment; edit the env entry by hand",
            arg.text
        )),
        (Some(span), _) => Ok(span.clone()),
        (None, _) if arg.expanded => Err(format!(
            "{:?} is what the component receives after $(VAR) expansion from the container's env; the edit would have to change the env value: review it by hand",
            arg.text
        )),
        (None, _) => Err(format!(
            "{:?} cannot be edited in place (a block scalar or an alias)",
            arg.text
        )),
    }
}

/// The whole line of a block sequence item `- <token>` whose token is `span`, including its
/// newline, when nothing else (but a comment) is on it.
fn block_item_line(src: &str, span: Range<usize>) -> Option<Range<usize>> {
    let start = src[..span.start].rfind('\n').map_or(0, |i| i + 1);
    let prefix = &src[start..span.start];
    let dash = prefix.trim_start_matches([' ', '\t']);
    if !dash.starts_with('-') || !dash[1..].chars().all(|c| c == ' ' || c == '\t') || dash.len() < 2
    {
        return None;
    }
    let end = src[span.end..]
        .find('\n')
        .map_or(src.len(), |i| span.end + i + 1);
    let rest = src[span.end..end]
        .trim_end_matches(['\r', '\n'])
        .trim_start();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return None;
    }
    Some(start..end)
}

/// True when the token at `at` sits in a flow collection (`[a, b]`).
fn in_flow(src: &str, at: usize) -> bool {
    matches!(
        src[..at]
            .trim_end_matches([' ', '\t', '\r', '\n'])
            .chars()
            .last(),
        Some('[' | ',')
    )
}

/// A YAML scalar for `text`, keeping the quoting style of the token it replaces when it can.
/// A plain scalar only for words that YAML reads back as the same string: flags (`--x=y`)
/// with no character YAML gives a meaning to. Anything else (`0`, `false`, paths with `: `)
/// is quoted, since the kubelet would read `- 0` as a number and refuse the pod.
pub fn yaml_scalar(text: &str, old_token: &str, flow: bool) -> String {
    let plain_ok = text.starts_with("--")
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+~".contains(c) || (!flow && c == ','))
        && !text.contains(": ")
        && !text.ends_with(':');
    if old_token.starts_with('\'') && !text.contains(['\n', '\r']) {
        return format!("'{}'", text.replace('\'', "''"));
    }
    if plain_ok && !old_token.starts_with('"') {
        return text.to_string();
    }
    serde_json::to_string(text).expect("strings serialise")
}

/// `text` as a shell word that needs no quoting (the script is edited verbatim).
fn shell_word(text: &str) -> Result<String, String> {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
    {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?} would need shell quoting; edit the script by hand"
        ))
    }
}
