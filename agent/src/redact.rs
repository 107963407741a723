//! Redaction of secrets in manifest text before it leaves the node (DESIGN invariant 7), and
//! the unified diffs that events carry.
//!
//! Redaction works on lines, not on the parsed pod, so that it also covers a manifest that
//! does not parse. It replaces:
//! - the value of a sensitive flag, in `--flag=value` form or as the next list item after a
//!   bare `--flag`;
//! - every container environment value (`value:` right after `- name:`), since an env var can
//!   carry anything and the flags of the control plane do not need it to be read.

use similar::TextDiff;

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

/// Redacts the values of flags for which `sensitive` is true, and all env values.
pub fn redact(text: &str, sensitive: &dyn Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_item = false; // a bare sensitive flag: its value is the next list item
    let mut pending_env = false; // `- name:` seen: the next `value:` is an env value
    for line in text.split_inclusive('\n') {
        let (body, eol) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let trimmed = body.trim_start();
        let indent = &body[..body.len() - trimmed.len()];
        if pending_item && trimmed.starts_with("- ") && !trimmed[2..].trim().starts_with("--") {
            out.push_str(indent);
            out.push_str("- ");
            out.push_str(REDACTED);
            out.push_str(eol);
            pending_item = false;
            continue;
        }
        if pending_env
            && let Some(rest) = trimmed.strip_prefix("value:")
            && !rest.trim().is_empty()
        {
            out.push_str(indent);
            out.push_str("value: ");
            out.push_str(REDACTED);
            out.push_str(eol);
            pending_env = false;
            continue;
        }
        pending_env = trimmed.starts_with("- name:") || (pending_env && !trimmed.starts_with('-'));
        let (redacted, bare) = redact_flags_in_line(body, sensitive);
        pending_item = bare;
        out.push_str(&redacted);
        out.push_str(eol);
    }
    out
}

/// Redacts `--flag=value` values in one line; returns whether the line ends with a bare
/// sensitive `--flag` whose value is on the next line.
fn redact_flags_in_line(line: &str, sensitive: &dyn Fn(&str) -> bool) -> (String, bool) {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    let mut bare = false;
    while i < bytes.len() {
        let at_token_start = i == 0 || matches!(bytes[i - 1], b' ' | b'"' | b'\'' | b'[' | b',');
        if at_token_start && line[i..].starts_with("--") {
            let name_start = i + 2;
            let mut j = name_start;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'-') {
                j += 1;
            }
            let name = &line[name_start..j];
            out.push_str(&line[i..j]);
            i = j;
            if !name.is_empty() && sensitive(name) {
                if i < bytes.len() && bytes[i] == b'=' {
                    out.push('=');
                    i += 1;
                    let mut k = i;
                    while k < bytes.len() && !matches!(bytes[k], b' ' | b'"' | b'\'' | b',' | b']')
                    {
                        k += 1;
                    }
                    if k > i {
                        out.push_str(REDACTED);
                    }
                    i = k;
                } else {
                    bare = line[i..]
                        .trim_matches(|c| c == '"' || c == '\'' || c == ' ')
                        .is_empty();
                }
            }
            continue;
        }
        let ch = line[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    (out, bare)
}

/// A unified diff from `old` to `new` (`None` = no file), labelled with `path`, at most
/// [`MAX_DIFF_BYTES`].
pub fn unified_diff(path: &str, old: Option<&str>, new: Option<&str>) -> String {
    let a = old.unwrap_or("");
    let b = new.unwrap_or("");
    let from = if old.is_some() {
        format!("a{path}")
    } else {
        "/dev/null".into()
    };
    let to = if new.is_some() {
        format!("b{path}")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str) -> bool {
        name == "initial-cluster-token" || sensitive_by_name(name)
    }

    #[test]
    fn equals_form_is_redacted_and_the_rest_kept() {
        let text = "    - --initial-cluster-token=hunter2\n    - --name=etcd-0\n";
        assert_eq!(
            redact(text, &s),
            "    - --initial-cluster-token=<redacted>\n    - --name=etcd-0\n"
        );
    }

    #[test]
    fn quoted_and_flow_forms_are_redacted() {
        let text = "command: [\"etcd\", \"--initial-cluster-token=abc\", \"--x=1\"]\n";
        assert_eq!(
            redact(text, &s),
            "command: [\"etcd\", \"--initial-cluster-token=<redacted>\", \"--x=1\"]\n"
        );
        let text = "    - sh\n    - -c\n    - etcd --oidc-client-secret=abc --y=2\n";
        assert!(redact(text, &s).contains("--oidc-client-secret=<redacted> --y=2"));
    }

    #[test]
    fn separate_value_item_is_redacted() {
        let text = "    - --initial-cluster-token\n    - hunter2\n    - --name\n    - etcd-0\n";
        assert_eq!(
            redact(text, &s),
            "    - --initial-cluster-token\n    - <redacted>\n    - --name\n    - etcd-0\n"
        );
    }

    #[test]
    fn env_values_are_redacted_but_names_kept() {
        let text = "    env:\n    - name: ETCD_INITIAL_CLUSTER_TOKEN\n      value: hunter2\n    - name: X\n      valueFrom:\n        fieldRef: {fieldPath: status.podIP}\n";
        let r = redact(text, &s);
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("ETCD_INITIAL_CLUSTER_TOKEN"));
        assert!(r.contains("fieldPath: status.podIP"));
    }

    #[test]
    fn flags_that_only_name_a_file_are_not_redacted() {
        let text = "    - --secret-store-file=/etc/x\n    - --insecure-allow-any-token=true\n";
        assert_eq!(redact(text, &s), text);
    }

    #[test]
    fn diff_shows_the_change_with_labels() {
        let d = unified_diff("/m/a.yaml", Some("a\nb\n"), Some("a\nc\n"));
        assert!(d.contains("--- a/m/a.yaml"), "{d}");
        assert!(d.contains("-b\n+c\n"), "{d}");
        let d = unified_diff("/m/a.yaml", None, Some("x\n"));
        assert!(d.contains("--- /dev/null"), "{d}");
    }

    #[test]
    fn long_diffs_are_cut_with_a_note() {
        let big: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        let d = unified_diff("/a", None, Some(&big));
        assert!(d.len() < MAX_DIFF_BYTES + 100);
        assert!(d.contains("[diff cut:"));
    }
}
