//! What `collector/deploy/` ships for Prometheus and Grafana: the alerting rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`), every query of the
//! Grafana dashboard parses as PromQL, and every metric either names is one the collector
//! or the agent serves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../collector/deploy")
}

fn promtool(dir: &Path, args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool: install the Debian package prometheus");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The metric names `text` mentions (a histogram's series by its family's name).
fn metrics_named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("lockdown_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
            .unwrap_or(name);
        out.insert(base.to_string());
        i = end;
    }
    out
}

/// Every metric family the collector and the agent serve, from their code.
fn served() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ["collector/src/metrics.rs", "agent/src/metrics.rs"]
        .iter()
        .map(|p| std::fs::read_to_string(root.join(p)).unwrap())
        .collect()
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_unit_tests() {
    promtool(&deploy(), &["check", "rules", "prometheus-rules.yml"]);
    promtool(&deploy(), &["test", "rules", "prometheus-rules.test.yml"]);
    let rules = std::fs::read_to_string(deploy().join("prometheus-rules.yml")).unwrap();
    let served = served();
    for name in metrics_named(&rules) {
        assert!(
            served.contains(&format!("\"{name}")),
            "{name} is not served"
        );
    }
}

#[test]
fn every_dashboard_query_parses_and_names_served_metrics() {
    let text = std::fs::read_to_string(deploy().join("grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 15, "{exprs:?}");
    // promtool parses PromQL in rule files: each query as a recording rule.
    let dir = tempfile::tempdir().unwrap();
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "  - record: dashboard:query_{i}\n    expr: {}\n",
                serde_json::to_string(e).unwrap()
            )
        })
        .collect();
    std::fs::write(
        dir.path().join("queries.yml"),
        format!("groups:\n- name: dashboard\n  rules:\n{rules}"),
    )
    .unwrap();
    promtool(dir.path(), &["check", "rules", "queries.yml"]);
    let served = served();
    for name in metrics_named(&exprs.join("\n")) {
        assert!(
            served.contains(&format!("\"{name}")),
            "{name} is not served"
        );
    }
}
