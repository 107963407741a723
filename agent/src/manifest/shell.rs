//! Just enough of the POSIX shell word syntax to read `sh -c "exec kube-apiserver ..."`.
//!
//! Splits a script into simple commands (on `;`, `&&`, `||`, `|`, `&` and newlines) and each
//! command into words, honouring single quotes, double quotes and backslashes.
//!
//! Parameter expansion outside single quotes: `$NAME` and `${NAME}` take the value of a
//! container env variable (what the shell inherits). What the script alone cannot tell is
//! kept as written and marked [`Word::dynamic`]: a variable not in the env or set at run
//! time (the script may set it; unset, the shell makes it empty), an unquoted value the shell
//! would split or glob, command substitution, positional and special parameters, `${...}`
//! with operators.

use std::ops::Range;

/// One word of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word after quote removal.
    pub text: String,
    /// Byte range of the word in the script.
    pub range: Range<usize>,
    /// True when the source bytes are exactly `text` (no quoting, escapes or replaced
    /// expansions), so the word can be edited in place.
    pub verbatim: bool,
    /// An expansion the shell decides at run time (`$MODE`, `$(cat f)`): `text` holds it as
    /// written.
    pub dynamic: Option<String>,
    /// A `$NAME` in it was replaced by its value from the env.
    pub expanded: bool,
}

/// A variable's value as the shell inherits it: `None` when not in the env, `Some(None)` when
/// set at run time.
pub type Vars<'a> = &'a dyn Fn(&str) -> Option<Option<&'a str>>;

/// Splits a script into commands of words, expansions kept as written.
pub fn split_commands(script: &str) -> Vec<Vec<Word>> {
    split_commands_with(script, &|_| None)
}

/// Splits a script into commands of words, `$NAME` / `${NAME}` taken from `vars`.
pub fn split_commands_with(script: &str, vars: Vars<'_>) -> Vec<Vec<Word>> {
    let bytes = script.as_bytes();
    let mut commands = vec![Vec::new()];
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' => i += 1,
            b'\\' if bytes.get(i + 1) == Some(&b'\n') => i += 2, // line continuation
            b'<' | b'>' => i = skip_redirect(bytes, i),
            b'\n' | b';' | b'&' | b'|' => {
                if !commands.last().is_some_and(Vec::is_empty) {
                    commands.push(Vec::new());
                }
                i += 1;
            }
            b'#' => {
                // a comment runs to the end of the line
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            _ => {
                let start = i;
                let mut text = Vec::new();
                let mut verbatim = true;
                let mut dynamic = None;
                let mut expanded = false;
                while i < bytes.len() {
                    match bytes[i] {
                        b' ' | b'\t' | b'\n' | b';' | b'&' | b'|' | b'<' | b'>' => break,
                        b'\'' => {
                            verbatim = false;
                            i += 1;
                            while i < bytes.len() && bytes[i] != b'\'' {
                                text.push(bytes[i]);
                                i += 1;
                            }
                            i += 1;
                        }
                        b'"' => {
                            verbatim = false;
                            i += 1;
                            while i < bytes.len() && bytes[i] != b'"' {
                                if matches!(bytes[i], b'$' | b'`') {
                                    let len = text.len();
                                    i = parameter(script, i, true, vars, &mut text, &mut dynamic);
                                    expanded |= text.len() != len + 1 || text[len] != b'$';
                                    continue;
                                }
                                if bytes[i] == b'\\'
                                    && matches!(bytes.get(i + 1), Some(b'"' | b'\\' | b'$' | b'`'))
                                {
                                    i += 1;
                                }
                                text.push(bytes[i]);
                                i += 1;
                            }
                            i += 1;
                        }
                        b'\\' => {
                            verbatim = false;
                            if let Some(&next) = bytes.get(i + 1)
                                && next != b'\n'
                            {
                                text.push(next);
                            }
                            i += 2;
                        }
                        b'$' | b'`' => {
                            let (at, len) = (i, text.len());
                            i = parameter(script, i, false, vars, &mut text, &mut dynamic);
                            expanded |=
                                !(i - at == 1 && text.len() == len + 1 && text[len] == b'$');
                        }
                        b => {
                            text.push(b);
                            i += 1;
                        }
                    }
                }
                let end = i.min(bytes.len());
                if matches!(bytes.get(end), Some(b'<' | b'>'))
                    && text.iter().all(u8::is_ascii_digit)
                {
                    // `2>&1`: the digits name a file descriptor, not an argument
                    i = skip_redirect(bytes, end);
                    continue;
                }
                let text = match &dynamic {
                    // As written, so that the report shows what is unknown.
                    Some(_) => String::from_utf8_lossy(&bytes[start..end]).into_owned(),
                    None => String::from_utf8_lossy(&text).into_owned(),
                };
                commands.last_mut().expect("never empty").push(Word {
                    text,
                    range: start..end,
                    // A dynamic word is kept as written: editable where its bytes are plain.
                    verbatim: verbatim && (dynamic.is_some() || !expanded),
                    expanded: expanded && dynamic.is_none(),
                    dynamic,
                });
            }
        }
    }
    commands.retain(|c| !c.is_empty());
    commands
}

/// Reads the expansion at `i` (a `$` or a backtick), pushes its value, or marks the word
/// dynamic; returns the index after it.
fn parameter(
    script: &str,
    i: usize,
    quoted: bool,
    vars: Vars<'_>,
    text: &mut Vec<u8>,
    dynamic: &mut Option<String>,
) -> usize {
    let bytes = script.as_bytes();
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let (name, end) = match (bytes[i], bytes.get(i + 1)) {
        (b'$', Some(b'{')) => match script[i + 2..].find('}') {
            Some(close) => (&script[i + 2..i + 2 + close], i + 3 + close),
            None => (&script[i + 2..], bytes.len()),
        },
        (b'$', Some(&b)) if b.is_ascii_alphabetic() || b == b'_' => {
            let len = bytes[i + 1..].iter().take_while(|&&b| is_name(b)).count();
            (&script[i + 1..i + 1 + len], i + 1 + len)
        }
        (b'$', Some(b'(')) => {
            // A command substitution is one word, spaces and all, up to its closing paren.
            let mut depth = 0usize;
            let mut end = bytes.len();
            for (j, &b) in bytes.iter().enumerate().skip(i + 1) {
                match b {
                    b'(' => depth += 1,
                    b')' if depth == 1 => {
                        end = j + 1;
                        break;
                    }
                    b')' => depth -= 1,
                    _ => {}
                }
            }
            dynamic.get_or_insert_with(|| "a command substitution, $(...)".into());
            return end;
        }
        (b'`', _) => {
            let end = script[i + 1..].find('`').map_or(bytes.len(), |e| i + 2 + e);
            dynamic.get_or_insert_with(|| "a command substitution, `...`".into());
            return end;
        }
        (b'$', Some(b'0'..=b'9' | b'@' | b'*' | b'#' | b'?' | b'-' | b'$' | b'!')) => {
            dynamic.get_or_insert_with(|| format!("{}, a shell parameter", &script[i..i + 2]));
            return i + 2;
        }
        _ => {
            // `$` before anything else is a literal `$`.
            text.push(b'$');
            return i + 1;
        }
    };
    let valid =
        !name.is_empty() && name.bytes().all(is_name) && !name.as_bytes()[0].is_ascii_digit();
    match vars(name).filter(|_| valid) {
        Some(Some(value)) if quoted || !value.bytes().any(|b| b" \t\n*?[".contains(&b)) => {
            text.extend_from_slice(value.as_bytes())
        }
        Some(Some(_)) => {
            dynamic.get_or_insert_with(|| format!("${name}, which the shell splits or globs"));
        }
        Some(None) => {
            dynamic.get_or_insert_with(|| format!("${name}, set from valueFrom at run time"));
        }
        None => {
            dynamic.get_or_insert_with(|| {
                format!("${{{name}}}, not in the container's env (the script may set it)")
            });
        }
    }
    end
}

/// Skips a redirection (`>`, `>>`, `2>&1`, `< file`, `> /log`) starting at `i`.
fn skip_redirect(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b'<' | b'>' | b'&')) {
        i += 1;
    }
    while matches!(bytes.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    while i < bytes.len() && !matches!(bytes[i], b' ' | b'\t' | b'\n' | b';' | b'&' | b'|') {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(script: &str) -> Vec<Vec<String>> {
        split_commands(script)
            .into_iter()
            .map(|c| c.into_iter().map(|w| w.text).collect())
            .collect()
    }

    #[test]
    fn splits_commands_and_quotes() {
        assert_eq!(
            texts("set -e; exec kube-apiserver --a='x y' --b=\"q\\\"\" \\\n --c=1 && true"),
            vec![
                vec!["set", "-e"],
                vec!["exec", "kube-apiserver", "--a=x y", "--b=q\"", "--c=1"],
                vec!["true"],
            ]
        );
    }

    #[test]
    fn redirections_are_not_arguments() {
        assert_eq!(
            texts("exec etcd --a=1 2>&1 > /var/log/etcd.log --b=2 <in"),
            vec![vec!["exec", "etcd", "--a=1", "--b=2"]]
        );
    }

    #[test]
    fn verbatim_words_keep_their_source_range() {
        let script = "exec etcd --name=cp-1 '--x=1'";
        let words = &split_commands(script)[0];
        assert_eq!(&script[words[2].range.clone()], "--name=cp-1");
        assert!(words[2].verbatim);
        assert!(!words[3].verbatim);
    }

    #[test]
    fn parameters_come_from_the_env_or_are_dynamic() {
        let vars = |name: &str| match name {
            "MODE" => Some(Some("AlwaysAllow")),
            "SPACED" => Some(Some("a b")),
            "SECRET" => Some(None),
            _ => None,
        };
        let words = |script: &str| -> Vec<(String, bool, bool)> {
            split_commands_with(script, &vars)[0]
                .iter()
                .map(|w| (w.text.clone(), w.verbatim, w.dynamic.is_some()))
                .collect()
        };
        let w =
            words("exec kube-apiserver --a=$MODE --b=\"${MODE},x\" '--c=$MODE' --d=$ --e=cost$");
        assert_eq!(w[2], ("--a=AlwaysAllow".into(), false, false));
        assert_eq!(w[3], ("--b=AlwaysAllow,x".into(), false, false));
        assert_eq!(w[4], ("--c=$MODE".into(), false, false));
        assert_eq!(w[5], ("--d=$".into(), true, false));
        assert_eq!(w[6], ("--e=cost$".into(), true, false));
        for script in [
            "x --a=$UNSET",
            "x --a=$SECRET",
            "x --a=$SPACED",
            "x --a=$(cat /f)",
            "x --a=`cat /f`",
            "x --a=$1",
            "x --a=${MODE:-y}",
        ] {
            let w = &words(script)[1];
            assert!(w.2, "{script}: {w:?}");
            assert!(w.1, "{script}: the written bytes, editable");
            assert_eq!(w.0, script[2..], "kept as written");
        }
        // Quoted, a value with spaces is one word.
        assert_eq!(words("x \"--a=$SPACED\"")[1].0, "--a=a b");
    }
}
