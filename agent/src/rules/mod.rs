//! Rules: the catalogue (data) and a pure evaluator over facts gathered beforehand.

pub mod catalogue;
pub mod eval;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use catalogue::{Catalogue, Fix, Severity};

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
