//! `check --format sarif | junit | openreports | policyreport` as a pipeline reads them: each
//! output is parsed with a real parser (serde_json, roxmltree, a YAML parser) and checked
//! against the format's own rules, and against the JSON output of the same check.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_lockdown-agent");

fn fixtures(v: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/kubeadm")
        .join(v)
}

/// Runs `check` with a config that only names the node.
fn check(node: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    fs::write(
        &config,
        format!("node_name: {}\n", serde_json::to_string(node).unwrap()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run lockdown-agent");
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The JSON output of the same check: (path, finding) pairs.
fn findings(args: &[&str]) -> Vec<(String, Value)> {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    let v: Value = serde_json::from_slice(&check("node-1", &all).stdout).unwrap();
    v["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            let path = f["path"].as_str().unwrap().to_string();
            f["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |x| (path.clone(), x.clone()))
        })
        .collect()
}

/// A kube-apiserver manifest with `--profiling=true` at a known line, `lead` lines of
/// comments put in front.
fn manifest_with_profiling(dir: &Path, lead: usize) -> PathBuf {
    let src = fs::read_to_string(fixtures("v1.31").join("kube-apiserver.yaml")).unwrap();
    let src = src.replace(
        "    - --secure-port=6443\n",
        "    - --secure-port=6443\n    - --profiling=true\n",
    );
    let path = dir.join("kube-apiserver.yaml");
    fs::write(&path, "# moved\n".repeat(lead) + &src).unwrap();
    path
}

fn sarif(path: &Path) -> Value {
    serde_json::from_slice(&check("node-1", &["--format", "sarif", path.to_str().unwrap()]).stdout)
        .unwrap()
}

#[test]
fn sarif_is_what_github_code_scanning_reads() {
    let args = [fixtures("v1.31"), fixtures("v1.24")];
    let args: Vec<&str> = args.iter().map(|p| p.to_str().unwrap()).collect();
    let mut all = vec!["--format", "sarif"];
    all.extend_from_slice(&args);
    let v: Value = serde_json::from_slice(&check("node-1", &all).stdout).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert!(v["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "kube-lockdown");
    let rules = driver["rules"].as_array().unwrap();
    let ids: BTreeSet<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), rules.len(), "rule ids are unique");
    for r in rules {
        for field in ["shortDescription", "fullDescription", "help"] {
            assert!(!r[field]["text"].as_str().unwrap().is_empty(), "{r}");
        }
        let sev: f64 = r["properties"]["security-severity"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((0.1..=10.0).contains(&sev), "{r}");
    }
    let results = runs[0]["results"].as_array().unwrap();
    // One result per failing or warning finding, no more.
    let open = findings(&args)
        .into_iter()
        .filter(|(_, f)| f["status"] == "fail" || f["status"] == "warn")
        .count();
    assert_eq!(results.len(), open);
    for r in results {
        let id = r["ruleId"].as_str().unwrap();
        let index = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[index]["id"], id);
        assert!(
            matches!(r["level"].as_str(), Some("error" | "warning")),
            "{r}"
        );
        assert!(!r["message"]["text"].as_str().unwrap().is_empty());
        let loc = &r["locations"][0]["physicalLocation"];
        let uri = loc["artifactLocation"]["uri"].as_str().unwrap();
        let file = uri
            .strip_prefix("file://")
            .expect("absolute paths are file URIs");
        assert!(Path::new(file).exists(), "{uri}");
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1);
        assert!(loc["region"]["startColumn"].as_u64().unwrap() >= 1);
        assert!(
            r["partialFingerprints"]["kubeLockdown/v1"]
                .as_str()
                .unwrap()
                .len()
                >= 16
        );
    }
}

#[test]
fn sarif_points_at_the_flag_and_fingerprints_survive_moved_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = manifest_with_profiling(dir.path(), 0);
    let find = |v: &Value| -> (u64, u64, BTreeMap<String, String>) {
        let results = v["runs"][0]["results"].as_array().unwrap();
        let r = results
            .iter()
            .find(|r| r["ruleId"] == "apiserver-profiling")
            .expect("the profiling finding");
        let region = &r["locations"][0]["physicalLocation"]["region"];
        let prints = results
            .iter()
            .map(|r| {
                (
                    r["partialFingerprints"]["kubeLockdown/v1"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                    r["ruleId"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        (
            region["startLine"].as_u64().unwrap(),
            region["startColumn"].as_u64().unwrap(),
            prints,
        )
    };
    let (line, col, before) = find(&sarif(&path));
    let text = fs::read_to_string(&path).unwrap();
    let at = text.lines().nth(line as usize - 1).unwrap();
    assert!(
        at[col as usize - 1..].starts_with("--profiling=true"),
        "line {line} col {col}: {at:?}"
    );
    // Three lines put in front: the same results, three lines further down.
    manifest_with_profiling(dir.path(), 3);
    let (line2, col2, after) = find(&sarif(&path));
    assert_eq!((line2, col2), (line + 3, col));
    assert_eq!(before, after, "fingerprints do not depend on line numbers");
}

#[test]
fn junit_has_a_suite_per_section_and_failures_carry_the_remediation() {
    let dir = fixtures("v1.31");
    let out = check("node-1", &["--format", "junit", dir.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
    let names: Vec<&str> = suites
        .iter()
        .map(|s| s.attribute("name").unwrap())
        .collect();
    for section in ["1.1 ", "1.2 ", "1.3 ", "1.4 ", "2 "] {
        assert!(
            names.iter().any(|n| n.starts_with(section)),
            "{section}: {names:?}"
        );
    }
    let (mut failures, mut cases) = (0, 0);
    for s in &suites {
        assert_eq!(s.tag_name().name(), "testsuite");
        let tcs: Vec<_> = s
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let count = |tag: &str| {
            tcs.iter()
                .filter(|t| t.children().any(|c| c.has_tag_name(tag)))
                .count()
        };
        let attr = |a: &str| s.attribute(a).unwrap().parse::<usize>().unwrap();
        assert_eq!(attr("tests"), tcs.len());
        assert_eq!(attr("failures"), count("failure"));
        assert_eq!(attr("skipped"), count("skipped"));
        for t in &tcs {
            assert!(t.attribute("name").is_some() && t.attribute("classname").is_some());
            if let Some(f) = t.children().find(|c| c.has_tag_name("failure")) {
                assert!(!f.attribute("message").unwrap().is_empty());
                assert!(f.text().unwrap().contains(f.attribute("message").unwrap()));
            }
            // The finding itself, as JSON.
            let out = t.children().find(|c| c.has_tag_name("system-out")).unwrap();
            let f: Value = serde_json::from_str(out.text().unwrap()).unwrap();
            assert!(
                t.attribute("name")
                    .unwrap()
                    .contains(f["title"].as_str().unwrap())
            );
        }
        failures += count("failure");
        cases += tcs.len();
    }
    let json = findings(&[dir.to_str().unwrap()]);
    assert_eq!(cases, json.len());
    assert_eq!(
        failures,
        json.iter().filter(|(_, f)| f["status"] == "fail").count()
    );
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn policy_report(format: &str, node: &str, dir: &Path) -> Value {
    let out = check(node, &["--format", format, dir.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn openreports_and_policyreport_are_valid_cluster_scoped_reports_of_the_node() {
    let dir = fixtures("v1.31");
    let json = findings(&[dir.to_str().unwrap()]);
    for (format, api, kind) in [
        ("openreports", "openreports.io/v1alpha1", "ClusterReport"),
        (
            "policyreport",
            "wgpolicyk8s.io/v1alpha2",
            "ClusterPolicyReport",
        ),
    ] {
        let long = "very-long-node-name.".repeat(6) + "x";
        for node in ["cp-1", "cp-1.example.com", &long] {
            let v = policy_report(format, node, &dir);
            assert_eq!(v["apiVersion"], api);
            assert_eq!(v["kind"], kind);
            assert!(v["metadata"].get("namespace").is_none(), "cluster-scoped");
            let name = v["metadata"]["name"].as_str().unwrap();
            assert!(dns_label(name), "{name:?} is not a DNS label");
            assert_eq!(v["scope"]["kind"], "Node");
            assert_eq!(v["scope"]["apiVersion"], "v1");
            assert_eq!(v["scope"]["name"], node);
            let results = v["results"].as_array().unwrap();
            assert_eq!(results.len(), json.len());
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for r in results {
                let result = r["result"].as_str().unwrap();
                assert!(
                    matches!(result, "pass" | "fail" | "warn" | "error" | "skip"),
                    "{r}"
                );
                *counts.entry(result).or_default() += 1;
                assert!(matches!(
                    r["severity"].as_str(),
                    Some("critical" | "high" | "medium" | "low" | "info")
                ));
                assert_eq!(r["source"], "kube-lockdown");
                for field in ["policy", "rule", "category", "message"] {
                    assert!(!r[field].as_str().unwrap().is_empty(), "{field}: {r}");
                }
                assert!(r["timestamp"]["seconds"].as_i64().unwrap() > 0);
                assert!(r["scored"].is_boolean());
                let props = r["properties"].as_object().unwrap();
                assert!(props.values().all(Value::is_string), "{r}");
                assert!(props.contains_key("file"));
            }
            for (k, n) in counts {
                assert_eq!(v["summary"][k].as_u64(), Some(n), "{k}");
            }
            // A CIS check: policy is the CIS id, the category its section, observed and
            // expected among the properties.
            let r = results
                .iter()
                .find(|r| r["rule"] == "apiserver-profiling")
                .unwrap();
            assert_eq!(r["policy"], "1.2.15");
            assert_eq!(r["category"], "1.2 API Server");
            assert!(r["properties"]["observed"].is_string());
            assert!(r["properties"]["expected"].is_string());
        }
    }
}

#[test]
fn a_large_directory_is_reported_in_order_whatever_the_cores_do() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    for i in 0..300 {
        for v in ["v1.24", "v1.28", "v1.31"] {
            for entry in fs::read_dir(fixtures(v)).unwrap() {
                let src = entry.unwrap().path();
                if i % 50 != 0 && !src.ends_with("kube-scheduler.yaml") {
                    continue;
                }
                let name = format!("{i:03}-{v}-{}", src.file_name().unwrap().to_string_lossy());
                fs::copy(&src, dir.path().join(&name)).unwrap();
                want.push(dir.path().join(name).display().to_string());
            }
        }
    }
    want.sort();
    let out = check(
        "node-1",
        &["--format", "json", dir.path().to_str().unwrap()],
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<&str> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(want.len() > 256, "more than one batch");
    assert_eq!(got, want);
    // Copies of one manifest (evaluated once) report exactly what the original does alone.
    for v in ["v1.24", "v1.28", "v1.31"] {
        let original = fixtures(v).join("kube-scheduler.yaml");
        let alone: Value = serde_json::from_slice(
            &check("node-1", &["--format", "json", original.to_str().unwrap()]).stdout,
        )
        .unwrap();
        let want = &alone["files"][0]["findings"];
        let copies: Vec<&Value> = report["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| {
                f["path"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("-{v}-kube-scheduler.yaml"))
            })
            .collect();
        assert_eq!(copies.len(), 300);
        for c in copies {
            assert_eq!(&c["findings"], want, "{}", c["path"]);
        }
    }
}

#[test]
fn values_from_the_env_do_not_leave_the_node_in_the_pipeline_formats() {
    // A flag whose value comes from the container env through $(VAR): env values are
    // secrets to the redactor, so SARIF, JUnit and the reports show it redacted; the local
    // JSON still shows what the component receives.
    let dir = tempfile::tempdir().unwrap();
    let src = fs::read_to_string(fixtures("v1.31").join("kube-apiserver.yaml")).unwrap();
    let src = src
        .replace(
            "    - --secure-port=6443\n",
            "    - --secure-port=6443\n    - --tls-cipher-suites=$(SUITES)\n",
        )
        .replace(
            "    name: kube-apiserver\n",
            "    name: kube-apiserver\n    env:\n    - {name: SUITES, value: S3CRET_SUITE}\n",
        );
    let path = dir.path().join("kube-apiserver.yaml");
    fs::write(&path, src).unwrap();
    let p = path.to_str().unwrap();
    let json = check("node-1", &["--format", "json", p]);
    assert!(String::from_utf8_lossy(&json.stdout).contains("S3CRET_SUITE"));
    for format in ["sarif", "junit", "openreports", "policyreport"] {
        let out = check("node-1", &["--format", format, p]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("tls-cipher-suites"), "{format}");
        assert!(!text.contains("S3CRET_SUITE"), "{format}: {text}");
    }
}
