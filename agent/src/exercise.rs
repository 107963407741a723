//! The whole pure path from a manifest's bytes to what the agent makes of them, as one call:
//! findings, the host paths a manifest reads, a fix plan for every finding (what enforce would
//! do if every rule were named), the plan's diff, and the redacted text. The fuzz targets
//! (`fuzz/`) and the no-panic property tests (`agent/tests/no_panic.rs`) drive it, so that
//! "no input panics" is checked on the same code the daemon and `check` run.

use crate::fix::plan::{self, Choice};
use crate::manifest::Component;
use crate::redact;
use crate::rules::Catalogue;
use crate::rules::eval::{self, AuthnConfig, ManifestFacts};

/// What one pass found; the values only matter to the callers' own assertions.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Findings of the manifest rules.
    pub findings: usize,
    /// Steps the plan would apply.
    pub steps: usize,
    /// The redacted text, when the file may be shown.
    pub text: Option<String>,
}

/// Runs `bytes` through parse, evaluate, host-path resolution, planning and redaction.
pub fn manifest_bytes(cat: &Catalogue, bytes: &[u8]) -> Outcome {
    let mut out = Outcome::default();
    // The YAML fast path builds exactly what the full parser builds, or declines.
    if let Ok(src) = std::str::from_utf8(bytes)
        && let Some(diff) = crate::manifest::yaml::fast_path_disagreement(src)
    {
        panic!("the YAML fast path disagrees with the full parser:\n{diff}\non {src:?}");
    }
    if let Ok(m) = crate::rules::parse_manifest(cat, bytes)
        && let Some(cp) = &m.control_plane
    {
        for flag in ["authentication-config", "data-dir", "tls-cert-file"] {
            if let Some(v) = cp.flags.value(flag) {
                let _ = crate::manifest::mounts::host_path(&m, cp, &v);
            }
        }
        let authn = AuthnConfig::Unreadable("not read".into());
        let facts = ManifestFacts {
            cp,
            authn: (cp.component == Component::KubeApiserver).then_some(&authn),
            authz: None,
            certs: None,
        };
        out.findings = eval::evaluate_manifest(cat, facts).len();
    }
    if let Ok(p) = plan::plan(cat, bytes, None, &|_| Choice::Fix) {
        out.steps = p.steps.len();
        if let (Ok(a), Ok(b)) = (
            std::str::from_utf8(bytes),
            redact::manifest_text(&p.text, &|f| cat.sensitive(f)),
        ) && let Ok(a) = redact::manifest_text(a, &|f| cat.sensitive(f))
        {
            let _ = redact::unified_diff("/etc/kubernetes/manifests/x.yaml", Some(&a), Some(&b));
        }
    }
    out.text = std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| redact::manifest_text(s, &|f| cat.sensitive(f)).ok());
    let _ = crate::rules::eval::parse_authn(bytes);
    out
}
