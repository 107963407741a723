//! Outputs written while the check runs: each file's entry goes to the writer as soon as it
//! is checked (JSON, SARIF, OpenReports / PolicyReport), or is kept as findings only and
//! written at the end where the format groups across files (table, kube-bench, JUnit). No
//! format builds its whole text in memory.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::{self, Write};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::check::Report;
use crate::node::FileReport;
use crate::rules::{Catalogue, Finding, Severity, Status};

/// Renders one file's entry on the worker thread that checked it (nothing when the format
/// renders at the end).
pub type Renderer<'c> = Box<dyn Fn(&FileReport) -> io::Result<Vec<u8>> + Sync + 'c>;

/// An output format fed one file entry at a time.
pub trait Sink<'c> {
    /// What renders an entry, off the thread that writes (it borrows nothing of the sink).
    fn renderer(&self) -> Renderer<'c> {
        Box::new(|_| Ok(Vec::new()))
    }
    /// Whether [`Sink::file`] needs the report itself. When it does not, it gets only what
    /// the renderer made, and the report is dropped on the worker that made it (freeing
    /// memory where it was allocated is what keeps the workers from waiting on each other).
    fn keeps_reports(&self) -> bool {
        true
    }
    /// Before the first entry.
    fn start(&mut self, out: &mut dyn Write) -> io::Result<()>;
    /// One file's entry, in scan order, with what the renderer made of it; the report when
    /// the sink [keeps reports](Sink::keeps_reports).
    fn file(
        &mut self,
        out: &mut dyn Write,
        f: Option<FileReport>,
        rendered: Vec<u8>,
    ) -> io::Result<()>;
    /// After the last entry.
    fn finish(&mut self, out: &mut dyn Write) -> io::Result<()>;
}

/// `--format json`: `{"files":[...]}`, one entry at a time.
#[derive(Default)]
pub struct Json {
    first: bool,
}

impl<'c> Sink<'c> for Json {
    fn start(&mut self, out: &mut dyn Write) -> io::Result<()> {
        self.first = true;
        out.write_all(b"{\"files\":[\n")
    }

    fn renderer(&self) -> Renderer<'c> {
        Box::new(json_entry)
    }

    fn keeps_reports(&self) -> bool {
        false
    }

    fn file(
        &mut self,
        out: &mut dyn Write,
        _: Option<FileReport>,
        entry: Vec<u8>,
    ) -> io::Result<()> {
        if !std::mem::take(&mut self.first) {
            out.write_all(b",\n")?;
        }
        out.write_all(&entry)
    }

    fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(b"\n]}\n")
    }
}

/// A file's JSON entry, as `serde_json::to_vec` writes it; the findings' JSON is made once
/// for every report that shares them (copies of one manifest with one mode and owner).
fn json_entry(f: &FileReport) -> io::Result<Vec<u8>> {
    let findings = f.findings.json()?;
    let mut out = Vec::with_capacity(findings.len() + 256);
    out.extend_from_slice(b"{\"path\":");
    serde_json::to_writer(&mut out, &f.path)?;
    out.extend_from_slice(b",\"component\":");
    serde_json::to_writer(&mut out, &f.component)?;
    out.extend_from_slice(b",\"version\":");
    serde_json::to_writer(&mut out, &f.version)?;
    out.extend_from_slice(b",\"error\":");
    serde_json::to_writer(&mut out, &f.error)?;
    if !f.notes.is_empty() {
        out.extend_from_slice(b",\"notes\":");
        serde_json::to_writer(&mut out, &f.notes)?;
    }
    out.extend_from_slice(b",\"findings\":[");
    out.extend_from_slice(findings);
    out.extend_from_slice(b"]}");
    Ok(out)
}

/// Formats that need every file before they can write (the table sorts files by how bad
/// they are; kube-bench groups by CIS section): the entries are kept, then rendered.
pub struct Whole<F: FnMut(&Report) -> String> {
    files: Vec<FileReport>,
    render: F,
}

impl<F: FnMut(&Report) -> String> Whole<F> {
    /// Keeps the entries and renders them with `render` at the end.
    pub fn new(render: F) -> Self {
        Whole {
            files: Vec::new(),
            render,
        }
    }
}

impl<'c, F: FnMut(&Report) -> String> Sink<'c> for Whole<F> {
    fn start(&mut self, _: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    fn file(&mut self, _: &mut dyn Write, f: Option<FileReport>, _: Vec<u8>) -> io::Result<()> {
        self.files.extend(f);
        Ok(())
    }

    fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let report = Report {
            files: std::mem::take(&mut self.files),
        };
        let text = (self.render)(&report);
        out.write_all(text.as_bytes())?;
        out.write_all(b"\n")
    }
}

/// SARIF's `security-severity` (GitHub: 9.0+ critical, 7.0-8.9 high, 4.0-6.9 medium,
/// 0.1-3.9 low).
fn security_severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "9.5",
        Severity::High => "8.0",
        Severity::Medium => "5.5",
        Severity::Low => "3.0",
        Severity::Info => "1.0",
    }
}

/// A finding's identity that does not move with unrelated lines: rule, file, flag and, for
/// rules that fail once per flag, plugin or CVE, what was seen.
fn fingerprint(cat: &Catalogue, path: &str, f: &Finding) -> String {
    let mut h = Sha256::new();
    for part in [
        &*f.id,
        path,
        f.flag.as_deref().unwrap_or(""),
        if cat.multi_instance(&f.id) {
            f.observed.as_deref().unwrap_or("")
        } else {
            ""
        },
        if cat.multi_instance(&f.id) {
            &f.title
        } else {
            ""
        },
    ] {
        h.update(part.as_bytes());
        h.update([0x1f]);
    }
    let digest = h.finalize();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A file path as a SARIF artifact URI: relative paths stay relative (to the directory the
/// check ran in, as GitHub code scanning expects), absolute ones become `file://` URIs.
fn artifact_uri(path: &str) -> String {
    let path = path.trim_start_matches("./");
    let mut uri = String::new();
    if path.starts_with('/') {
        uri.push_str("file://");
    }
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                uri.push(char::from(b));
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri
}

/// `--format sarif`: SARIF 2.1.0 as GitHub code scanning reads it: every rule in the tool
/// driver, a result per failing (error) or warning (warning) finding at the line and
/// column of its flag, with a fingerprint that does not move with unrelated lines.
pub struct Sarif<'c> {
    cat: &'c Catalogue,
    first: bool,
}

impl<'c> Sarif<'c> {
    /// For the rules of `cat`.
    pub fn new(cat: &'c Catalogue) -> Self {
        Sarif { cat, first: true }
    }
}

impl<'c> Sink<'c> for Sarif<'c> {
    fn start(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let rules: Vec<serde_json::Value> = self
            .cat
            .rules
            .iter()
            .map(|r| {
                let mut tags = vec!["security".to_string(), "kubernetes".to_string()];
                if let Some(cis) = &r.cis {
                    tags.push(format!("CIS-{cis}"));
                }
                let full = match &r.cis {
                    Some(cis) => format!("CIS Kubernetes Benchmark {cis}: {}", r.title),
                    None => r.title.to_string(),
                };
                json!({
                    "id": r.id,
                    "name": r.id,
                    "shortDescription": {"text": r.title},
                    "fullDescription": {"text": full},
                    "help": {"text": r.remediation, "markdown": r.remediation},
                    "defaultConfiguration": {"level": if r.warn_only { "warning" } else { "error" }},
                    "properties": {
                        "security-severity": security_severity(r.severity),
                        "precision": "very-high",
                        "tags": tags,
                    },
                })
            })
            .collect();
        let tool = json!({"driver": {
            "name": "kube-lockdown",
            "informationUri": "https://github.com/kube-lockdown/kube-lockdown",
            "version": env!("CARGO_PKG_VERSION"),
            "semanticVersion": env!("CARGO_PKG_VERSION"),
            "rules": rules,
        }});
        // Written by hand around the parts so that `results` comes last, open for the entries.
        write!(
            out,
            "{{\"$schema\":\"https://json.schemastore.org/sarif-2.1.0.json\",\"version\":\"2.1.0\",\"runs\":[{{\"tool\":{},\"columnKind\":\"unicodeCodePoints\",\"results\":[",
            serde_json::to_string(&tool)?
        )?;
        out.write_all(b"\n")
    }

    fn renderer(&self) -> Renderer<'c> {
        let cat = self.cat;
        Box::new(move |f| {
            let mut bytes = Vec::new();
            sarif_results(cat, f, &mut bytes)?;
            Ok(bytes)
        })
    }

    fn keeps_reports(&self) -> bool {
        false
    }

    fn file(
        &mut self,
        out: &mut dyn Write,
        _: Option<FileReport>,
        rendered: Vec<u8>,
    ) -> io::Result<()> {
        if rendered.is_empty() {
            return Ok(());
        }
        if !std::mem::take(&mut self.first) {
            out.write_all(b",\n")?;
        }
        out.write_all(&rendered)
    }

    fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(b"\n]}]}\n")
    }
}

/// A finding as it may leave the node (these formats go to code scanning, CI and the
/// cluster): what was seen of a sensitive flag, or of one whose value came from the env, is
/// redacted, as in the daemon's events.
fn shareable<'f>(cat: &Catalogue, file: &FileReport, f: &'f Finding) -> Cow<'f, Finding> {
    if f.observed.is_some() && file.withholds(cat, f.flag.as_deref()) {
        let mut f = f.clone();
        f.observed = Some(crate::redact::REDACTED.to_string());
        Cow::Owned(f)
    } else {
        Cow::Borrowed(f)
    }
}

/// The SARIF results of one file, separated by `,\\n`.
fn sarif_results(cat: &Catalogue, f: &FileReport, out: &mut Vec<u8>) -> io::Result<()> {
    for finding in f
        .findings
        .iter()
        .filter(|x| matches!(x.status, Status::Fail | Status::Warn))
    {
        let finding = &*shareable(cat, f, finding);
        let (line, column) = f.places.of(finding.flag.as_deref());
        let index = cat.rules.iter().position(|r| r.id == finding.id);
        let mut text = finding.title.to_string();
        if let Some(obs) = &finding.observed {
            text.push_str(&format!(" (observed {obs}"));
            if let Some(exp) = &finding.expected {
                text.push_str(&format!("; expected {exp}"));
            }
            text.push(')');
        }
        if let Some(r) = &finding.reason {
            text.push_str(&format!(". {r}"));
        }
        let mut result = json!({
            "ruleId": finding.id,
            "level": if finding.status == Status::Fail { "error" } else { "warning" },
            "message": {"text": text},
            "locations": [{"physicalLocation": {
                "artifactLocation": {"uri": artifact_uri(&f.path)},
                "region": {"startLine": line, "startColumn": column},
            }}],
            "partialFingerprints": {"kubeLockdown/v1": fingerprint(cat, &f.path, finding)},
            "properties": {"security-severity": security_severity(finding.severity)},
        });
        if let Some(i) = index {
            result["ruleIndex"] = json!(i);
        }
        if !out.is_empty() {
            out.extend_from_slice(b",\n");
        }
        serde_json::to_writer(&mut *out, &result)?;
    }
    Ok(())
}

/// The CIS section a finding belongs to (`1.2`, `2`), or `None` for the project's own rules.
pub fn cis_section(cis: Option<&str>) -> Option<&'static str> {
    const SECTIONS: [&str; 5] = ["1.1", "1.2", "1.3", "1.4", "2"];
    let cis = cis?;
    SECTIONS
        .into_iter()
        .filter(|s| cis == *s || cis.starts_with(&format!("{s}.")))
        .max_by_key(|s| s.len())
}

/// The CIS section titles, as the benchmark names them.
pub fn section_title(section: Option<&str>) -> &'static str {
    match section {
        Some("1.1") => "1.1 Control Plane Node Configuration Files",
        Some("1.2") => "1.2 API Server",
        Some("1.3") => "1.3 Controller Manager",
        Some("1.4") => "1.4 Scheduler",
        Some("2") => "2 Etcd Node Configuration",
        _ => "kube-lockdown checks (versions, flags the component refuses, CVEs)",
    }
}

fn xml(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => s.push_str("&lt;"),
            '>' => s.push_str("&gt;"),
            '&' => s.push_str("&amp;"),
            '"' => s.push_str("&quot;"),
            '\'' => s.push_str("&apos;"),
            // XML 1.0 allows tab, newline and CR among the control characters; the others
            // cannot be written at all, even escaped.
            '\t' | '\n' | '\r' => s.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => {
                s.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
            c => s.push(c),
        }
    }
    s
}

/// `--format junit`: JUnit XML as kube-bench writes it, with a suite per CIS section (and
/// one for the project's own checks): a case per check and file, failures carrying the
/// remediation, warnings and skips skipped, the finding as JSON in `system-out`.
pub struct Junit<'c> {
    cat: &'c Catalogue,
    /// Section → (file, finding), in scan order.
    sections: BTreeMap<(u8, &'static str), Vec<(String, Finding)>>,
    /// Files that could not be checked.
    errors: Vec<(String, String)>,
}

impl<'c> Junit<'c> {
    /// For the rules of `cat`.
    pub fn new(cat: &'c Catalogue) -> Self {
        Junit {
            cat,
            sections: BTreeMap::new(),
            errors: Vec::new(),
        }
    }
}

impl<'c> Sink<'c> for Junit<'c> {
    fn start(&mut self, _: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    fn file(&mut self, _: &mut dyn Write, f: Option<FileReport>, _: Vec<u8>) -> io::Result<()> {
        let Some(f) = f else { return Ok(()) };
        if let Some(e) = &f.error {
            self.errors.push((f.path.clone(), e.clone()));
        }
        for finding in &f.findings {
            let finding = shareable(self.cat, &f, finding).into_owned();
            let section = cis_section(finding.cis.as_deref());
            // CIS sections in order, the project's own checks last.
            let key = (u8::from(section.is_none()), section.unwrap_or("~"));
            self.sections
                .entry(key)
                .or_default()
                .push((f.path.clone(), finding));
        }
        Ok(())
    }

    fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>")?;
        let total: usize = self.sections.values().map(Vec::len).sum::<usize>() + self.errors.len();
        let failures: usize = self
            .sections
            .values()
            .flatten()
            .filter(|(_, f)| f.status == Status::Fail)
            .count();
        writeln!(
            out,
            "<testsuites name=\"kube-lockdown\" tests=\"{total}\" failures=\"{failures}\" errors=\"{}\">",
            self.errors.len()
        )?;
        if !self.errors.is_empty() {
            writeln!(
                out,
                "  <testsuite name=\"files\" tests=\"{n}\" failures=\"0\" errors=\"{n}\" skipped=\"0\">",
                n = self.errors.len()
            )?;
            for (path, e) in &self.errors {
                writeln!(
                    out,
                    "    <testcase name=\"{}\" classname=\"files\"><error message=\"{}\"/></testcase>",
                    xml(&format!("read {path}")),
                    xml(e)
                )?;
            }
            writeln!(out, "  </testsuite>")?;
        }
        for ((_, section), cases) in &self.sections {
            let title = section_title(Some(*section).filter(|s| *s != "~"));
            let count = |s: Status| cases.iter().filter(|(_, f)| f.status == s).count();
            writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\">",
                xml(title),
                cases.len(),
                count(Status::Fail),
                count(Status::Warn) + count(Status::Skip)
            )?;
            for (path, f) in cases {
                let name = format!("{} {} [{path}]", f.cis.as_deref().unwrap_or(&f.id), f.title);
                write!(
                    out,
                    "    <testcase name=\"{}\" classname=\"{}\" time=\"0\">",
                    xml(&name),
                    xml(title)
                )?;
                match f.status {
                    Status::Fail => {
                        let body = format!(
                            "{}\nobserved: {}\nexpected: {}",
                            f.remediation,
                            f.observed.as_deref().unwrap_or("-"),
                            f.expected.as_deref().unwrap_or("-")
                        );
                        write!(
                            out,
                            "<failure message=\"{}\" type=\"{}\">{}</failure>",
                            xml(&f.remediation),
                            f.severity.as_str(),
                            xml(&body)
                        )?;
                    }
                    Status::Warn | Status::Skip => {
                        let why = f.reason.as_deref().unwrap_or(if f.status == Status::Warn {
                            "needs a person (CIS Manual)"
                        } else {
                            "does not apply"
                        });
                        write!(
                            out,
                            "<skipped message=\"{}\"/>",
                            xml(&format!("{}: {why}", f.status.as_str().to_uppercase()))
                        )?;
                    }
                    Status::Pass => {}
                }
                let detail = serde_json::to_string(f)?;
                writeln!(out, "<system-out>{}</system-out></testcase>", xml(&detail))?;
            }
            writeln!(out, "  </testsuite>")?;
        }
        writeln!(out, "</testsuites>")
    }
}

/// Which report resource `--format openreports` / `policyreport` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportApi {
    /// `openreports.io/v1alpha1` ClusterReport.
    OpenReports,
    /// `wgpolicyk8s.io/v1alpha2` ClusterPolicyReport (Policy Reporter and other consumers).
    PolicyReport,
}

/// A DNS label (RFC 1123: lower-case letters, digits and `-`, at most 63, starting and ending
/// with a letter or digit) naming this node's report.
pub fn report_name(node: &str) -> String {
    let mut name: String = format!("kube-lockdown-{node}")
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    if name.len() > 63 {
        // Long node names keep a hash of the whole name, so two nodes do not collide.
        let digest = Sha256::digest(node.as_bytes());
        let tag: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        name.truncate(63 - 9);
        name.push('-');
        name.push_str(&tag);
    }
    name.trim_end_matches('-').to_string()
}

/// `--format openreports` / `--format policyreport`: one cluster-scoped report for this node,
/// its scope the Node, as YAML; results are written as the files are checked and the
/// summary at the end.
pub struct PolicyReport<'c> {
    cat: &'c Catalogue,
    api: ReportApi,
    node: String,
    seconds: i64,
    summary: [usize; 5],
}

impl<'c> PolicyReport<'c> {
    /// A report for `node` on the rules of `cat`, results stamped `seconds` since the epoch.
    pub fn new(cat: &'c Catalogue, api: ReportApi, node: &str, seconds: i64) -> Self {
        PolicyReport {
            cat,
            api,
            node: node.to_string(),
            seconds,
            summary: [0; 5],
        }
    }
}

impl<'c> Sink<'c> for PolicyReport<'c> {
    fn start(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let (api_version, kind) = match self.api {
            ReportApi::OpenReports => ("openreports.io/v1alpha1", "ClusterReport"),
            ReportApi::PolicyReport => ("wgpolicyk8s.io/v1alpha2", "ClusterPolicyReport"),
        };
        writeln!(out, "apiVersion: {api_version}")?;
        writeln!(out, "kind: {kind}")?;
        writeln!(out, "metadata:")?;
        writeln!(out, "  name: {}", report_name(&self.node))?;
        writeln!(out, "  labels:")?;
        writeln!(out, "    app.kubernetes.io/managed-by: kube-lockdown")?;
        writeln!(out, "  annotations:")?;
        writeln!(
            out,
            "    kube-lockdown/node: {}",
            serde_json::to_string(&self.node)?
        )?;
        if self.api == ReportApi::OpenReports {
            writeln!(out, "source: kube-lockdown")?;
        }
        writeln!(out, "scope:")?;
        writeln!(out, "  apiVersion: v1")?;
        writeln!(out, "  kind: Node")?;
        writeln!(out, "  name: {}", serde_json::to_string(&self.node)?)?;
        writeln!(out, "results:")
    }

    fn renderer(&self) -> Renderer<'c> {
        let (cat, seconds) = (self.cat, self.seconds);
        Box::new(move |f| {
            let mut bytes = Vec::new();
            report_results(cat, seconds, f, &mut bytes)?;
            Ok(bytes)
        })
    }

    fn file(
        &mut self,
        out: &mut dyn Write,
        f: Option<FileReport>,
        rendered: Vec<u8>,
    ) -> io::Result<()> {
        let Some(f) = f else { return Ok(()) };
        if f.error.is_some() {
            self.summary[3] += 1;
        }
        for finding in &f.findings {
            let slot = match finding.status {
                Status::Pass => 0,
                Status::Fail => 1,
                Status::Warn => 2,
                Status::Skip => 4,
            };
            self.summary[slot] += 1;
        }
        out.write_all(&rendered)
    }

    fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        let [pass, fail, warn, error, skip] = self.summary;
        if pass + fail + warn + error + skip == 0 {
            // `results:` with nothing under it would be null.
            writeln!(out, "  []")?;
        }
        writeln!(out, "summary:")?;
        writeln!(out, "  pass: {pass}")?;
        writeln!(out, "  fail: {fail}")?;
        writeln!(out, "  warn: {warn}")?;
        writeln!(out, "  error: {error}")?;
        writeln!(out, "  skip: {skip}")
    }
}

/// The report results of one file, as YAML sequence items.
fn report_results(
    cat: &Catalogue,
    seconds: i64,
    f: &FileReport,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let timestamp = json!({"seconds": seconds, "nanos": 0});
    if let Some(e) = &f.error {
        result_item(
            out,
            &[
                ("source", json!("kube-lockdown")),
                ("policy", json!("kube-lockdown")),
                ("rule", json!("file-readable")),
                ("category", json!("kube-lockdown")),
                ("severity", json!("high")),
                ("timestamp", timestamp.clone()),
                ("result", json!("error")),
                ("scored", json!(false)),
                ("message", json!(format!("{}: {e}", f.path))),
                ("properties", json!({"file": f.path})),
            ],
        )?;
    }
    for finding in &f.findings {
        let finding = &*shareable(cat, f, finding);
        let result = finding.status.as_str();
        let section = cis_section(finding.cis.as_deref());
        let mut properties = serde_json::Map::new();
        properties.insert("file".into(), json!(f.path));
        for (k, v) in [
            ("observed", finding.observed.as_deref()),
            ("expected", finding.expected.as_deref()),
            ("flag", finding.flag.as_deref()),
            ("component", f.component.as_deref()),
            ("version", f.version.as_deref()),
            ("reason", finding.reason.as_deref()),
            ("remediation", Some(&*finding.remediation)),
        ] {
            if let Some(v) = v {
                properties.insert(k.into(), json!(v));
            }
        }
        let category = section_title(section);
        // CIS scores it, and it was judged (a warn is "not met, not scored").
        let scored = matches!(finding.status, Status::Pass | Status::Fail)
            && cat
                .rules
                .iter()
                .find(|r| r.id == finding.id)
                .is_none_or(|r| r.scored);
        result_item(
            out,
            &[
                ("source", json!("kube-lockdown")),
                (
                    "policy",
                    json!(finding.cis.as_deref().unwrap_or(&finding.id)),
                ),
                ("rule", json!(finding.id)),
                ("category", json!(category)),
                ("severity", json!(finding.severity.as_str())),
                ("timestamp", timestamp.clone()),
                ("result", json!(result)),
                ("scored", json!(scored)),
                ("message", json!(finding.title)),
                ("properties", serde_json::Value::Object(properties)),
            ],
        )?;
    }
    Ok(())
}

/// One YAML sequence item of `fields` (null ones left out).
fn result_item(out: &mut Vec<u8>, fields: &[(&str, serde_json::Value)]) -> io::Result<()> {
    let mut first = true;
    for (k, v) in fields {
        if v.is_null() {
            continue;
        }
        let lead = if std::mem::take(&mut first) {
            "- "
        } else {
            "  "
        };
        // JSON scalars and flow maps are YAML: quoting and escapes come out right.
        writeln!(out, "{lead}{k}: {}", serde_json::to_string(v)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every JSON entry is byte for byte what serde_json writes for it (with notes, with
    /// findings shared between copies or not, for every component and version).
    #[test]
    fn json_entries_are_what_serde_writes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/kubeadm");
        for v in ["v1.24", "v1.28", "v1.31"] {
            for e in std::fs::read_dir(data.join(v)).unwrap() {
                let p = e.unwrap().path();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let mut text = std::fs::read(&p).unwrap();
                for (copy, mode) in [("a", 0o600), ("b", 0o600), ("c", 0o666)] {
                    let copy = dir.path().join(format!("{copy}-{v}-{name}"));
                    std::fs::write(&copy, &text).unwrap();
                    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
                }
                // A second document gives the entry notes.
                text.extend_from_slice(b"\n---\nkind: ConfigMap\n");
                std::fs::write(dir.path().join(format!("d-{v}-{name}")), &text).unwrap();
            }
        }
        let cfg = crate::config::Config::parse("node_name: n\n", Path::new("agent.yaml")).unwrap();
        let report = crate::check::run(
            &cfg,
            &crate::check::Scope::Paths(vec![dir.path().to_path_buf()]),
        );
        assert_eq!(report.files.len(), 48);
        let render = Json::default().renderer();
        for f in &report.files {
            assert_eq!(
                String::from_utf8(render(f).unwrap()).unwrap(),
                serde_json::to_string(f).unwrap(),
                "{}",
                f.path
            );
        }
        assert!(report.files.iter().any(|f| !f.notes.is_empty()));
    }

    #[test]
    fn artifact_uris_are_relative_or_file_uris_and_escaped() {
        assert_eq!(artifact_uri("./manifests/a b.yaml"), "manifests/a%20b.yaml");
        assert_eq!(
            artifact_uri("/etc/kubernetes/manifests/kube-apiserver.yaml"),
            "file:///etc/kubernetes/manifests/kube-apiserver.yaml"
        );
        assert_eq!(artifact_uri("x#y?z%"), "x%23y%3Fz%25");
    }

    #[test]
    fn report_names_are_dns_labels() {
        assert_eq!(report_name("cp-1"), "kube-lockdown-cp-1");
        assert_eq!(
            report_name("cp-1.example.com"),
            "kube-lockdown-cp-1-example-com"
        );
        let long = report_name(&"n".repeat(200));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(
            long,
            report_name(&"n".repeat(201)),
            "long names keep a hash"
        );
    }
}
