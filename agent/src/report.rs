//! Rendering check results: a table for people and kube-bench's JSON layout for tools that
//! already read kube-bench results; [`stream`] has the formats written as the check runs
//! (JSON, the DESIGN.md contract; SARIF; JUnit; OpenReports and PolicyReport).

pub mod stream;

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{Value, json};

use crate::check::Report;
use crate::node::FileReport;
use crate::rules::{Finding, Severity, Status};

fn order(f: &Finding) -> (Status, std::cmp::Reverse<Severity>) {
    (f.status, std::cmp::Reverse(f.severity))
}

/// The table: files with errors and failures first; per file, failures then warnings, each
/// with its remediation; passes and skips as counts unless `verbose`.
pub fn table(report: &Report, verbose: bool) -> String {
    let mut files: Vec<&FileReport> = report.files.iter().collect();
    files.sort_by_key(|f| {
        let worst = f
            .findings
            .iter()
            .map(|x| x.status)
            .min()
            .unwrap_or(Status::Skip);
        (f.error.is_none(), worst)
    });
    let mut out = String::new();
    let mut totals: BTreeMap<Status, usize> = BTreeMap::new();
    for file in files {
        let what = match (&file.component, &file.version) {
            (Some(c), Some(v)) => format!(" ({c} {v})"),
            (Some(c), None) => format!(" ({c}, version unknown)"),
            _ => String::new(),
        };
        let _ = writeln!(out, "{}{what}", file.path);
        if let Some(e) = &file.error {
            let _ = writeln!(out, "  ERROR  {e}");
        }
        for n in &file.notes {
            let _ = writeln!(out, "  note   {n}");
        }
        let mut findings: Vec<&Finding> = file.findings.iter().collect();
        findings.sort_by_key(|f| order(f));
        let mut hidden: BTreeMap<Status, usize> = BTreeMap::new();
        for f in findings {
            *totals.entry(f.status).or_default() += 1;
            if !verbose && matches!(f.status, Status::Pass | Status::Skip) {
                *hidden.entry(f.status).or_default() += 1;
                continue;
            }
            let cis = f
                .cis
                .as_deref()
                .map(|c| format!(" [CIS {c}]"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<4}  {:<8} {}{cis}: {}",
                f.status.as_str().to_uppercase(),
                f.severity.as_str(),
                f.id,
                f.title
            );
            let flag = f
                .flag
                .as_deref()
                .map(|x| format!("{x}: "))
                .unwrap_or_default();
            if let Some(obs) = &f.observed {
                let exp = f
                    .expected
                    .as_deref()
                    .map(|e| format!("; expected {e}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "        {flag}observed {obs}{exp}");
            }
            if let Some(r) = &f.reason {
                let _ = writeln!(out, "        note: {r}");
            }
            if matches!(f.status, Status::Fail | Status::Warn) {
                let auto = if f.autofix { " (auto-fixable)" } else { "" };
                let _ = writeln!(out, "        fix{auto}: {}", f.remediation);
            }
        }
        if !hidden.is_empty() {
            let parts: Vec<String> = hidden
                .iter()
                .map(|(s, n)| format!("{n} {}", s.as_str()))
                .collect();
            let _ = writeln!(out, "  ({})", parts.join(", "));
        }
        out.push('\n');
    }
    let errors = report.files.iter().filter(|f| f.error.is_some()).count();
    let _ = writeln!(
        out,
        "{} files: {} fail, {} warn, {} pass, {} skip, {} errors",
        report.files.len(),
        totals.get(&Status::Fail).unwrap_or(&0),
        totals.get(&Status::Warn).unwrap_or(&0),
        totals.get(&Status::Pass).unwrap_or(&0),
        totals.get(&Status::Skip).unwrap_or(&0),
        errors
    );
    out
}

/// kube-bench's `--json` layout: Controls (1 master, 2 etcd) with sections and results.
pub fn kube_bench(report: &Report, cat: &crate::rules::Catalogue) -> String {
    let scored = |id: &str| {
        cat.rules
            .iter()
            .find(|r| &*r.id == id)
            .is_none_or(|r| r.scored)
    };
    let sections: [(&str, &str, &str); 5] = [
        ("1.1", "1", "Control Plane Node Configuration Files"),
        ("1.2", "1", "API Server"),
        ("1.3", "1", "Controller Manager"),
        ("1.4", "1", "Scheduler"),
        ("2", "2", "Etcd Node Configuration"),
    ];
    let mut by_section: BTreeMap<&str, Vec<(&FileReport, &Finding)>> = BTreeMap::new();
    for file in &report.files {
        for f in &file.findings {
            let Some(cis) = f.cis.as_deref() else {
                continue;
            };
            let section = sections
                .iter()
                .map(|s| s.0)
                .filter(|s| cis == *s || cis.starts_with(&format!("{s}.")))
                .max_by_key(|s| s.len());
            if let Some(s) = section {
                by_section.entry(s).or_default().push((file, f));
            }
        }
    }
    let status = |s: Status| match s {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Warn => "WARN",
        Status::Skip => "INFO",
    };
    let mut controls: BTreeMap<&str, Value> = BTreeMap::new();
    let mut grand = [0usize; 4];
    for (id, text, node_type) in [
        ("1", "Control Plane Security Configuration", "master"),
        ("2", "Etcd Node Configuration", "etcd"),
    ] {
        let mut tests = Vec::new();
        let mut ctotal = [0usize; 4];
        for (section, _, desc) in sections.iter().filter(|s| s.1 == id) {
            let mut results = Vec::new();
            let mut counts = [0usize; 4];
            let mut items = by_section.remove(section).unwrap_or_default();
            items.sort_by_key(|a| cis_key(a.1));
            for (file, f) in items {
                let idx = match f.status {
                    Status::Pass => 0,
                    Status::Fail => 1,
                    Status::Warn => 2,
                    Status::Skip => 3,
                };
                counts[idx] += 1;
                results.push(json!({
                    "test_number": f.cis,
                    "test_desc": f.title,
                    "audit": file.path,
                    "AuditEnv": "",
                    "AuditConfig": "",
                    "type": if f.status == Status::Skip { "skip" } else { "" },
                    "remediation": f.remediation,
                    "test_info": [f.remediation],
                    "status": status(f.status),
                    "actual_value": f.observed.clone().unwrap_or_default(),
                    "scored": scored(&f.id),
                    "IsMultiple": false,
                    "expected_result": f.expected.clone().unwrap_or_default(),
                    "reason": f.reason.clone().unwrap_or_default(),
                }));
            }
            for i in 0..4 {
                ctotal[i] += counts[i];
            }
            tests.push(json!({
                "section": section,
                "type": "",
                "pass": counts[0], "fail": counts[1], "warn": counts[2], "info": counts[3],
                "desc": desc,
                "results": results,
            }));
        }
        for i in 0..4 {
            grand[i] += ctotal[i];
        }
        controls.insert(id, json!({
            "id": id,
            "version": "cis-1.12",
            "detected_version": "",
            "text": text,
            "node_type": node_type,
            "tests": tests,
            "total_pass": ctotal[0], "total_fail": ctotal[1], "total_warn": ctotal[2], "total_info": ctotal[3],
        }));
    }
    let doc = json!({
        "Controls": controls.into_values().collect::<Vec<_>>(),
        "Totals": {"total_pass": grand[0], "total_fail": grand[1], "total_warn": grand[2], "total_info": grand[3]},
    });
    serde_json::to_string_pretty(&doc).expect("report serialises")
}

fn cis_key(f: &Finding) -> Vec<u32> {
    f.cis
        .as_deref()
        .unwrap_or("")
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `lockdown-agent rules`: the catalogue as a table.
pub fn rules_table(cat: &crate::rules::Catalogue) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<48} {:<7} {:<9} {:<24} {:<6} TITLE",
        "ID", "CIS", "SEVERITY", "TARGET", "FIX"
    );
    for r in &cat.rules {
        let target = match r.target {
            crate::rules::catalogue::Target::Component(c) => c.name().to_string(),
            crate::rules::catalogue::Target::AnyComponent => "any component".into(),
            crate::rules::catalogue::Target::Files(role) => serde_json::to_value(role)
                .ok()
                .and_then(|v| v.as_str().map(|s| format!("files:{s}")))
                .unwrap_or_default(),
        };
        // safe: applied in enforce mode; review: shown, applied only when named in fix.rules.
        let fix = match (&r.fix, r.safe) {
            (None, _) => "-",
            (_, true) => "safe",
            _ => "review",
        };
        let _ = writeln!(
            out,
            "{:<48} {:<7} {:<9} {:<24} {:<6} {}",
            r.id,
            r.cis.as_deref().unwrap_or("-"),
            r.severity.as_str(),
            target,
            fix,
            r.title
        );
    }
    let _ = writeln!(
        out,
        "\n{} rules; CVE table compiled {}",
        cat.rules.len(),
        cat.versions.compiled
    );
    out
}

/// `lockdown-agent rules --format json`.
pub fn rules_json(cat: &crate::rules::Catalogue) -> String {
    let rules: Vec<Value> = cat
        .rules
        .iter()
        .map(|r| {
            let (component, files) = match r.target {
                crate::rules::catalogue::Target::Component(c) => (Some(c.name().to_string()), None),
                crate::rules::catalogue::Target::AnyComponent => (Some("any".into()), None),
                crate::rules::catalogue::Target::Files(role) => (None, Some(role)),
            };
            json!({
                "id": r.id, "cis": r.cis, "component": component, "files": files,
                "title": r.title, "severity": r.severity, "warn_only": r.warn_only, "scored": r.scored,
                "since": r.since.map(|m| m.to_string()), "until": r.until.map(|m| m.to_string()),
                "unless_set": r.unless_set,
                "test": r.test, "remediation": r.remediation, "fix": r.fix, "safe": r.safe,
            })
        })
        .collect();
    serde_json::to_string_pretty(
        &json!({"rules": rules, "cve_table_compiled": cat.versions.compiled}),
    )
    .expect("serialises")
}

/// `lockdown-agent status` as text.
pub fn status_table(s: &crate::status::Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}  agent {}  pid {}  since {}",
        s.node, s.agent_version, s.pid, s.started
    );
    let _ = writeln!(
        out,
        "spool: {} events, {} of {} bytes, last seq {}, acked {}",
        s.spool.events, s.spool.bytes, s.spool.max_bytes, s.spool.last_seq, s.spool.acked
    );
    match &s.last_event {
        Some(e) => {
            let _ = writeln!(
                out,
                "last event: #{} {} {} {}",
                e.seq,
                e.kind,
                e.time,
                e.path.as_deref().unwrap_or("")
            );
        }
        None => out.push_str("last event: none since start\n"),
    }
    let _ = writeln!(out, "full rescans since start: {}", s.rescans);
    let mut fix = format!("fix: {}", s.fix.mode);
    for (rule, mode) in &s.fix.rules {
        let _ = write!(fix, ", {rule} {mode}");
    }
    if let Some(p) = &s.fix.paused {
        let _ = write!(fix, "; {p}");
    }
    let _ = writeln!(out, "{fix}");
    for (path, why) in &s.fix.quarantined {
        let _ = writeln!(out, "  quarantined {path}: {why}");
    }
    match &s.collector {
        Some(c) => {
            let _ = writeln!(
                out,
                "collector {}: {}, acked {}{}",
                c.address,
                if c.connected {
                    "connected"
                } else {
                    "not connected"
                },
                c.acked,
                c.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            );
        }
        None => out.push_str("collector: none configured (events stay in the spool)\n"),
    }
    let _ = writeln!(
        out,
        "\nwatching {} directories, tracking {} paths:",
        s.watched_dirs.len(),
        s.files.len()
    );
    for f in &s.files {
        let _ = writeln!(
            out,
            "  {:<9} {:<5} {}{}",
            if f.kind.is_empty() { "?" } else { &f.kind },
            f.mode,
            f.path,
            f.error
                .as_deref()
                .map(|e| format!("  ERROR: {e}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "\nopen findings: {}", s.open_findings.len());
    for f in &s.open_findings {
        let _ = writeln!(
            out,
            "  {:<8} {:<4} {:<40} {} {}",
            f.finding.severity.as_str(),
            f.finding.status.as_str(),
            f.finding.rule_id,
            f.finding
                .cis
                .as_deref()
                .map(|c| format!("[CIS {c}]"))
                .unwrap_or_default(),
            f.path
        );
    }
    out
}
