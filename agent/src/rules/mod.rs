//! Rules: the catalogue (data) and a pure evaluator over facts gathered beforehand.

pub mod catalogue;
pub mod eval;

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

pub use catalogue::{Catalogue, Fix, Severity};

/// A file's findings, in rule order. Cheap to clone: the reports of copies of one manifest
/// share one list (a check of a directory of copies clones no finding), and its JSON is made
/// once for all of them.
#[derive(Clone, Default)]
pub struct Findings(Arc<FindingList>);

#[derive(Default)]
struct FindingList {
    list: Vec<Finding>,
    /// The findings as JSON array elements, made the first time an output asks.
    json: OnceLock<Vec<u8>>,
}

impl Findings {
    /// The findings as the elements of a JSON array (`{...},{...}`, as serde_json writes
    /// each), made once for every report that shares the list.
    pub fn json(&self) -> serde_json::Result<&[u8]> {
        if let Some(bytes) = self.0.json.get() {
            return Ok(bytes);
        }
        let mut bytes = Vec::with_capacity(self.0.list.len() * 320);
        for (i, f) in self.0.list.iter().enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            serde_json::to_writer(&mut bytes, f)?;
        }
        // Another thread may have got there first: the bytes are the same.
        Ok(self.0.json.get_or_init(|| bytes))
    }

    /// The list, taken without a copy when no other report shares it.
    pub fn into_vec(self) -> Vec<Finding> {
        match Arc::try_unwrap(self.0) {
            Ok(list) => list.list,
            Err(shared) => shared.list.clone(),
        }
    }

    /// Whether `other` is the same list (not a copy of it).
    pub fn shares(&self, other: &Findings) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<Vec<Finding>> for Findings {
    fn from(list: Vec<Finding>) -> Self {
        Findings(Arc::new(FindingList {
            list,
            json: OnceLock::new(),
        }))
    }
}

impl std::ops::Deref for Findings {
    type Target = [Finding];
    fn deref(&self) -> &[Finding] {
        &self.0.list
    }
}

impl<'a> IntoIterator for &'a Findings {
    type Item = &'a Finding;
    type IntoIter = std::slice::Iter<'a, Finding>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.list.iter()
    }
}

impl std::fmt::Debug for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.list.fmt(f)
    }
}

impl Serialize for Findings {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.list.serialize(s)
    }
}

/// The result of one rule on one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Failed.
    Fail,
    /// Needs a person, or could not be decided.
    Warn,
    /// Passed.
    Pass,
    /// Does not apply (version, missing facts).
    Skip,
}

impl Status {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Warn => "warn",
            Status::Skip => "skip",
        }
    }
}

/// One rule's verdict on one file. Field names are a contract (DESIGN.md, `check --format json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Rule id (shared with the rule: findings are made often, the catalogue's text once).
    pub id: Arc<str>,
    /// CIS Kubernetes Benchmark id, or null.
    pub cis: Option<Arc<str>>,
    /// What the rule checks.
    pub title: Arc<str>,
    /// How bad a failure is.
    pub severity: Severity,
    /// pass, fail, warn or skip.
    pub status: Status,
    /// The flag concerned (`--profiling`), if any.
    pub flag: Option<String>,
    /// What was seen.
    pub observed: Option<String>,
    /// What the rule wants.
    pub expected: Option<String>,
    /// What to do.
    pub remediation: Arc<str>,
    /// True when a fix exists, the version accepts it and it is safe to apply unattended.
    pub autofix: bool,
    /// The fix this version accepts, when there is one (also the review-only ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
    /// Why the rule was skipped or is a warn, or why no fix is offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An advisory or source (CVE findings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Parses manifest bytes with the catalogue's flag kinds.
pub fn parse_manifest(
    cat: &Catalogue,
    bytes: &[u8],
) -> Result<crate::manifest::Manifest, crate::manifest::ManifestError> {
    crate::manifest::parse(bytes, &|c, f| cat.kind(c, f))
}
