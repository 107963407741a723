//! Pure evaluation: facts and rules in, findings out. No IO here: file contents that a rule
//! needs (an AuthenticationConfiguration, a file's mode) are gathered by the caller.

use std::sync::Arc;

use super::catalogue::{
    ANONYMOUS_CONFIG_SINCE, Builtin, Catalogue, Existence, FileRole, Fix, FlagItem, FlagRef,
    FlagSpec, FlagValue, Minor, Rule, Target, Test, explain,
};
use super::{Finding, Severity, Status};
use crate::manifest::flags::{FlagKind, Flags, parse_go_bool};
use crate::manifest::version::Version;
use crate::manifest::{Component, ControlPlane};

/// Paths that may be open to anonymous requests without weakening anything: the health
/// endpoints kubeadm probes and kubeadm's token-discovery ConfigMap.
pub const ANONYMOUS_HEALTH_PATHS: [&str; 4] = [
    "/livez",
    "/readyz",
    "/healthz",
    "/api/v1/namespaces/kube-public/configmaps/cluster-info",
];

/// How a finding's `reason` starts when the rule has a fix the version guard refused.
pub const NO_FIX_OFFERED: &str = "no fix offered: ";

/// What the file named by `--authentication-config` says about anonymous requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthnConfig {
    /// It could not be read or parsed; the reason.
    Unreadable(String),
    /// It has no `anonymous:` block.
    NoAnonymousBlock,
    /// Its `anonymous:` block.
    Anonymous {
        /// `enabled`.
        enabled: bool,
        /// `conditions[].path`.
        paths: Vec<String>,
    },
}

/// What the file named by `--authorization-config` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzConfig {
    /// It could not be read or parsed; the reason.
    Unreadable(String),
    /// The `type` of each of its `authorizers`, in order.
    Authorizers(Vec<String>),
}

/// The authorizer types of an AuthorizationConfiguration, in order.
pub fn parse_authz(bytes: &[u8]) -> Result<AuthzConfig, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let doc = crate::manifest::yaml::parse_first_document(text).map_err(|e| e.to_string())?;
    if doc.root.get("kind").and_then(|k| k.as_str()) != Some("AuthorizationConfiguration") {
        return Err("not an AuthorizationConfiguration".into());
    }
    let authorizers = doc
        .root
        .get("authorizers")
        .and_then(|a| a.as_seq())
        .ok_or("no authorizers list")?;
    authorizers
        .iter()
        .map(|a| {
            a.get("type")
                .and_then(|t| t.as_str())
                .map(str::to_string)
                .ok_or_else(|| "an authorizer without a type".to_string())
        })
        .collect::<Result<Vec<_>, _>>()
        .map(AuthzConfig::Authorizers)
}

/// Parses the `anonymous:` block of an AuthenticationConfiguration.
pub fn parse_authn(bytes: &[u8]) -> Result<AuthnConfig, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let doc = crate::manifest::yaml::parse_first_document(text).map_err(|e| e.to_string())?;
    if doc.root.get("kind").and_then(|k| k.as_str()) != Some("AuthenticationConfiguration") {
        return Err("not an AuthenticationConfiguration".into());
    }
    let Some(anon) = doc.root.get("anonymous") else {
        return Ok(AuthnConfig::NoAnonymousBlock);
    };
    let enabled = anon.get("enabled").and_then(|e| e.as_str()) == Some("true");
    let paths = anon
        .get("conditions")
        .and_then(|c| c.as_seq())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.get("path").and_then(|p| p.as_str()).map(str::to_string))
        .collect();
    Ok(AuthnConfig::Anonymous { enabled, paths })
}

/// Everything the evaluator knows about one manifest.
#[derive(Debug, Clone, Copy)]
pub struct ManifestFacts<'a> {
    /// The component, its version and flags.
    pub cp: &'a ControlPlane,
    /// The authentication config, when the manifest names one and it was looked at.
    pub authn: Option<&'a AuthnConfig>,
    /// The authorization config, when the manifest names one and it was looked at.
    pub authz: Option<&'a AuthzConfig>,
    /// The certificates the manifest names, when they were read (on a node).
    pub certs: Option<&'a ManifestCerts>,
}

/// The certificates a manifest names, read where the pod mounts them, and the cluster CA.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManifestCerts {
    /// kube-apiserver `--tls-cert-file`: its certificates, or why they cannot be read.
    pub serving: Option<Result<Vec<crate::tls::Cert>, String>>,
    /// etcd `--trusted-ca-file`: its certificates, or why they cannot be read.
    pub trusted_ca: Option<Result<Vec<crate::tls::Cert>, String>>,
    /// The cluster CA (the PKI directory's `ca.crt`), by sha256, when it can be read.
    pub cluster_ca: Option<Vec<String>>,
}

/// What the evaluator knows about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// Roles of the file in the CIS 1.1 file set.
    pub roles: Vec<FileRole>,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Owner name, when the uid has one.
    pub user: Option<String>,
    /// Group name, when the gid has one.
    pub group: Option<String>,
    /// The certificates the file holds, when it was read: one set for a certificate file,
    /// one per user with a client certificate for a kubeconfig.
    pub tls: Vec<TlsFacts>,
    /// What a kubeconfig says, when it was read.
    pub kubeconfig: Option<KubeconfigFacts>,
}

/// What the kubeconfig checks know of a kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigFacts {
    /// The kubeconfig, or why it cannot be read.
    pub config: Result<crate::kubeconfig::Kubeconfig, String>,
    /// For each cluster, in order: the sha256 of each certificate its CA holds, or why
    /// they cannot be read (`Ok` and empty when it names no CA).
    pub cluster_cas: Vec<Result<Vec<String>, String>>,
    /// On a node: the sha256 of the cluster CA's certificates (`ca.crt` in the PKI
    /// directory). `None` elsewhere.
    pub node_ca: Option<Vec<String>>,
    /// The client key files users name: the user, the file, and its mode (or why it cannot
    /// be read).
    pub key_files: Vec<(String, std::path::PathBuf, Result<u32, String>)>,
}

/// What the certificate checks know of a certificate file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFacts {
    /// Whose certificates these are, when the file holds several sets (a kubeconfig's user:
    /// `user admin`).
    pub label: Option<String>,
    /// The certificates in the file, in order, or why it holds none that can be read.
    pub certs: Result<Vec<crate::tls::Cert>, String>,
    /// The public key of the private key that goes with it (kubeadm's pair: the same name
    /// ending in `.key`), or why that key cannot be read; `None` when there is no such file.
    pub key: Option<Result<Vec<u8>, String>>,
    /// Whether the file is meant to hold a CA (kubeadm names its CAs `ca.crt` and
    /// `*-ca.crt`), `None` when that is not known.
    pub meant_ca: Option<bool>,
    /// When the check runs, Unix seconds: expiry is judged against it.
    pub now: i64,
    /// Under this many days left, an expiry is high.
    pub expiry_high_days: u32,
    /// Under this many days left, an expiry is medium.
    pub expiry_medium_days: u32,
}

enum Verdict {
    Pass,
    Fail,
    Unknown(String),
}

/// The checks of one test: most tests make exactly one, and one needs no allocation.
enum Checks {
    One(Check),
    Many(Vec<Check>),
}

/// `one![check]`: a single check.
macro_rules! one {
    ($c:expr) => {
        Checks::One($c)
    };
}

impl From<Vec<Check>> for Checks {
    fn from(v: Vec<Check>) -> Self {
        Checks::Many(v)
    }
}

impl IntoIterator for Checks {
    type Item = Check;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Check>, std::vec::IntoIter<Check>>;

    fn into_iter(self) -> Self::IntoIter {
        match self {
            Checks::One(c) => Some(c).into_iter().chain(Vec::new()),
            Checks::Many(v) => None.into_iter().chain(v),
        }
    }
}

struct Check {
    verdict: Verdict,
    flag: Option<String>,
    observed: Option<String>,
    expected: Option<String>,
    /// A fix specific to this check (built-in checks); otherwise the rule's fix.
    fix: Option<Fix>,
    severity: Option<Severity>,
    title: Option<String>,
    reference: Option<String>,
}

impl Check {
    fn new(
        verdict: Verdict,
        flag: Option<&str>,
        observed: Option<String>,
        expected: Option<String>,
    ) -> Self {
        Check {
            verdict,
            flag: flag.map(dashed),
            observed,
            expected,
            fix: None,
            severity: None,
            title: None,
            reference: None,
        }
    }

    fn pass() -> Self {
        Check::new(Verdict::Pass, None, None, None)
    }
}

/// `--name` (without `format!`, which guesses the capacity and grows: every evaluation
/// makes a few hundred of these strings).
fn dashed(name: &str) -> String {
    concat(&["--", name])
}

/// The parts, joined, in one allocation.
fn concat(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// An absent flag's value, or the flag's own.
enum Resolved {
    Present(String),
    Default(String),
    Unknown,
}

impl Resolved {
    fn value(&self) -> Option<&str> {
        match self {
            Resolved::Present(v) | Resolved::Default(v) => Some(v),
            Resolved::Unknown => None,
        }
    }

    fn describe(self) -> String {
        match self {
            Resolved::Present(v) => v,
            Resolved::Default(v) => format!("absent (default {v})"),
            Resolved::Unknown => "absent".into(),
        }
    }
}

struct Ctx<'a> {
    cat: &'a Catalogue,
    c: Component,
    v: Option<Version>,
    flags: &'a Flags,
    authn: Option<&'a AuthnConfig>,
    authz: Option<&'a AuthzConfig>,
    certs: Option<&'a ManifestCerts>,
    /// The catalogue's record of each flag use, looked up once.
    specs: Vec<Option<&'a FlagSpec>>,
}

impl Ctx<'_> {
    fn kind(&self, flag: &str) -> FlagKind {
        self.cat.kind(self.c, flag)
    }

    fn resolve(&self, flag: &str) -> Resolved {
        match self.flags.effective(flag, self.kind(flag)) {
            Some(v) => Resolved::Present(v),
            None => match self.cat.default_of(self.c, flag, self.v) {
                Some(d) => Resolved::Default(d),
                None => Resolved::Unknown,
            },
        }
    }

    fn list(&self, flag: &str) -> (Vec<String>, String) {
        if flag == "authorization-mode"
            && let Some((file, types)) = self.authorizers()
        {
            return (
                types.to_vec(),
                format!("authorizers in {file}: {}", types.join(",")),
            );
        }
        match self.flags.list(flag) {
            Some(items) => {
                let shown = items.join(",");
                (items, shown)
            }
            None => match self.cat.default_of(self.c, flag, self.v) {
                Some(d) => (
                    crate::manifest::flags::split_list(&d).collect(),
                    format!("absent (default {d})"),
                ),
                None => (Vec::new(), "absent".into()),
            },
        }
    }

    /// The authorizers of the file `--authorization-config` names, when it was read: they
    /// replace `--authorization-mode` (kube-apiserver refuses the two together).
    fn authorizers(&self) -> Option<(String, &[String])> {
        let file = self.flags.value("authorization-config")?;
        match self.authz? {
            AuthzConfig::Authorizers(types) => Some((file, types)),
            AuthzConfig::Unreadable(_) => None,
        }
    }

    fn version_text(&self) -> String {
        match self.v {
            Some(v) => format!("{} {v}", self.c),
            None => format!("{} (version unknown)", self.c),
        }
    }
}

/// Evaluates every component rule that targets this manifest's component.
pub fn evaluate_manifest(cat: &Catalogue, facts: ManifestFacts<'_>) -> Vec<Finding> {
    let ctx = Ctx::new(cat, &facts);
    evaluate_ctx(&ctx)
}

/// Whether the manifest turns anonymous access off, or limits it to the health endpoints
/// (what `apiserver-anonymous-auth` passes): then `/api` must refuse a request without
/// credentials.
pub fn anonymous_off(cat: &Catalogue, facts: &ManifestFacts<'_>) -> bool {
    let ctx = Ctx::new(cat, facts);
    matches!(anonymous_restricted(&ctx).verdict, Verdict::Pass)
}

impl<'a> Ctx<'a> {
    fn new(cat: &'a Catalogue, facts: &ManifestFacts<'a>) -> Self {
        Ctx {
            cat,
            c: facts.cp.component,
            v: facts.cp.version,
            flags: &facts.cp.flags,
            authn: facts.authn,
            authz: facts.authz,
            certs: facts.certs,
            specs: facts
                .cp
                .flags
                .uses
                .iter()
                .map(|u| cat.flag(facts.cp.component, &u.name))
                .collect(),
        }
    }
}

fn evaluate_ctx(ctx: &Ctx<'_>) -> Vec<Finding> {
    let cat = ctx.cat;
    let mut out = Vec::with_capacity(cat.rules.len() + 8);
    for rule in &cat.rules {
        match rule.target {
            Target::Component(c) if c == ctx.c => {}
            Target::AnyComponent => {}
            _ => continue,
        }
        if matches!(rule.test, Test::Builtin(b) if b.on_live()) {
            continue; // judged on what a probe saw (evaluate_live), not on the manifest
        }
        if let Some(reason) = not_applicable(rule, ctx) {
            out.push(finding(
                rule,
                Check::new(Verdict::Pass, None, None, None),
                Status::Skip,
                Some(reason),
                ctx,
            ));
            continue;
        }
        // The authorization rules read the AuthorizationConfiguration when it was read.
        let from_file = rule.unless_set.as_deref() == Some("authorization-config")
            && ctx.authorizers().is_some();
        if !from_file && let Some(flag) = rule.unless_set.as_deref().filter(|f| ctx.flags.is_set(f))
        {
            let file = ctx.flags.value(flag).unwrap_or_default();
            let why = match (flag, ctx.authz) {
                ("authorization-config", Some(AuthzConfig::Unreadable(why))) => {
                    format!("cannot read the authorization config {file}: {why}")
                }
                _ => format!("configured in --{flag}={file}, which this rule does not read"),
            };
            let check = Check::new(Verdict::Unknown(why), Some(flag), Some(file), None);
            // A flag edit changes nothing there (etcd ignores flags with --config-file), or
            // stops the component (--authorization-mode beside --authorization-config).
            let mut f = finding(rule, check, Status::Warn, None, ctx);
            f.fix = None;
            f.autofix = false;
            out.push(f);
            continue;
        }
        for mut check in run(&rule.test, ctx) {
            let status = status_of(rule, &check.verdict);
            let mut reason = None;
            if from_file {
                // No flag edit applies: the file decides.
                check.flag = Some("authorization-config".into());
                if status != Status::Pass {
                    reason = Some(format!(
                        "the authorizers are set in {}: change them there; no fix edits that file",
                        ctx.flags.value("authorization-config").unwrap_or_default()
                    ));
                }
            }
            let mut f = finding(rule, check, status, None, ctx);
            if from_file {
                f.fix = None;
                f.autofix = false;
                f.reason = reason.or(f.reason);
            }
            out.push(f);
        }
    }
    out
}

/// Evaluates every file rule whose role the file has.
pub fn evaluate_file(cat: &Catalogue, file: &FileFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    for rule in &cat.rules {
        let Target::Files(role) = rule.target else {
            continue;
        };
        if !file.roles.contains(&role) {
            continue;
        }
        let check = match &rule.test {
            Test::ModeAtMost(max) => mode_check(file.mode, max),
            Test::Owner(want) => owner_check(file, want),
            Test::Builtin(b) if b.on_kubeconfigs() || b.on_certificates() => {
                let (checked, what) = if b.on_kubeconfigs() {
                    let k = file.kubeconfig.as_ref();
                    (k.map(|k| kubeconfig_check(*b, k)), "kubeconfig")
                } else {
                    let t = (!file.tls.is_empty()).then_some(&file.tls[..]);
                    (t.map(|t| certificate_checks(*b, t)), "certificate")
                };
                match checked.unwrap_or_else(|| Err(format!("the {what} was not read"))) {
                    Ok(check) => check,
                    Err(why) => {
                        out.push(skipped(rule, why));
                        continue;
                    }
                }
            }
            _ => Check::new(
                Verdict::Unknown("only mode_at_most and owner apply to files".into()),
                None,
                None,
                None,
            ),
        };
        out.push(plain_finding(rule, check));
    }
    out
}

/// A finding of a rule that offers no fix (files, probes).
fn plain_finding(rule: &Rule, check: Check) -> Finding {
    let status = status_of(rule, &check.verdict);
    let reason = match &check.verdict {
        Verdict::Unknown(r) => Some(r.clone()),
        _ => None,
    };
    Finding {
        id: rule.id.clone(),
        cis: rule.cis.clone(),
        title: rule.title.clone(),
        severity: rule.severity,
        status,
        flag: check.flag,
        observed: check.observed,
        expected: check.expected,
        remediation: rule.remediation.clone(),
        autofix: false,
        fix: None,
        reason,
        reference: None,
    }
}

/// Evaluates the live rules on what a probe of kube-apiserver saw. A server that is down
/// fails `live-apiserver-answers` only: the others are skipped, since down is not insecure.
/// `Err`: why nothing was probed (each live rule is skipped with it).
pub fn evaluate_live(cat: &Catalogue, seen: Result<&crate::live::Observed, &str>) -> Vec<Finding> {
    let mut out = Vec::new();
    for rule in &cat.rules {
        let Test::Builtin(b) = rule.test else {
            continue;
        };
        if !b.on_live() || !matches!(rule.target, Target::Component(Component::KubeApiserver)) {
            continue;
        }
        match seen
            .map_err(str::to_string)
            .and_then(|seen| live_check(b, seen))
        {
            Ok(check) => out.push(plain_finding(rule, check)),
            Err(why) => out.push(skipped(rule, why)),
        }
    }
    out
}

/// One live check; `Err` when it does not apply, with why.
fn live_check(b: Builtin, seen: &crate::live::Observed) -> Result<Check, String> {
    use crate::live::clip;
    let t = &seen.target;
    let at = format!("{}", t.secure);
    if let Some(down) = &seen.down {
        if b == Builtin::LiveAnswers {
            return Ok(Check::new(
                Verdict::Fail,
                None,
                Some(format!("nothing answers: {down}")),
                Some(format!("kube-apiserver on {at}")),
            ));
        }
        return Err(format!("kube-apiserver is down ({down})"));
    }
    let pass_fail = |fails: bool| if fails { Verdict::Fail } else { Verdict::Pass };
    let handshake = seen.handshake.as_ref();
    Ok(match b {
        Builtin::LiveAnswers => {
            let livez = match &seen.livez {
                Ok(code) => format!("/livez answered {code}"),
                Err(e) => e.clone(),
            };
            Check::new(
                pass_fail(seen.livez.is_err()),
                None,
                Some(livez),
                Some("an HTTP answer to /livez".into()),
            )
        }
        Builtin::LiveTlsVersion => match &seen.legacy {
            Err(e) => Check::new(Verdict::Unknown(e.clone()), None, None, None),
            Ok(accepted) => Check::new(
                pass_fail(accepted.is_some()),
                Some("tls-min-version"),
                Some(match (accepted, handshake) {
                    (Some(v), _) => format!("{v} accepted on {at}"),
                    (None, Ok(h)) => format!("TLS 1.1 refused; {} negotiated", h.version),
                    (None, Err(_)) => "TLS 1.1 refused".into(),
                }),
                Some("TLS 1.2 or later only".into()),
            ),
        },
        Builtin::LiveChainVerifies => {
            let h = handshake.map_err(|e| format!("no TLS 1.2/1.3 handshake: {e}"))?;
            Check::new(
                pass_fail(h.verified.is_err()),
                Some("tls-cert-file"),
                Some(match &h.verified {
                    Ok(()) => format!("{} verifies for {}", clip(&h.leaf.subject), t.server_name),
                    Err(e) => format!("{}: {e}", clip(&h.leaf.subject)),
                }),
                Some(format!(
                    "a chain to the cluster CA ({}) valid for {}",
                    t.cluster_ca.display(),
                    t.server_name
                )),
            )
        }
        Builtin::LiveServesCertFile => {
            let file = seen
                .cert_file
                .as_ref()
                .ok_or("no --tls-cert-file: kube-apiserver serves a certificate it makes")?;
            let h = handshake.map_err(|e| format!("no TLS 1.2/1.3 handshake: {e}"))?;
            match file {
                Err(e) => Check::new(
                    Verdict::Unknown(format!("cannot read --tls-cert-file: {e}")),
                    Some("tls-cert-file"),
                    None,
                    None,
                ),
                Ok(certs) => {
                    let same = certs[0].sha256 == h.leaf.sha256;
                    let describe = |c: &crate::tls::Cert| {
                        format!(
                            "{} (sha256 {}, valid until {})",
                            clip(&c.subject),
                            &c.sha256[..16],
                            date(c.not_after)
                        )
                    };
                    Check::new(
                        pass_fail(!same),
                        Some("tls-cert-file"),
                        Some(format!("serves {}", describe(&h.leaf))),
                        Some(format!("the file's {}", describe(&certs[0]))),
                    )
                }
            }
        }
        Builtin::LiveNoPlaintext => {
            let mut bad = Vec::new();
            let mut unknown = Vec::new();
            for (addr, answer) in &seen.plaintext {
                match answer {
                    Ok(Some(line)) => {
                        bad.push(format!("{addr} answered GET /api in plaintext: {line}"))
                    }
                    Ok(None) => {}
                    Err(e) => unknown.push(format!("{addr}: {e}")),
                }
            }
            let probed: Vec<String> = seen.plaintext.iter().map(|(a, _)| a.to_string()).collect();
            if bad.is_empty() && !unknown.is_empty() {
                Check::new(Verdict::Unknown(unknown.join("; ")), None, None, None)
            } else {
                judge(
                    bad,
                    &format!("no plaintext Kubernetes API on {}", probed.join(", ")),
                    "TLS only",
                )
            }
        }
        Builtin::LiveAnonymousRefused => {
            if !t.anonymous_off {
                return Err(
                    "the manifest allows anonymous requests (apiserver-anonymous-auth reports it)"
                        .into(),
                );
            }
            match &seen.api {
                Err(e) => Check::new(Verdict::Unknown(e.clone()), None, None, None),
                Ok(code) => Check::new(
                    pass_fail(!matches!(code, 401 | 403)),
                    Some("anonymous-auth"),
                    Some(format!("GET /api without credentials answered {code}")),
                    Some("401 or 403".into()),
                ),
            }
        }
        _ => return Err("not a live check".into()),
    })
}

/// A failed CIS "Manual" check is a warn; an undecidable one is a warn with its reason.
/// A finding for a rule that does not apply to this file.
fn skipped(rule: &Rule, reason: String) -> Finding {
    Finding {
        id: rule.id.clone(),
        cis: rule.cis.clone(),
        title: rule.title.clone(),
        severity: rule.severity,
        status: Status::Skip,
        flag: None,
        observed: None,
        expected: None,
        remediation: rule.remediation.clone(),
        autofix: false,
        fix: None,
        reason: Some(reason),
        reference: None,
    }
}

/// A date for a message: `2027-01-31T12:00:00Z`.
fn date(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0).unsigned_abs());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One certificate check of every set of certificates in a file, as one: it fails when one
/// fails (naming whose), is unknown when one is unknown, and does not apply when it applies to
/// none of them.
fn certificate_checks(b: Builtin, sets: &[TlsFacts]) -> Result<Check, String> {
    if let [one] = sets
        && one.label.is_none()
    {
        return certificate_check(b, one);
    }
    let mut checked = Vec::new();
    let mut why = None;
    for t in sets {
        match certificate_check(b, t) {
            Ok(c) => checked.push((t.label.as_deref().unwrap_or("certificate"), c)),
            Err(e) => why = why.or(Some(e)),
        }
    }
    let Some((_, first)) = checked.first() else {
        return Err(why.unwrap_or_else(|| "no certificate".into()));
    };
    let expected = first.expected.clone();
    let failed = |c: &Check| matches!(c.verdict, Verdict::Fail);
    let unknown = checked.iter().find_map(|(l, c)| match &c.verdict {
        Verdict::Unknown(r) => Some(format!("{l}: {r}")),
        _ => None,
    });
    let verdict = if checked.iter().any(|(_, c)| failed(c)) {
        Verdict::Fail
    } else if let Some(r) = unknown {
        Verdict::Unknown(r)
    } else {
        Verdict::Pass
    };
    // The failing sets when some fail, else every set.
    let any_failed = matches!(verdict, Verdict::Fail);
    let observed = checked
        .iter()
        .filter(|(_, c)| !any_failed || failed(c))
        .filter_map(|(l, c)| c.observed.as_ref().map(|o| format!("{l}: {o}")))
        .collect::<Vec<_>>()
        .join("; ");
    Ok(Check::new(
        verdict,
        None,
        (!observed.is_empty()).then_some(observed),
        expected,
    ))
}

/// One certificate check of a set of certificates; `Err` when it does not apply, with why.
fn certificate_check(b: Builtin, t: &TlsFacts) -> Result<Check, String> {
    let certs = match &t.certs {
        Ok(c) => c,
        Err(e) => {
            return Ok(Check::new(
                Verdict::Unknown(format!("cannot read the certificate: {e}")),
                None,
                None,
                None,
            ));
        }
    };
    let soonest = certs
        .iter()
        .min_by_key(|c| c.not_after)
        .ok_or("no certificate")?;
    let left = soonest.not_after - t.now;
    // The date, not the days left: an open finding's evidence stays the same from one day
    // to the next (the daemon records a change of evidence as a change of the file's state).
    let when = format!(
        "{} {} {}",
        soonest.subject,
        if left <= 0 { "expired" } else { "expires" },
        date(soonest.not_after)
    );
    // Fails with more than `beyond_days` left and at most `within_days`.
    let expiry = |within_days: u32, beyond_days: u32| {
        let fails =
            left > i64::from(beyond_days) * 86_400 && left <= i64::from(within_days) * 86_400;
        Check::new(
            if fails { Verdict::Fail } else { Verdict::Pass },
            None,
            Some(when.clone()),
            Some(format!("more than {within_days} days left")),
        )
    };
    Ok(match b {
        Builtin::CertExpired => {
            let fails = left <= 0;
            Check::new(
                if fails { Verdict::Fail } else { Verdict::Pass },
                None,
                Some(if fails {
                    when.clone()
                } else {
                    format!("valid until {}", date(soonest.not_after))
                }),
                Some("not expired".into()),
            )
        }
        Builtin::CertExpiring => expiry(t.expiry_high_days, 0),
        Builtin::CertExpiringSoon => expiry(t.expiry_medium_days, t.expiry_high_days),
        Builtin::CertWeakKey => judge(
            certs
                .iter()
                .filter_map(|c| c.key.weakness().map(|w| format!("{}: {w}", c.subject)))
                .collect(),
            &certs
                .iter()
                .map(|c| c.key.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            "RSA 2048 bits or more, or EC P-256 or larger",
        ),
        Builtin::CertWeakSignature => judge(
            certs
                .iter()
                .filter(|c| c.weak_signature)
                .map(|c| format!("{}: {}", c.subject, c.signature))
                .collect(),
            &certs
                .iter()
                .map(|c| c.signature.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            "a SHA-256 or stronger signature",
        ),
        Builtin::CertLeafIsCa => {
            let meant_ca = t
                .meant_ca
                .ok_or("whether the file is meant to hold a CA is not known (kubeadm names CAs ca.crt and *-ca.crt)")?;
            if meant_ca {
                return Err("the file is meant to hold a CA".into());
            }
            let leaf = &certs[0];
            Check::new(
                if leaf.is_ca {
                    Verdict::Fail
                } else {
                    Verdict::Pass
                },
                None,
                Some(format!(
                    "{}: {}",
                    leaf.subject,
                    if leaf.is_ca { "CA:TRUE" } else { "not a CA" }
                )),
                Some("a serving or client certificate that is not a CA".into()),
            )
        }
        Builtin::CertKeyMismatch => {
            let key = t
                .key
                .as_ref()
                .ok_or("no private key file next to the certificate")?;
            match key {
                Err(e) => Check::new(
                    Verdict::Unknown(format!("cannot read the private key: {e}")),
                    None,
                    None,
                    None,
                ),
                Ok(public) => {
                    let matches = *public == certs[0].public_key;
                    Check::new(
                        if matches {
                            Verdict::Pass
                        } else {
                            Verdict::Fail
                        },
                        None,
                        Some(if matches {
                            "the key is the certificate's".into()
                        } else {
                            "the key is another key than the certificate's".into()
                        }),
                        Some("the private key of the certificate".into()),
                    )
                }
            }
        }
        _ => return Err("not a certificate check".into()),
    })
}

/// The names in-cluster clients use for the API server: the `kubernetes` Service's.
const APISERVER_NAMES: [&str; 3] = ["kubernetes", "kubernetes.default", "kubernetes.default.svc"];

/// kube-apiserver's serving certificate covers the names clients use and the advertise
/// address.
fn apiserver_cert_names(ctx: &Ctx<'_>) -> Check {
    let unknown =
        |why: String| Check::new(Verdict::Unknown(why), Some("tls-cert-file"), None, None);
    let Some(serving) = ctx.certs.and_then(|c| c.serving.as_ref()) else {
        return unknown(
            "no --tls-cert-file: kube-apiserver serves a certificate it makes itself".into(),
        );
    };
    let leaf = match serving {
        Ok(certs) => &certs[0],
        Err(e) => return unknown(format!("cannot read the serving certificate: {e}")),
    };
    let mut wanted: Vec<String> = APISERVER_NAMES.iter().map(|n| n.to_string()).collect();
    if let Some(a) = ctx.flags.value("advertise-address") {
        wanted.push(a);
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| match w.parse::<std::net::IpAddr>() {
            Ok(ip) => !leaf.ips.contains(&ip),
            Err(_) => !leaf.dns_names.iter().any(|d| d.eq_ignore_ascii_case(w)),
        })
        .collect();
    let mut covered: Vec<String> = leaf.dns_names.clone();
    covered.extend(leaf.ips.iter().map(|i| i.to_string()));
    Check::new(
        if missing.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        Some("tls-cert-file"),
        Some(if missing.is_empty() {
            format!("covers {}", covered.join(", "))
        } else {
            format!(
                "does not cover {} (covers {})",
                missing
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                covered.join(", ")
            )
        }),
        Some(wanted.join(", ")),
    )
}

/// CIS 2.7: etcd trusts a CA of its own, not the cluster CA: compared by certificate where
/// both can be read, else only that `--trusted-ca-file` is set.
fn etcd_ca_distinct(ctx: &Ctx<'_>) -> Check {
    let flag = Some("trusted-ca-file");
    if ctx.flags.value("trusted-ca-file").is_none() {
        return Check::new(
            Verdict::Fail,
            flag,
            Some("absent".into()),
            Some("a CA of etcd's own".into()),
        );
    }
    let read = ctx
        .certs
        .and_then(|c| Some((c.trusted_ca.as_ref()?, c.cluster_ca.as_ref()?)));
    let Some((trusted, cluster)) = read else {
        // Off the node (or without the files) only the flag can be judged.
        return Check::new(
            Verdict::Pass,
            flag,
            Some("set".into()),
            Some("a CA of etcd's own".into()),
        );
    };
    match trusted {
        Err(e) => Check::new(
            Verdict::Unknown(format!("cannot read etcd's CA: {e}")),
            flag,
            None,
            None,
        ),
        Ok(certs) => {
            let shared = certs.iter().any(|c| cluster.contains(&c.sha256));
            Check::new(
                if shared { Verdict::Fail } else { Verdict::Pass },
                flag,
                Some(if shared {
                    "the cluster CA (the same certificate as ca.crt)".into()
                } else {
                    "a CA other than the cluster's".into()
                }),
                Some("a CA of etcd's own".into()),
            )
        }
    }
}

/// A check that fails on each of `bad` (what breaks the rule, named), or passes saying `ok`.
fn judge(bad: Vec<String>, ok: &str, expected: &str) -> Check {
    Check::new(
        if bad.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        None,
        Some(if bad.is_empty() {
            ok.to_string()
        } else {
            bad.join("; ")
        }),
        Some(expected.to_string()),
    )
}

/// One kubeconfig check; `Err` when it does not apply, with why.
fn kubeconfig_check(b: Builtin, k: &KubeconfigFacts) -> Result<Check, String> {
    use crate::kubeconfig::Pem;
    let config = match &k.config {
        Ok(c) => c,
        Err(e) => {
            return Ok(Check::new(
                Verdict::Unknown(format!("cannot read the kubeconfig: {e}")),
                None,
                None,
                None,
            ));
        }
    };
    let clusters = &config.clusters;
    Ok(match b {
        Builtin::KubeconfigHttps => judge(
            clusters
                .iter()
                .filter(|c| !c.server.starts_with("https://"))
                .map(|c| format!("cluster {}: server {}", c.name, c.server))
                .collect(),
            "every server is https://",
            "https:// servers only",
        ),
        Builtin::KubeconfigCaNamed => judge(
            clusters
                .iter()
                .filter(|c| matches!(c.ca, Pem::None | Pem::Undecodable))
                .map(|c| match c.ca {
                    Pem::Undecodable => {
                        format!(
                            "cluster {}: certificate-authority-data is not base64",
                            c.name
                        )
                    }
                    _ => format!("cluster {}: no certificate-authority", c.name),
                })
                .collect(),
            "every cluster names its CA",
            "certificate-authority or certificate-authority-data on every cluster",
        ),
        Builtin::KubeconfigVerifies => judge(
            clusters
                .iter()
                .filter(|c| c.insecure_skip_verify)
                .map(|c| format!("cluster {}: insecure-skip-tls-verify: true", c.name))
                .collect(),
            "every cluster verifies the server",
            "no insecure-skip-tls-verify",
        ),
        Builtin::KubeconfigClusterCa => {
            let node = k.node_ca.as_ref().ok_or("not a kubeconfig of this node")?;
            let mut bad = Vec::new();
            for (c, cas) in clusters.iter().zip(&k.cluster_cas) {
                match cas {
                    Err(e) => bad.push(format!("cluster {}: {e}", c.name)),
                    Ok(cas) if cas.is_empty() => {}
                    Ok(cas) if cas.iter().any(|h| node.contains(h)) => {}
                    Ok(_) => bad.push(format!(
                        "cluster {}: trusts a CA that is not the cluster's (ca.crt)",
                        c.name
                    )),
                }
            }
            judge(
                bad,
                "every cluster trusts the cluster CA",
                "the cluster CA (ca.crt)",
            )
        }
        Builtin::KubeconfigNoBasicAuth => judge(
            config
                .users
                .iter()
                .filter(|u| u.basic_auth)
                .map(|u| format!("user {}: username/password", u.name))
                .collect(),
            "no user has a username or password",
            "no username or password",
        ),
        Builtin::KubeconfigNoStaticToken => judge(
            config
                .users
                .iter()
                .filter(|u| u.static_token)
                .map(|u| format!("user {}: a static token", u.name))
                .collect(),
            "no user has a static token",
            "client certificates or short-lived credentials (exec), not a static token",
        ),
        Builtin::KubeconfigClientKeyMode => {
            if k.key_files.is_empty() {
                return Err("names no client key file".into());
            }
            let mut bad = Vec::new();
            let mut unread = Vec::new();
            for (user, file, mode) in &k.key_files {
                match mode {
                    Ok(m) if m & 0o177 == 0 => {}
                    Ok(m) => bad.push(format!("user {user}: {} is {m:04o}", file.display())),
                    Err(e) => unread.push(format!("user {user}: {}: {e}", file.display())),
                }
            }
            if bad.is_empty() && !unread.is_empty() {
                let why = format!("cannot stat {}", unread.join("; "));
                return Ok(Check::new(Verdict::Unknown(why), None, None, None));
            }
            judge(
                bad,
                "every client key file is 0600 or stricter",
                "0600 or stricter",
            )
        }
        _ => return Err("not a kubeconfig check".into()),
    })
}

fn status_of(rule: &Rule, verdict: &Verdict) -> Status {
    match verdict {
        Verdict::Pass => Status::Pass,
        Verdict::Fail if rule.warn_only => Status::Warn,
        Verdict::Fail => Status::Fail,
        Verdict::Unknown(_) => Status::Warn,
    }
}

fn mode_check(mode: u32, max: &str) -> Check {
    let Ok(allowed) = u32::from_str_radix(max, 8) else {
        return Check::new(
            Verdict::Unknown(format!("{max:?} is not an octal mode")),
            None,
            None,
            None,
        );
    };
    let verdict = if mode & 0o7777 & !allowed == 0 {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Check::new(
        verdict,
        None,
        Some(format!("{:04o}", mode & 0o7777)),
        Some(format!("{allowed:04o} or stricter")),
    )
}

fn owner_check(file: &FileFacts, want: &str) -> Check {
    let user = file.user.clone().unwrap_or_else(|| file.uid.to_string());
    let group = file.group.clone().unwrap_or_else(|| file.gid.to_string());
    let observed = format!("{user}:{group}");
    let verdict = if observed == want {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    Check::new(verdict, None, Some(observed), Some(want.to_string()))
}

fn finding(
    rule: &Rule,
    check: Check,
    status: Status,
    skip: Option<String>,
    ctx: &Ctx<'_>,
) -> Finding {
    let mut reason = skip.or(match &check.verdict {
        Verdict::Unknown(r) => Some(r.clone()),
        _ => None,
    });
    let mut fix = None;
    let mut autofix = false;
    if (status == Status::Fail || status == Status::Warn)
        && let Some(candidate) = check.fix.clone().or_else(|| rule.fix.clone())
    {
        match guard(&candidate, ctx) {
            Ok(()) => {
                autofix = rule.safe;
                fix = Some(candidate);
            }
            Err(why) => {
                reason.get_or_insert(format!("{NO_FIX_OFFERED}{why}"));
            }
        }
    }
    Finding {
        id: rule.id.clone(),
        cis: rule.cis.clone(),
        title: check
            .title
            .map(Arc::from)
            .unwrap_or_else(|| rule.title.clone()),
        severity: check.severity.unwrap_or(rule.severity),
        status,
        flag: check.flag.or_else(|| rule.flags.first().map(|f| dashed(f))),
        observed: check.observed,
        expected: check.expected,
        remediation: rule.remediation.clone(),
        autofix,
        fix,
        reason,
        reference: check.reference,
    }
}

/// The version guard: a fix may change or remove what is there, but may add a flag or list
/// item only when the detected version is known and accepts it.
fn guard(fix: &Fix, ctx: &Ctx<'_>) -> Result<(), String> {
    let adds = |flag: &str| -> Result<(), String> {
        let Some(v) = ctx.v else {
            return Err(format!(
                "the {} version is unknown, so nothing is added",
                ctx.c
            ));
        };
        match ctx.cat.flag_exists(ctx.c, flag, Some(v)) {
            Existence::Accepted => Ok(()),
            e => Err(format!(
                "--{flag} is not accepted by {} {v} ({})",
                ctx.c,
                explain(e)
            )),
        }
    };
    match fix {
        Fix::Set(FlagValue { flag, .. }) if ctx.flags.is_set(flag) => Ok(()),
        Fix::Set(FlagValue { flag, .. }) => adds(flag),
        Fix::AddToList(FlagItem { flag, item }) => {
            if !ctx.flags.is_set(flag) {
                adds(flag)?;
            }
            let Some(v) = ctx.v else {
                return Err(format!(
                    "the {} version is unknown, so nothing is added",
                    ctx.c
                ));
            };
            match ctx.cat.item_exists(ctx.c, flag, item, Some(v)) {
                Existence::Accepted => Ok(()),
                e => Err(format!(
                    "{item} is not accepted by {} {v} ({})",
                    ctx.c,
                    explain(e)
                )),
            }
        }
        Fix::Remove(_) | Fix::RemoveFromList(_) => Ok(()),
        Fix::AnonymousHealthOnly | Fix::AnonymousHealthAndDiscovery => match ctx.v {
            Some(v) if ANONYMOUS_CONFIG_SINCE.le(v) => adds("authentication-config"),
            Some(v) => Err(format!(
                "an anonymous: block in an AuthenticationConfiguration needs kube-apiserver {}.{} or later, not {v}",
                ANONYMOUS_CONFIG_SINCE.0, ANONYMOUS_CONFIG_SINCE.1
            )),
            None => Err(format!(
                "the {} version is unknown, so nothing is added",
                ctx.c
            )),
        },
    }
}

/// Why a rule does not apply to this version, if it does not.
fn not_applicable(rule: &Rule, ctx: &Ctx<'_>) -> Option<String> {
    if matches!(rule.test, Test::Builtin(Builtin::ApiserverCertNames)) && ctx.certs.is_none() {
        return Some(
            "the certificate is read on a node (by the daemon, or `check` without paths)".into(),
        );
    }
    if rule.since.is_some() || rule.until.is_some() {
        let Some(v) = ctx.v else {
            return Some("applies only to some versions, and the version is unknown".into());
        };
        if rule.until.is_some_and(|u| u.le(v))
            && let Some(why) = &rule.until_reason
        {
            return Some(format!("{why} on {}", ctx.version_text()));
        }
        if rule.since.is_some_and(|s| !s.le(v)) || rule.until.is_some_and(|u| u.le(v)) {
            return Some(format!("does not apply to {}", ctx.version_text()));
        }
    }
    for (i, flag) in rule.flags.iter().enumerate() {
        let lifecycle = match (rule.target, rule.flag_lifecycle.get(i)) {
            (Target::Component(_), Some(l)) => l.on(ctx.v),
            _ => ctx.cat.flag_exists(ctx.c, flag, ctx.v),
        };
        match lifecycle {
            Existence::Accepted => {}
            Existence::Unknown if ctx.flags.is_set(flag) => {}
            Existence::Unknown => {
                return Some(format!(
                    "--{flag} exists only in some versions, and the version is unknown"
                ));
            }
            e => {
                return Some(format!(
                    "--{flag} does not exist in {} ({})",
                    ctx.version_text(),
                    explain(e)
                ));
            }
        }
    }
    let mut items = Vec::new();
    list_items(&rule.test, &mut items);
    for (flag, item) in items {
        match ctx.cat.item_exists(ctx.c, &flag, &item, ctx.v) {
            Existence::Accepted => {}
            Existence::Unknown => {
                return Some(format!(
                    "{item} exists only in some versions, and the version is unknown"
                ));
            }
            e => {
                return Some(format!(
                    "{item} does not exist in {} ({})",
                    ctx.version_text(),
                    explain(e)
                ));
            }
        }
    }
    None
}

fn list_items(t: &Test, out: &mut Vec<(String, String)>) {
    match t {
        Test::Has(f) | Test::NotHas(f) => out.push((f.flag.clone(), f.item.clone())),
        Test::All(ts) | Test::Any(ts) => ts.iter().for_each(|t| list_items(t, out)),
        _ => {}
    }
}

fn same_value(kind: FlagKind, a: &str, b: &str) -> Option<bool> {
    match kind {
        FlagKind::Bool => Some(parse_go_bool(a)? == parse_go_bool(b)?),
        FlagKind::Int => Some(a.trim().parse::<i64>().ok()? == b.trim().parse::<i64>().ok()?),
        _ => Some(a == b),
    }
}

fn run(test: &Test, ctx: &Ctx<'_>) -> Checks {
    match test {
        Test::Eq(FlagValue { flag, value }) | Test::NotEq(FlagValue { flag, value }) => {
            let want_equal = matches!(test, Test::Eq(_));
            let r = ctx.resolve(flag);
            let expected = if want_equal {
                value.clone()
            } else {
                concat(&["not ", value])
            };
            let verdict = match r.value() {
                None => Verdict::Unknown(format!(
                    "--{flag} is absent and its default on {} is not known",
                    ctx.version_text()
                )),
                Some(seen) => match same_value(ctx.kind(flag), seen, value) {
                    Some(eq) if eq == want_equal => Verdict::Pass,
                    Some(_) => Verdict::Fail,
                    // Not parseable as the flag's type: the component would not start.
                    None => Verdict::Fail,
                },
            };
            one![Check::new(
                verdict,
                Some(flag),
                Some(r.describe()),
                Some(expected),
            )]
        }
        Test::Set(FlagRef { flag }) | Test::NotSet(FlagRef { flag }) => {
            let want_set = matches!(test, Test::Set(_));
            let seen = ctx.flags.effective(flag, ctx.kind(flag));
            let verdict = if seen.is_some() == want_set {
                Verdict::Pass
            } else {
                Verdict::Fail
            };
            one![Check::new(
                verdict,
                Some(flag),
                Some(seen.unwrap_or_else(|| "absent".into())),
                Some(if want_set { "set" } else { "not set" }.into()),
            )]
        }
        Test::Has(FlagItem { flag, item }) | Test::NotHas(FlagItem { flag, item }) => {
            let want = matches!(test, Test::Has(_));
            // The deprecated --admission-control is the whole enabled list where it is used:
            // what it does not name is not enabled, as if disabled.
            let legacy = ctx
                .flags
                .list("admission-control")
                .filter(|_| !ctx.flags.is_set(flag));
            let (has, shown) = match (flag.as_str(), legacy) {
                ("enable-admission-plugins", Some(l)) => (
                    l.contains(item),
                    format!("--admission-control={}", l.join(",")),
                ),
                ("disable-admission-plugins", Some(l)) => (
                    !l.contains(item),
                    format!(
                        "--admission-control={} (what it does not name is not enabled)",
                        l.join(",")
                    ),
                ),
                _ => {
                    let (items, shown) = ctx.list(flag);
                    (items.iter().any(|i| i == item), shown)
                }
            };
            let verdict = if has == want {
                Verdict::Pass
            } else {
                Verdict::Fail
            };
            let expected = concat(&[
                if want {
                    "includes "
                } else {
                    "does not include "
                },
                item,
            ]);
            one![Check::new(verdict, Some(flag), Some(shown), Some(expected))]
        }
        Test::Gte(n) => {
            let r = ctx.resolve(&n.flag);
            let verdict = match r.value() {
                None => Verdict::Unknown(format!(
                    "--{} is absent and its default is not known",
                    n.flag
                )),
                Some(v) => match v.trim().parse::<i64>() {
                    Ok(x) if x >= n.value => Verdict::Pass,
                    _ => Verdict::Fail,
                },
            };
            let observed = match r.value().filter(|v| v.trim().parse::<i64>().is_err()) {
                Some(v) => format!("{v} (not a whole number: the component will not start)"),
                None => r.describe(),
            };
            one![Check::new(
                verdict,
                Some(&n.flag),
                Some(observed),
                Some(format!(">= {}", n.value)),
            )]
        }
        Test::Subset(s) => {
            let (items, shown) = match ctx.flags.list(&s.flag) {
                Some(items) => {
                    let shown = items.join(",");
                    (Some(items), shown)
                }
                None => (None, "absent (default: the Go TLS library's list)".into()),
            };
            let verdict = match &items {
                Some(items) if items.iter().all(|i| s.allowed.contains(i)) => Verdict::Pass,
                _ => Verdict::Fail,
            };
            one![Check::new(
                verdict,
                Some(&s.flag),
                Some(shown),
                Some(format!("only {}", s.allowed.join(","))),
            )]
        }
        Test::GateNot(g) => {
            let gates = ctx.flags.map("feature-gates").unwrap_or_default();
            let seen = gates
                .iter()
                .find(|(k, _)| *k == g.gate)
                .map(|(_, v)| v.clone());
            let bad = seen
                .as_deref()
                .is_some_and(|v| same_value(FlagKind::Bool, v, &g.value) != Some(false));
            one![Check::new(
                if bad { Verdict::Fail } else { Verdict::Pass },
                Some("feature-gates"),
                Some(seen.map_or_else(
                    || format!("{} not set", g.gate),
                    |v| format!("{}={v}", g.gate),
                )),
                Some(format!("{} not {}", g.gate, g.value)),
            )]
        }
        Test::All(ts) => {
            let checks: Vec<Check> = ts.iter().flat_map(|t| run(t, ctx)).collect();
            let first_bad = checks
                .iter()
                .position(|c| !matches!(c.verdict, Verdict::Pass));
            let pick = first_bad.unwrap_or(0);
            checks
                .into_iter()
                .nth(pick)
                .into_iter()
                .collect::<Vec<_>>()
                .into()
        }
        Test::Any(ts) => {
            let checks: Vec<Check> = ts.iter().flat_map(|t| run(t, ctx)).collect();
            if let Some(i) = checks
                .iter()
                .position(|c| matches!(c.verdict, Verdict::Pass))
            {
                return checks
                    .into_iter()
                    .nth(i)
                    .into_iter()
                    .collect::<Vec<_>>()
                    .into();
            }
            let expected = checks
                .iter()
                .filter_map(|c| c.expected.clone())
                .collect::<Vec<_>>()
                .join(" or ");
            let mut first = checks.into_iter().next().into_iter().collect::<Vec<_>>();
            if let Some(c) = first.first_mut() {
                c.expected = Some(expected);
            }
            first.into()
        }
        Test::Manual(m) => one![Check::new(
            Verdict::Unknown(format!("manual check: {}", m.note)),
            None,
            None,
            None,
        )],
        Test::ModeAtMost(_) | Test::Owner(_) => {
            one![Check::new(
                Verdict::Unknown("file tests apply to files, not manifests".into()),
                None,
                None,
                None,
            )]
        }
        Test::Builtin(b) => builtin(*b, ctx),
    }
}

fn builtin(b: Builtin, ctx: &Ctx<'_>) -> Checks {
    let out = match b {
        Builtin::UnsupportedFlags => unsupported_flags(ctx),
        Builtin::UnsupportedPlugins => unsupported_items(
            ctx,
            &[
                "enable-admission-plugins",
                "disable-admission-plugins",
                "admission-control",
            ],
        ),
        Builtin::UnsupportedGates => unsupported_gates(ctx),
        Builtin::StrayArguments => stray_arguments(ctx),
        Builtin::InvalidValues => invalid_values(ctx),
        Builtin::VersionKnown => vec![match ctx.v {
            Some(_) => Check::pass(),
            None => Check::new(
                Verdict::Fail,
                None,
                Some("no version in the image tag".into()),
                Some("a release version tag".into()),
            ),
        }],
        Builtin::SupportedVersion => supported_version(ctx),
        Builtin::KnownCves => known_cves(ctx),
        Builtin::AnonymousRestricted => vec![anonymous_restricted(ctx)],
        Builtin::AdmissionFlagsMixed => admission_flags_mixed(ctx),
        Builtin::AuthorizationFlagsMixed => authorization_flags_mixed(ctx),
        Builtin::ApiserverCertNames => vec![apiserver_cert_names(ctx)],
        Builtin::EtcdCaDistinct => vec![etcd_ca_distinct(ctx)],
        // The certificate and kubeconfig checks: of files, never of manifests.
        _ => vec![Check::new(
            Verdict::Unknown(
                "a check of certificate files or kubeconfigs, not of manifests".into(),
            ),
            None,
            None,
            None,
        )],
    };
    if out.is_empty() {
        return Checks::One(Check::pass());
    }
    out.into()
}

fn unsupported_flags(ctx: &Ctx<'_>) -> Vec<Check> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for (u, spec) in ctx.flags.uses.iter().zip(&ctx.specs) {
        if ctx.flags.args[u.arg].source == crate::manifest::flags::ArgSource::Env {
            continue;
        }
        let e = Catalogue::exists(*spec, ctx.c, &u.name, ctx.v);
        // (Most flags are accepted: only those that are not are checked for repeats.)
        if matches!(e, Existence::Removed(_) | Existence::NotYet(_))
            && !seen.contains(&u.name.as_str())
        {
            seen.push(&u.name);
            let mut check = Check::new(
                Verdict::Fail,
                Some(&u.name),
                Some(ctx.flags.args[u.arg].text.clone()),
                Some(format!(
                    "absent: {} does not accept it ({})",
                    ctx.version_text(),
                    explain(e)
                )),
            );
            check.fix = Some(Fix::Remove(FlagRef {
                flag: u.name.clone(),
            }));
            out.push(check);
        }
    }
    out
}

fn unsupported_items(ctx: &Ctx<'_>, list_flags: &[&str]) -> Vec<Check> {
    let mut out = Vec::new();
    for flag in list_flags {
        for item in ctx.flags.list(flag).unwrap_or_default() {
            let e = ctx.cat.item_exists(ctx.c, flag, &item, ctx.v);
            if matches!(e, Existence::Removed(_) | Existence::NotYet(_)) {
                let mut check = Check::new(
                    Verdict::Fail,
                    Some(flag),
                    Some(item.clone()),
                    Some(format!(
                        "not listed: {} does not have {item} ({})",
                        ctx.version_text(),
                        explain(e)
                    )),
                );
                check.fix = Some(Fix::RemoveFromList(FlagItem {
                    flag: flag.to_string(),
                    item,
                }));
                out.push(check);
            }
        }
    }
    out
}

fn unsupported_gates(ctx: &Ctx<'_>) -> Vec<Check> {
    let mut out = Vec::new();
    for (gate, value) in ctx.flags.map("feature-gates").unwrap_or_default() {
        let e = ctx.cat.item_exists(ctx.c, "feature-gates", &gate, ctx.v);
        let locked_false = ctx
            .cat
            .item(ctx.c, "feature-gates", &gate)
            .and_then(|i| i.locked)
            .zip(ctx.v)
            .is_some_and(|(l, v): (Minor, Version)| {
                l.le(v) && parse_go_bool(&value) == Some(false)
            });
        let why = match e {
            Existence::Removed(_) | Existence::NotYet(_) => explain(e),
            _ if locked_false => "locked to true: false is refused".into(),
            _ => continue,
        };
        let mut check = Check::new(
            Verdict::Fail,
            Some("feature-gates"),
            Some(format!("{gate}={value}")),
            Some(format!("{gate} not set on {} ({why})", ctx.version_text())),
        );
        check.fix = Some(Fix::RemoveFromList(FlagItem {
            flag: "feature-gates".into(),
            item: format!("{gate}={value}"),
        }));
        out.push(check);
    }
    out
}

/// kube-apiserver's admission options refuse the deprecated list together with the new ones
/// (`pkg/kubeapiserver/options/admission.go`, `Validate`): it does not start.
fn admission_flags_mixed(ctx: &Ctx<'_>) -> Vec<Check> {
    let newer: Vec<&str> = ["enable-admission-plugins", "disable-admission-plugins"]
        .into_iter()
        .filter(|f| ctx.flags.is_set(f))
        .collect();
    if !ctx.flags.is_set("admission-control") || newer.is_empty() {
        return Vec::new();
    }
    vec![Check::new(
        Verdict::Fail,
        Some("admission-control"),
        Some(format!(
            "--admission-control together with --{}",
            newer.join(" and --")
        )),
        Some("one of them: --enable-admission-plugins / --disable-admission-plugins".into()),
    )]
}

/// `--authorization-config` with `--authorization-mode` or `--authorization-webhook-*`:
/// kube-apiserver refuses to start (`BuiltInAuthorizationOptions.Validate`).
fn authorization_flags_mixed(ctx: &Ctx<'_>) -> Vec<Check> {
    if !ctx.flags.is_set("authorization-config") {
        return Vec::new();
    }
    let mut legacy: Vec<&str> = ctx
        .flags
        .uses
        .iter()
        .map(|u| u.name.as_str())
        .filter(|n| *n == "authorization-mode" || n.starts_with("authorization-webhook-"))
        .collect();
    legacy.dedup();
    if legacy.is_empty() {
        return Vec::new();
    }
    vec![Check::new(
        Verdict::Fail,
        Some("authorization-config"),
        Some(format!(
            "--authorization-config together with --{}",
            legacy.join(" and --")
        )),
        Some("--authorization-config alone (its authorizers replace --authorization-mode)".into()),
    )]
}

fn stray_arguments(ctx: &Ctx<'_>) -> Vec<Check> {
    ctx.flags
        .stray
        .iter()
        .map(|&i| {
            let word = &ctx.flags.args[i].text;
            let before = ctx
                .flags
                .uses
                .iter()
                .find(|u| u.arg + 1 == i && u.value.is_none() && u.value_arg.is_none());
            match before {
                Some(u) => Check::new(
                    Verdict::Fail,
                    Some(&u.name),
                    Some(format!("--{} {word}", u.name)),
                    Some(format!("--{}={word}", u.name)),
                ),
                None => Check::new(
                    Verdict::Fail,
                    None,
                    Some(word.clone()),
                    Some("no positional arguments".into()),
                ),
            }
        })
        .collect()
}

fn invalid_values(ctx: &Ctx<'_>) -> Vec<Check> {
    let mut out: Vec<Check> = ctx
        .flags
        .missing_value
        .iter()
        .map(|f| {
            Check::new(
                Verdict::Fail,
                Some(f),
                Some(format!("--{f} with no value")),
                Some("a value".into()),
            )
        })
        .collect();
    for (u, spec) in ctx.flags.uses.iter().zip(&ctx.specs) {
        let Some(value) = &u.value else { continue };
        let (ok, what) = match spec.map(|s| s.kind).unwrap_or_default() {
            FlagKind::Bool => (parse_go_bool(value).is_some(), "true or false"),
            FlagKind::Int => (value.trim().parse::<i64>().is_ok(), "a whole number"),
            _ => continue,
        };
        if !ok {
            out.push(Check::new(
                Verdict::Fail,
                Some(&u.name),
                Some(value.clone()),
                Some(what.into()),
            ));
        }
    }
    out
}

fn supported_version(ctx: &Ctx<'_>) -> Vec<Check> {
    let (Some(v), Some(s)) = (ctx.v, ctx.cat.support(ctx.c)) else {
        return vec![Check::new(
            Verdict::Unknown("the version is unknown".into()),
            None,
            None,
            None,
        )];
    };
    let mut check = Check::new(
        if s.oldest.le(v) {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        None,
        Some(v.to_string()),
        Some(format!(
            ">= {} (oldest supported as of {})",
            s.oldest, ctx.cat.versions.compiled
        )),
    );
    check.reference = Some(s.source.clone());
    vec![check]
}

/// True when `v` is affected by a CVE fixed in the `fixed` patch releases.
pub fn vulnerable(v: Version, since: Option<Minor>, fixed: &[Version]) -> Option<bool> {
    if since.is_some_and(|s| !s.le(v)) {
        return Some(false);
    }
    if let Some(f) = fixed.iter().find(|f| f.minor_pair() == v.minor_pair()) {
        return Some(v.patch? < f.patch?);
    }
    let newest = fixed.iter().map(Version::minor_pair).max()?;
    Some(v.minor_pair() < newest)
}

fn known_cves(ctx: &Ctx<'_>) -> Vec<Check> {
    let Some(v) = ctx.v else {
        return vec![Check::new(
            Verdict::Unknown("the version is unknown".into()),
            None,
            None,
            None,
        )];
    };
    let mut out = Vec::new();
    for cve in ctx
        .cat
        .versions
        .cves
        .iter()
        .filter(|c| c.component == ctx.c)
    {
        let fixed = &cve.fixed_versions;
        let verdict = match vulnerable(v, cve.since, fixed) {
            Some(false) => continue,
            Some(true) => Verdict::Fail,
            None => Verdict::Unknown(format!("{}: the image names no patch release", cve.id)),
        };
        let mut check = Check::new(
            verdict,
            None,
            Some(v.to_string()),
            Some(format!(
                ">= {}",
                fixed_for(v, fixed).unwrap_or_else(|| cve.fixed.join(" / "))
            )),
        );
        check.severity = Some(cve.severity);
        check.title = Some(format!("{}: {}", cve.id, cve.title));
        check.reference = Some(cve.source.clone());
        out.push(check);
    }
    out
}

fn fixed_for(v: Version, fixed: &[Version]) -> Option<String> {
    fixed
        .iter()
        .find(|f| f.minor_pair() == v.minor_pair())
        .map(|f| f.to_string())
        .or_else(|| {
            fixed
                .iter()
                .filter(|f| f.minor_pair() > v.minor_pair())
                .min()
                .map(|f| format!("{f} (upgrade the minor release)"))
        })
}

fn anonymous_restricted(ctx: &Ctx<'_>) -> Check {
    let flag_set = ctx.flags.is_set("anonymous-auth");
    let flag = ctx.resolve("anonymous-auth");
    let expected = Some("false, or anonymous requests limited to /livez, /readyz and /healthz by an AuthenticationConfiguration".to_string());
    if let Some(file) = ctx.flags.value("authentication-config") {
        match ctx.authn {
            None => {
                return Check::new(
                    Verdict::Unknown(format!("the authentication config {file} was not read")),
                    Some("authentication-config"),
                    Some(file),
                    expected,
                );
            }
            Some(AuthnConfig::Unreadable(why)) => {
                return Check::new(
                    Verdict::Unknown(format!(
                        "cannot read the authentication config {file}: {why}"
                    )),
                    Some("authentication-config"),
                    Some(file),
                    expected,
                );
            }
            Some(AuthnConfig::Anonymous { .. }) if flag_set => {
                let mut check = Check::new(
                    Verdict::Fail,
                    Some("anonymous-auth"),
                    Some(format!(
                        "--anonymous-auth={} together with an anonymous: block in {file} (kube-apiserver refuses to start)",
                        flag.value().unwrap_or("absent")
                    )),
                    Some("remove --anonymous-auth".into()),
                );
                check.fix = Some(Fix::Remove(FlagRef {
                    flag: "anonymous-auth".into(),
                }));
                return check;
            }
            Some(AuthnConfig::Anonymous { enabled, paths }) => {
                let extra: Vec<&String> = paths
                    .iter()
                    .filter(|p| !ANONYMOUS_HEALTH_PATHS.contains(&p.as_str()))
                    .collect();
                let (verdict, observed) = if !enabled {
                    (
                        Verdict::Pass,
                        "anonymous disabled in the authentication config".to_string(),
                    )
                } else if paths.is_empty() {
                    (
                        Verdict::Fail,
                        "anonymous enabled for every path in the authentication config".into(),
                    )
                } else if extra.is_empty() {
                    (
                        Verdict::Pass,
                        format!("anonymous limited to {}", paths.join(",")),
                    )
                } else {
                    (
                        Verdict::Fail,
                        format!(
                            "anonymous allowed on {}",
                            extra
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        ),
                    )
                };
                return Check::new(
                    verdict,
                    Some("authentication-config"),
                    Some(observed),
                    expected,
                );
            }
            Some(AuthnConfig::NoAnonymousBlock) => {}
        }
    }
    let verdict = match flag.value().map(parse_go_bool) {
        Some(Some(false)) => Verdict::Pass,
        Some(_) => Verdict::Fail,
        None => Verdict::Unknown("--anonymous-auth is absent and its default is not known".into()),
    };
    let mut check = Check::new(
        verdict,
        Some("anonymous-auth"),
        Some(flag.describe()),
        expected,
    );
    // From 1.32 the hardened form keeps the kubelet's unauthenticated probes working; it
    // cannot be combined with an authentication config already in place (one file only) or
    // with the --oidc-* flags. Otherwise the rule's own fix (review only) is shown.
    let oidc = ctx.flags.uses.iter().any(|u| u.name.starts_with("oidc-"));
    if ctx.v.is_some_and(|v| ANONYMOUS_CONFIG_SINCE.le(v))
        && !ctx.flags.is_set("authentication-config")
        && !oidc
    {
        check.fix = Some(Fix::AnonymousHealthOnly);
    }
    check
}

#[cfg(test)]
mod tests;
