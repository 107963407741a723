//! Command-line flags as the component's own parser reads them.
//!
//! kube-apiserver, kube-controller-manager and kube-scheduler parse with spf13/pflag; etcd
//! with Go's `flag` package. The rules both follow, and that we follow here:
//! - `--name=value` always works; `--name value` takes the next argument as the value for
//!   every flag that is not boolean;
//! - a bare boolean (`--client-cert-auth`) means true; `--bool false` does **not** set it to
//!   false: `false` becomes a positional argument, and none of these components accept one
//!   (they refuse to start), so positional arguments are kept as `stray`;
//! - a scalar flag given twice: the last occurrence wins;
//! - list flags (pflag `StringSlice`, e.g. `--enable-admission-plugins`) *append* across
//!   occurrences, and `--feature-gates` merges key by key;
//! - `--` ends the flags.
//!
//! etcd also reads `ETCD_<FLAG_NAME>` environment variables for flags not given on the
//! command line.

use std::ops::Range;

/// What kind of value a flag takes; decides how `--f v` and repeats are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlagKind {
    /// `true`/`false`; a bare flag means true.
    Bool,
    /// A single value; the last occurrence wins.
    #[default]
    Scalar,
    /// A whole number (read like a scalar; anything else stops the component).
    Int,
    /// A comma-separated list; occurrences append.
    List,
    /// `key=value` pairs separated by commas; occurrences merge.
    Map,
}

/// Where an argument came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgSource {
    /// `spec.containers[].command`.
    Command,
    /// `spec.containers[].args`.
    Args,
    /// A word of a `sh -c` script.
    Shell,
    /// An environment variable (etcd `ETCD_*`).
    Env,
}

/// One argv word with where it sits in the source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// The word as the program receives it.
    pub text: String,
    /// Byte range of this word in the manifest source, when it can be edited in place.
    pub span: Option<Range<usize>>,
    /// Where the word came from.
    pub source: ArgSource,
    /// `$(VAR)` was expanded in it: the component receives `text`, the file holds other bytes.
    pub expanded: bool,
}

/// One occurrence of a flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagUse {
    /// Name without dashes (`anonymous-auth`).
    pub name: String,
    /// The value as written; `None` for a bare flag.
    pub value: Option<String>,
    /// Index in [`Flags::args`] of the word that names the flag.
    pub arg: usize,
    /// Index of the separate value word, for `--name value`.
    pub value_arg: Option<usize>,
}

/// The flags of one component invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// The words after the executable, in order.
    pub args: Vec<Arg>,
    /// Every flag occurrence, in order.
    pub uses: Vec<FlagUse>,
    /// Indices of positional words (the component will refuse to start).
    pub stray: Vec<usize>,
    /// A flag that wanted a value but was last on the line.
    pub missing_value: Vec<String>,
}

impl Flags {
    /// Parses `args` (the words after the executable) with `kind_of` telling each flag's kind.
    pub fn parse(args: Vec<Arg>, kind_of: &dyn Fn(&str) -> FlagKind) -> Self {
        let mut flags = Flags {
            args,
            ..Flags::default()
        };
        let mut i = 0;
        let mut only_positional = false;
        while i < flags.args.len() {
            let text = flags.args[i].text.as_str();
            if only_positional || !text.starts_with('-') || text == "-" {
                flags.stray.push(i);
                i += 1;
                continue;
            }
            if text == "--" {
                only_positional = true;
                i += 1;
                continue;
            }
            let body = text.trim_start_matches('-');
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            let mut value_arg = None;
            let value = if value.is_none() && kind_of(&name) != FlagKind::Bool {
                if i + 1 < flags.args.len() {
                    value_arg = Some(i + 1);
                    Some(flags.args[i + 1].text.clone())
                } else {
                    flags.missing_value.push(name.clone());
                    None
                }
            } else {
                value
            };
            flags.uses.push(FlagUse {
                name,
                value,
                arg: i,
                value_arg,
            });
            i += value_arg.map_or(1, |_| 2);
        }
        flags
    }

    /// Adds etcd's `ETCD_*` environment fallbacks for flags not set on the command line.
    pub fn add_env_fallbacks<'a>(&mut self, env: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("ETCD_") else {
                continue;
            };
            let name = rest.to_ascii_lowercase().replace('_', "-");
            if self.is_set(&name) {
                continue; // etcd: the command line wins over the environment
            }
            self.args.push(Arg {
                text: format!("{key}={value}"),
                span: None,
                source: ArgSource::Env,
                expanded: false,
            });
            self.uses.push(FlagUse {
                name,
                value: Some(value.to_string()),
                arg: self.args.len() - 1,
                value_arg: None,
            });
        }
    }

    /// True when the flag occurs at least once.
    pub fn is_set(&self, name: &str) -> bool {
        self.uses.iter().any(|u| u.name == name)
    }

    /// The occurrences of one flag.
    pub fn uses_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a FlagUse> + 'a {
        self.uses.iter().filter(move |u| u.name == name)
    }

    /// The effective value of a scalar or boolean flag: the last occurrence; a bare flag is
    /// `"true"`.
    pub fn value(&self, name: &str) -> Option<String> {
        self.uses_of(name)
            .last()
            .map(|u| u.value.clone().unwrap_or_else(|| "true".into()))
    }

    /// The effective items of a list flag: every occurrence appended, split on commas,
    /// trimmed, empty items dropped.
    pub fn list(&self, name: &str) -> Option<Vec<String>> {
        let mut items = Vec::new();
        let mut seen = false;
        for u in self.uses_of(name) {
            seen = true;
            if let Some(v) = &u.value {
                items.extend(split_list(v));
            }
        }
        seen.then_some(items)
    }

    /// The effective entries of a map flag (`--feature-gates=A=true,B=false`), merged
    /// across occurrences; a later key replaces an earlier one.
    pub fn map(&self, name: &str) -> Option<Vec<(String, String)>> {
        let items = self.list(name)?;
        let mut out: Vec<(String, String)> = Vec::new();
        for item in items {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
                None => (item.trim().to_string(), String::new()),
            };
            out.retain(|(key, _)| *key != k);
            out.push((k, v));
        }
        Some(out)
    }

    /// The effective value rendered as text, whatever the kind.
    pub fn effective(&self, name: &str, kind: FlagKind) -> Option<String> {
        match kind {
            FlagKind::Bool | FlagKind::Scalar | FlagKind::Int => self.value(name),
            FlagKind::List => self.list(name).map(|l| l.join(",")),
            FlagKind::Map => self.map(name).map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        }
    }
}

/// Splits a comma list the way pflag's `StringSlice` does for simple values.
pub fn split_list(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Go's `strconv.ParseBool`.
pub fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Arg> {
        words
            .iter()
            .map(|w| Arg {
                text: w.to_string(),
                span: None,
                source: ArgSource::Command,
                expanded: false,
            })
            .collect()
    }

    fn kinds(name: &str) -> FlagKind {
        match name {
            "client-cert-auth" | "anonymous-auth" | "profiling" => FlagKind::Bool,
            "enable-admission-plugins" => FlagKind::List,
            "feature-gates" => FlagKind::Map,
            _ => FlagKind::Scalar,
        }
    }

    #[test]
    fn equals_space_and_bare_boolean_forms() {
        let f = Flags::parse(
            args(&[
                "--secure-port",
                "6443",
                "--client-cert-auth",
                "--profiling=false",
            ]),
            &kinds,
        );
        assert_eq!(f.value("secure-port").as_deref(), Some("6443"));
        assert_eq!(f.value("client-cert-auth").as_deref(), Some("true"));
        assert_eq!(f.value("profiling").as_deref(), Some("false"));
        assert!(f.stray.is_empty());
    }

    #[test]
    fn boolean_with_separate_value_leaves_a_stray_argument() {
        let f = Flags::parse(args(&["--anonymous-auth", "false"]), &kinds);
        assert_eq!(f.value("anonymous-auth").as_deref(), Some("true"));
        assert_eq!(f.stray, vec![1]);
    }

    #[test]
    fn last_occurrence_wins_for_scalars_lists_append_maps_merge() {
        let f = Flags::parse(
            args(&[
                "--profiling=true",
                "--profiling=false",
                "--enable-admission-plugins=NodeRestriction",
                "--enable-admission-plugins= EventRateLimit ,",
                "--feature-gates=A=true,B=false",
                "--feature-gates=A=false",
            ]),
            &kinds,
        );
        assert_eq!(f.value("profiling").as_deref(), Some("false"));
        assert_eq!(
            f.list("enable-admission-plugins").unwrap(),
            ["NodeRestriction", "EventRateLimit"]
        );
        assert_eq!(
            f.map("feature-gates").unwrap(),
            [
                ("B".to_string(), "false".to_string()),
                ("A".into(), "false".into())
            ]
        );
    }

    #[test]
    fn double_dash_ends_flags_and_missing_values_are_noted() {
        let f = Flags::parse(args(&["--a=1", "--", "--b=2", "--c"]), &kinds);
        assert!(f.is_set("a") && !f.is_set("b"));
        assert_eq!(f.stray, vec![2, 3]);
        let f = Flags::parse(args(&["--etcd-servers"]), &kinds);
        assert_eq!(f.missing_value, ["etcd-servers"]);
    }

    #[test]
    fn etcd_environment_fills_only_unset_flags() {
        let mut f = Flags::parse(args(&["--cert-file=/a"]), &kinds);
        f.add_env_fallbacks([
            ("ETCD_CERT_FILE", "/b"),
            ("ETCD_KEY_FILE", "/k"),
            ("HOME", "/"),
        ]);
        assert_eq!(f.value("cert-file").as_deref(), Some("/a"));
        assert_eq!(f.value("key-file").as_deref(), Some("/k"));
        assert!(!f.is_set("home"));
    }

    #[test]
    fn go_bool_forms() {
        assert_eq!(parse_go_bool("T"), Some(true));
        assert_eq!(parse_go_bool("0"), Some(false));
        assert_eq!(parse_go_bool("yes"), None);
    }
}
