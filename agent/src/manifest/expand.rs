//! `$(VAR)` in `command`, `args` and `env` values, expanded as the kubelet does before it
//! starts the container (`third_party/forked/golang/expansion` in kubernetes/kubernetes):
//! - `$(NAME)` is the value of the container's variable `NAME`, when it is defined;
//! - an undefined `$(NAME)`, and an unclosed `$(`, stay as written;
//! - `$$` is a literal `$` (so `$$(NAME)` is the literal `$(NAME)`);
//! - `$` before anything else stays as written.
//!
//! An `env` value may use the variables defined before it. A variable set through
//! `valueFrom` (a secret, a ConfigMap, a field) has a value only the kubelet knows: a word
//! that uses one is kept as written and reported.

use std::borrow::Cow;
use std::collections::HashMap;

/// The container's variables, in the kubelet's order: name → value, `None` when it comes
/// from `valueFrom`.
#[derive(Debug, Default)]
pub struct Env {
    vars: HashMap<String, Option<String>>,
    /// `envFrom` is set: any other name may be defined at run time.
    open: bool,
}

/// A word after expansion.
pub enum Expanded<'a> {
    /// What the component receives (unchanged: borrowed).
    Known(Cow<'a, str>),
    /// The word uses this variable, whose value is set at run time.
    RunTime(String),
}

impl Env {
    /// Resolves `env` entries in order, each value expanded with the ones before it; with
    /// `env_from`, names not in `env` may come from a ConfigMap or Secret (`envFrom`).
    pub fn resolve(entries: &[(String, Option<String>)], env_from: bool) -> Env {
        let mut env = Env {
            open: env_from,
            ..Env::default()
        };
        for (name, value) in entries {
            let value = match value {
                Some(v) => match env.expand(v) {
                    Expanded::Known(v) => Some(v.into_owned()),
                    Expanded::RunTime(_) => None,
                },
                None => None,
            };
            env.vars.insert(name.clone(), value);
        }
        env
    }

    /// The value of a variable: `None` when undefined, `Some(None)` when set at run time.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        match self.vars.get(name) {
            Some(v) => Some(v.as_deref()),
            None if self.open => Some(None),
            None => None,
        }
    }

    /// Expands one word.
    pub fn expand<'a>(&self, input: &'a str) -> Expanded<'a> {
        if !input.contains('$') {
            return Expanded::Known(Cow::Borrowed(input));
        }
        let bytes = input.as_bytes();
        let mut out = String::with_capacity(input.len());
        let mut checkpoint = 0;
        let mut cursor = 0;
        while cursor < bytes.len() {
            if bytes[cursor] != b'$' || cursor + 1 >= bytes.len() {
                cursor += 1;
                continue;
            }
            out.push_str(&input[checkpoint..cursor]);
            let rest = &input[cursor + 1..];
            let advance = match rest.as_bytes()[0] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match self.get(name) {
                            Some(Some(v)) => out.push_str(v),
                            Some(None) => return Expanded::RunTime(name.to_string()),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // `$` and the character after it, as written.
                    let c = rest.chars().next().unwrap_or_default();
                    out.push('$');
                    out.push(c);
                    c.len_utf8()
                }
            };
            cursor += advance + 1;
            checkpoint = cursor;
        }
        out.push_str(&input[checkpoint..]);
        if out == input {
            Expanded::Known(Cow::Borrowed(input))
        } else {
            Expanded::Known(Cow::Owned(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, Option<&str>)]) -> Env {
        let entries: Vec<(String, Option<String>)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect();
        Env::resolve(&entries, false)
    }

    fn known(e: &Env, s: &str) -> String {
        match e.expand(s) {
            Expanded::Known(v) => v.into_owned(),
            Expanded::RunTime(n) => panic!("{s}: run-time {n}"),
        }
    }

    #[test]
    fn expands_as_the_kubelet_does() {
        let e = env(&[("MODE", Some("AlwaysAllow")), ("EMPTY", Some(""))]);
        // The cases of kubernetes' expand_test.go that apply to one word.
        for (input, want) in [
            (
                "--authorization-mode=$(MODE)",
                "--authorization-mode=AlwaysAllow",
            ),
            ("$(MODE)$(MODE)", "AlwaysAllowAlwaysAllow"),
            ("$(EMPTY)x", "x"),
            ("$$(MODE)", "$(MODE)"),
            ("$$$(MODE)", "$AlwaysAllow"),
            ("$$$$(MODE)", "$$(MODE)"),
            ("$(UNDEFINED)", "$(UNDEFINED)"),
            ("$(MODE", "$(MODE"),
            ("$(", "$("),
            ("$", "$"),
            ("a$", "a$"),
            ("$x$(MODE)", "$xAlwaysAllow"),
            ("$é$(MODE)", "$éAlwaysAllow"),
            ("$()", "$()"),
            ("no dollar", "no dollar"),
        ] {
            assert_eq!(known(&e, input), want, "{input}");
        }
    }

    #[test]
    fn env_values_use_the_variables_before_them_only() {
        let e = env(&[
            ("A", Some("a")),
            ("B", Some("$(A)-$(C)")),
            ("C", Some("c")),
            ("D", None),
        ]);
        assert_eq!(e.get("B"), Some(Some("a-$(C)")));
        assert!(matches!(e.expand("--x=$(D)"), Expanded::RunTime(n) if n == "D"));
        // A redefinition wins for what follows.
        let e = env(&[("A", Some("1")), ("A", Some("2"))]);
        assert_eq!(known(&e, "$(A)"), "2");
        // With envFrom, a name not in env may be defined at run time.
        let e = Env::resolve(&[("A".into(), Some("1".into()))], true);
        assert_eq!(known(&e, "$(A)"), "1");
        assert!(matches!(e.expand("$(B)"), Expanded::RunTime(n) if n == "B"));
    }
}
