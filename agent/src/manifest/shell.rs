//! Just enough of the POSIX shell word syntax to read `sh -c "exec kube-apiserver ..."`.
//!
//! Splits a script into simple commands (on `;`, `&&`, `||`, `|`, `&` and newlines) and each
//! command into words, honouring single quotes, double quotes and backslashes. Expansions
//! (`$VAR`, `$(...)`) are kept as literal text: we report what is written, not what a shell
//! would compute at run time.

use std::ops::Range;

/// One word of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word after quote removal.
    pub text: String,
    /// Byte range of the word in the script.
    pub range: Range<usize>,
    /// True when the source bytes are exactly `text` (no quoting or escapes), so the word can
    /// be edited in place.
    pub verbatim: bool,
}

/// Splits a script into commands of words.
pub fn split_commands(script: &str) -> Vec<Vec<Word>> {
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
                commands.last_mut().expect("never empty").push(Word {
                    text: String::from_utf8_lossy(&text).into_owned(),
                    range: start..end,
                    verbatim,
                });
            }
        }
    }
    commands.retain(|c| !c.is_empty());
    commands
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
}
