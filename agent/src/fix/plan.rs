//! Planning a fix: pure. Manifest bytes, the catalogue and a choice of rules in; the hardened
//! text, what was done and what was not (and why) out.
//!
//! Fixes are applied one at a time, each on the result of the one before, and each is checked
//! before it is kept:
//! 1. the version guard passed when the finding was made (`Finding::fix` is only set then);
//! 2. its prerequisites hold ([`prerequisite`]): nothing that needs a file, a mount or
//!    authenticated probes is done blindly;
//! 3. the edit touches only the argv words it names ([`super::edit`]);
//! 4. the result parses, to the same pod with exactly the expected argv;
//! 5. evaluated again, the targeted finding is gone and no finding is open that was not
//!    open before.
//!
//! A fix that fails a check is skipped with the reason and the others go on. Planning the
//! planned text again finds nothing to do: fixing is idempotent.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use super::edit::{self, Edited};
use crate::manifest::mounts::host_path;
use crate::manifest::pod::Pod;
use crate::manifest::version::Version;
use crate::manifest::{Component, ControlPlane, Manifest};
use crate::rules::catalogue::{ANONYMOUS_CONFIG_SINCE, FlagItem, FlagValue};
use crate::rules::eval::{self, AuthnConfig, ManifestFacts, parse_authn};
use crate::rules::parse_manifest;
use crate::rules::{Catalogue, Finding, Fix, Status};

/// File name of the AuthenticationConfiguration the anonymous fix writes, next to the
/// serving certificate (a directory kubeadm already mounts into kube-apiserver).
pub const AUTHN_CONFIG_NAME: &str = "kube-lockdown-authentication-config.yaml";

/// What the caller wants done about one open finding.
pub enum Choice {
    /// Not considered (mode off for this rule).
    Ignore,
    /// Fix it if it can be fixed safely.
    Fix,
    /// Fix it with this form of the finding's fix (the anonymous-auth fix that keeps
    /// `kubeadm join` discovery working).
    FixWith(Fix),
    /// Report it as skipped, with this reason (not marked safe unattended, ...).
    Skip(String),
}

/// A fix carried out in the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Rule id.
    pub rule_id: String,
    /// The fix.
    pub fix: Fix,
}

/// A fix not carried out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Rule id.
    pub rule_id: String,
    /// The fix, when the finding has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
    /// Why not.
    pub reason: String,
}

/// A file the plan needs on the host before the manifest is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuxFile {
    /// Where on the host.
    pub host_path: PathBuf,
    /// Its content.
    pub contents: String,
}

/// The plan for one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Component.
    pub component: Component,
    /// Version, when known.
    pub version: Option<Version>,
    /// The hardened text (the original when nothing is applied).
    pub text: String,
    /// Fixes carried out, in order.
    pub steps: Vec<Step>,
    /// Fixes not carried out.
    pub skipped: Vec<Skipped>,
    /// Files to write before the manifest.
    pub files: Vec<AuxFile>,
}

impl Plan {
    /// The redacted diff of the plan for `path` (which holds `before`): the manifest, then
    /// each file it creates.
    pub fn diff(&self, cat: &Catalogue, path: &str, before: &str) -> String {
        let red = |t: &str| crate::redact::manifest_text(t, &|f| cat.sensitive(f));
        let mut diff = match (red(before), red(&self.text)) {
            (Ok(a), Ok(b)) => crate::redact::unified_diff(path, Some(&a), Some(&b)),
            (Err(e), _) | (_, Err(e)) => format!("[diff withheld: {e}]\n"),
        };
        for f in &self.files {
            diff.push_str(&crate::redact::unified_diff(
                &f.host_path.display().to_string(),
                None,
                Some(&f.contents),
            ));
        }
        diff
    }

    /// True when the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Why a manifest cannot be planned at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Not a manifest we can read.
    #[error("{0}")]
    Unreadable(String),
    /// Not a control-plane component.
    #[error("not a control-plane component; nothing to fix")]
    NotControlPlane,
}

/// Plans the fixes `choose` asks for on manifest `src`. `authn`: the AuthenticationConfiguration
/// the manifest names, as the caller read it.
pub fn plan(
    cat: &Catalogue,
    src: &[u8],
    authn: Option<&AuthnConfig>,
    choose: &dyn Fn(&Finding) -> Choice,
) -> Result<Plan, PlanError> {
    let text = std::str::from_utf8(src)
        .map_err(|_| PlanError::Unreadable("not UTF-8 text".into()))?
        .to_string();
    let (mut m, mut cp) = parse(cat, &text).map_err(PlanError::Unreadable)?;
    let mut plan = Plan {
        component: cp.component,
        version: cp.version,
        text,
        steps: Vec::new(),
        skipped: Vec::new(),
        files: Vec::new(),
    };
    let mut authn = authn.cloned();
    let mut tried: BTreeSet<Key> = BTreeSet::new();
    // Each round applies at most one fix; the number of open findings bounds the rounds.
    loop {
        let findings = evaluate(cat, &cp, authn.as_ref());
        let open: BTreeSet<Key> = findings.iter().filter(|f| is_open(f)).map(key).collect();
        let Some(f) = findings
            .iter()
            .filter(|f| is_open(f) && !tried.contains(&key(f)))
            .find(|f| !matches!(choose(f), Choice::Ignore))
        else {
            break;
        };
        tried.insert(key(f));
        let skip = |reason: String| Skipped {
            rule_id: f.id.to_string(),
            fix: f.fix.clone(),
            reason,
        };
        let chosen = match choose(f) {
            Choice::Skip(reason) => {
                plan.skipped.push(skip(reason));
                continue;
            }
            Choice::FixWith(variant) if f.fix.is_some() => Some(variant),
            _ => f.fix.clone(),
        };
        let Some(fix) = chosen else {
            let why = f
                .reason
                .clone()
                .unwrap_or_else(|| "the rule has no automatic fix".into());
            plan.skipped.push(skip(why));
            continue;
        };
        if let Err(why) = prerequisite(&fix, &m, &cp) {
            plan.skipped.push(skip(why));
            continue;
        }
        let attempt = match &fix {
            Fix::AnonymousHealthOnly => anonymous_health_only(&plan.text, &m, &cp, false),
            Fix::AnonymousHealthAndDiscovery => anonymous_health_only(&plan.text, &m, &cp, true),
            _ => edit::apply(&plan.text, &cp, cat, &fix).map(|e| (e, None)),
        };
        let (edited, aux) = match attempt {
            Ok(x) => x,
            Err(why) => {
                plan.skipped.push(skip(why));
                continue;
            }
        };
        let authn_after = match &aux {
            Some(file) => {
                Some(parse_authn(file.contents.as_bytes()).unwrap_or_else(AuthnConfig::Unreadable))
            }
            None => authn.clone(),
        };
        match verify(cat, &m, &cp, &edited, authn_after.as_ref(), f, &open) {
            Ok((m2, cp2)) => {
                plan.text = edited.text;
                plan.files.extend(aux);
                plan.steps.push(Step {
                    rule_id: f.id.to_string(),
                    fix,
                });
                (m, cp, authn) = (m2, cp2, authn_after);
            }
            Err(why) => plan.skipped.push(skip(format!("refused: {why}"))),
        }
    }
    Ok(plan)
}

/// An open finding's identity across rounds: rule, flag and fix (one rule can be open more
/// than once, for each removed flag).
type Key = (String, Option<String>, String);

fn key(f: &Finding) -> Key {
    (
        f.id.to_string(),
        f.flag.clone(),
        serde_json::to_string(&f.fix).expect("fixes serialise"),
    )
}

fn is_open(f: &Finding) -> bool {
    matches!(f.status, Status::Fail | Status::Warn)
}

fn parse(cat: &Catalogue, text: &str) -> Result<(Manifest, ControlPlane), String> {
    let m = parse_manifest(cat, text.as_bytes()).map_err(|e| e.to_string())?;
    let cp = m
        .control_plane
        .clone()
        .ok_or_else(|| "not a control-plane component; nothing to fix".to_string())?;
    Ok((m, cp))
}

fn evaluate(cat: &Catalogue, cp: &ControlPlane, authn: Option<&AuthnConfig>) -> Vec<Finding> {
    // The authorization config is not read here: with one set, no authorization rule has a
    // fix (the file decides), whatever it says.
    eval::evaluate_manifest(
        cat,
        ManifestFacts {
            cp,
            authn,
            authz: None,
            certs: None,
        },
    )
}

/// Checks an edit: it parses, to the same pod with the expected argv, the finding is gone and
/// nothing new is open.
fn verify(
    cat: &Catalogue,
    m: &Manifest,
    cp: &ControlPlane,
    edited: &Edited,
    authn: Option<&AuthnConfig>,
    target: &Finding,
    open_before: &BTreeSet<Key>,
) -> Result<(Manifest, ControlPlane), String> {
    let (m2, cp2) =
        parse(cat, &edited.text).map_err(|e| format!("the result does not parse: {e}"))?;
    if (cp2.component, cp2.container, cp2.identified_by)
        != (cp.component, cp.container, cp.identified_by)
    {
        return Err("the result runs a different component".into());
    }
    let argv: Vec<&str> = cp2
        .flags
        .args
        .iter()
        .filter(|a| a.source != crate::manifest::flags::ArgSource::Env)
        .map(|a| a.text.as_str())
        .collect();
    if argv != edited.argv.iter().map(String::as_str).collect::<Vec<_>>() {
        return Err(format!(
            "the result's arguments are not the intended ones: {argv:?}"
        ));
    }
    if without_args(&m.pod, cp.container) != without_args(&m2.pod, cp.container) {
        return Err("the edit changed more of the pod than its arguments".into());
    }
    let after = evaluate(cat, &cp2, authn);
    let target_key = key(target);
    if after.iter().any(|f| is_open(f) && key(f) == target_key) {
        return Err(format!("{} is still open after the edit", target.id));
    }
    if let Some(new) = after
        .iter()
        .filter(|f| is_open(f))
        .find(|f| !open_before.contains(&key(f)))
    {
        return Err(format!("the edit would open {}: {}", new.id, new.title));
    }
    Ok((m2, cp2))
}

/// The pod with no source spans, and the component container's command and args left out.
fn without_args(pod: &Pod, container: usize) -> Pod {
    let mut pod = pod.clone();
    for (i, c) in pod.containers.iter_mut().enumerate() {
        if i == container {
            c.command.clear();
            c.args.clear();
        }
        for a in c.command.iter_mut().chain(c.args.iter_mut()) {
            a.span = None;
        }
    }
    pod
}

/// Flags that name a file the component must be able to open: adding or changing one needs
/// the file and a hostPath mount first, or the component exits.
const NEEDS_A_FILE: [&str; 8] = [
    "audit-policy-file",
    "audit-log-path",
    "encryption-provider-config",
    "authentication-config",
    "authorization-config",
    "admission-control-config-file",
    "kubelet-certificate-authority",
    "tls-cipher-suites",
];

/// Whether a fix can be done without preparation the agent cannot do or check.
pub fn prerequisite(fix: &Fix, m: &Manifest, cp: &ControlPlane) -> Result<(), String> {
    let probes = &m.pod.containers[cp.container].probes;
    match fix {
        Fix::Set(FlagValue { flag, value }) => {
            if NEEDS_A_FILE.contains(&flag.as_str()) {
                return Err(format!(
                    "--{flag} needs its file in place and mounted into the pod first (or the component does not start); set it by hand"
                ));
            }
            if flag == "anonymous-auth"
                && crate::manifest::flags::parse_go_bool(value) == Some(false)
                && probes.iter().any(|p| p.http_get.is_some())
            {
                return Err("the kubelet's httpGet probes are unauthenticated: with --anonymous-auth=false they get 401 and the kubelet restarts kube-apiserver in a loop (use an AuthenticationConfiguration on 1.32+)".into());
            }
            if (flag == "port" || flag == "insecure-port")
                && value == "0"
                && let Some(open) = cp
                    .flags
                    .value(flag)
                    .and_then(|v| v.parse::<u16>().ok())
                    .or_else(|| default_insecure_port(cp.component))
                    .filter(|p| *p != 0)
                && let Some(h) = probes
                    .iter()
                    .filter_map(|p| p.http_get.as_ref())
                    .find(|h| probe_port(&m.pod.containers[cp.container], h) == Some(open))
            {
                // kubeadm before 1.17 probed the scheduler and controller manager over HTTP on
                // 10251/10252 (kubernetes#85043): closing that port restarts them forever.
                return Err(format!(
                    "the kubelet probes port {open} ({} {}), which --{flag}=0 closes: the component would be restarted forever; move the probes to the secure port first",
                    h.scheme, h.path
                ));
            }
            if flag == "bind-address"
                && let Some(p) = probes
                    .iter()
                    .filter_map(|p| p.http_get.as_ref())
                    .find(|h| h.host.as_deref().unwrap_or("127.0.0.1") != value.as_str())
            {
                return Err(format!(
                    "the probes reach the component on {}; change the probe host with --bind-address",
                    p.host.as_deref().unwrap_or("the pod IP")
                ));
            }
            Ok(())
        }
        Fix::AddToList(FlagItem { flag, .. }) | Fix::RemoveFromList(FlagItem { flag, .. })
            if (flag == "enable-admission-plugins" || flag == "disable-admission-plugins")
                && cp.flags.is_set("admission-control") =>
        {
            Err("--admission-control is set: kube-apiserver refuses it together with --enable-admission-plugins or --disable-admission-plugins; move its list to --enable-admission-plugins by hand first".into())
        }
        Fix::AddToList(FlagItem { flag, item }) => {
            if flag == "enable-admission-plugins"
                && item == "EventRateLimit"
                && !cp.flags.is_set("admission-control-config-file")
            {
                return Err("EventRateLimit needs an admission configuration (--admission-control-config-file); without it kube-apiserver does not start".into());
            }
            Ok(())
        }
        Fix::Remove(_) | Fix::RemoveFromList(_) => Ok(()),
        Fix::AnonymousHealthOnly | Fix::AnonymousHealthAndDiscovery => {
            if cp.component != Component::KubeApiserver {
                return Err("only kube-apiserver has an authentication config".into());
            }
            Ok(())
        }
    }
}

/// The plain-HTTP port a component serves when `--port` / `--insecure-port` is not set, in the
/// versions that have one.
fn default_insecure_port(c: Component) -> Option<u16> {
    match c {
        Component::KubeApiserver => Some(8080),
        Component::KubeControllerManager => Some(10252),
        Component::KubeScheduler => Some(10251),
        Component::Etcd => None,
    }
}

/// The port a probe connects to: a number, or a named container port.
fn probe_port(
    c: &crate::manifest::pod::Container,
    h: &crate::manifest::pod::HttpGet,
) -> Option<u16> {
    h.port.parse().ok().or_else(|| {
        c.ports
            .iter()
            .find(|(name, _)| *name == h.port)
            .and_then(|(_, n)| n.parse().ok())
    })
}

/// Where `kubeadm join` token discovery reads the cluster's CA and address, anonymously.
pub const CLUSTER_INFO_PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";

/// The AuthenticationConfiguration for kube-apiserver `v` that allows anonymous requests to
/// the health endpoints only, and to the cluster-info ConfigMap when `discovery`.
pub fn anonymous_config(v: Version, discovery: bool) -> String {
    let api = if (v.major, v.minor) >= (1, 34) {
        "v1"
    } else {
        "v1beta1"
    };
    let (what, extra) = if discovery {
        (
            " and to kubeadm join's token discovery (kube-public/cluster-info)",
            format!("  - path: {CLUSTER_INFO_PATH}\n"),
        )
    } else {
        ("", String::new())
    };
    format!(
        "# Written by kube-lockdown: anonymous requests only to the kubelet's health probes{what}.\n\
         apiVersion: apiserver.config.k8s.io/{api}\n\
         kind: AuthenticationConfiguration\n\
         anonymous:\n  enabled: true\n  conditions:\n  - path: /livez\n  - path: /readyz\n  - path: /healthz\n{extra}"
    )
}

/// The anonymous fix: an AuthenticationConfiguration in the directory that holds the serving
/// certificate (mounted already), `--authentication-config` naming it, `--anonymous-auth` gone.
fn anonymous_health_only(
    src: &str,
    m: &Manifest,
    cp: &ControlPlane,
    discovery: bool,
) -> Result<(Edited, Option<AuxFile>), String> {
    let v = cp
        .version
        .filter(|v| ANONYMOUS_CONFIG_SINCE.le(*v))
        .ok_or("needs kube-apiserver 1.32 or later")?;
    let cert = cp
        .flags
        .value("tls-cert-file")
        .ok_or("no --tls-cert-file: no mounted certificate directory to put the config in")?;
    let dir = cert
        .rsplit_once('/')
        .map(|(d, _)| d)
        .filter(|d| !d.is_empty())
        .ok_or("--tls-cert-file is not an absolute path")?;
    let mounted_dir = m.pod.containers[cp.container]
        .mounts
        .iter()
        .any(|mnt| dir == mnt.mount_path || dir.starts_with(&format!("{}/", mnt.mount_path)));
    let inner = format!("{dir}/{AUTHN_CONFIG_NAME}");
    let host = host_path(m, cp, &inner)
        .filter(|_| mounted_dir)
        .ok_or_else(|| format!("{dir} is not on a hostPath directory mount"))?;
    let edited = edit::replace_flag(src, cp, "anonymous-auth", "authentication-config", &inner)?;
    Ok((
        edited,
        Some(AuxFile {
            host_path: host,
            contents: anonymous_config(v, discovery),
        }),
    ))
}
