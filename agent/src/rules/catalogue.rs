//! The rule catalogue: flag lifecycles, rules and the version/CVE table, as data.
//!
//! The data lives in `agent/catalogue/*.yaml`, is embedded in the binary, and is checked
//! when loaded: duplicate rule ids, rules naming flags the catalogue does not know, and
//! malformed versions are errors, so a typo in a rule cannot silently turn it into a pass.
//! Users add rules in the same format through the config file and disable rules by id.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Deserializer, Serialize};

use crate::manifest::Component;
use crate::manifest::flags::FlagKind;
use crate::manifest::version::Version;

// The catalogue as JSON, converted from `catalogue/*.yaml` by `build.rs` (JSON reads about
// ten times faster than YAML, and start-up is most of a check).
const FLAGS_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/flags.json"));
const RULES_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/rules.json"));
const VERSIONS_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/versions.json"));

/// Why the catalogue (built in or extended by config) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    /// A YAML document does not match the schema.
    #[error("{source_name}: {message}")]
    Parse {
        /// Which document.
        source_name: String,
        /// What the parser said.
        message: String,
    },
    /// A rule is wrong in itself.
    #[error("rule {id:?}: {problem}")]
    Rule {
        /// Rule id.
        id: String,
        /// What is wrong.
        problem: String,
    },
}

/// How bad a failed rule is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// The control plane is open or will not start.
    Critical,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "info" => Ok(Severity::Info),
            "low" => Ok(Severity::Low),
            "medium" => Ok(Severity::Medium),
            "high" => Ok(Severity::High),
            "critical" => Ok(Severity::Critical),
            other => Err(format!(
                "unknown severity {other:?} (expected info, low, medium, high or critical)"
            )),
        }
    }
}

/// A minor version in data (`"1.24"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Minor(pub u32, pub u32);

impl Minor {
    /// True when `v` is at or after this minor.
    pub fn le(self, v: Version) -> bool {
        (self.0, self.1) <= v.minor_pair()
    }
}

impl fmt::Display for Minor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

impl<'de> Deserialize<'de> for Minor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match Version::parse(&s) {
            Some(v) if v.patch.is_none() => Ok(Minor(v.major, v.minor)),
            _ => Err(serde::de::Error::custom(format!(
                "{s:?} is not a minor version like \"1.24\""
            ))),
        }
    }
}

fn de_component<'de, D: Deserializer<'de>>(d: D) -> Result<Component, D::Error> {
    let s = String::deserialize(d)?;
    Component::from_executable(&s).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "unknown component {s:?} (expected kube-apiserver, kube-controller-manager, kube-scheduler or etcd)"
        ))
    })
}

/// The value of an absent flag from a version on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultValue {
    /// From this minor on (absent: always).
    #[serde(default)]
    pub since: Option<Minor>,
    /// The value.
    pub value: String,
}

/// What the catalogue knows about one flag of one component.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSpec {
    /// Component.
    #[serde(deserialize_with = "de_component")]
    pub component: Component,
    /// Name without dashes.
    pub flag: String,
    /// Kind of value.
    #[serde(default, with = "kind_serde")]
    pub kind: FlagKind,
    /// First minor that accepts it.
    #[serde(default)]
    pub since: Option<Minor>,
    /// First minor that refuses it.
    #[serde(default)]
    pub removed: Option<Minor>,
    /// Defaults by version.
    #[serde(default)]
    pub defaults: Vec<DefaultValue>,
    /// Whether its value may carry a secret (redacted in events).
    #[serde(default)]
    pub sensitive: bool,
}

mod kind_serde {
    use super::*;
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FlagKind, D::Error> {
        match String::deserialize(d)?.as_str() {
            "bool" => Ok(FlagKind::Bool),
            "int" => Ok(FlagKind::Int),
            "scalar" => Ok(FlagKind::Scalar),
            "list" => Ok(FlagKind::List),
            "map" => Ok(FlagKind::Map),
            other => Err(serde::de::Error::custom(format!(
                "unknown flag kind {other:?} (expected bool, int, scalar, list or map)"
            ))),
        }
    }
}

/// An admission plugin or feature gate that exists only in some versions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemSpec {
    /// Component.
    #[serde(deserialize_with = "de_component")]
    pub component: Component,
    /// `enable-admission-plugins` for plugins, `feature-gates` for gates.
    pub flag: String,
    /// Plugin or gate name.
    pub name: String,
    /// First minor that has it.
    #[serde(default)]
    pub since: Option<Minor>,
    /// First minor that no longer has it.
    #[serde(default)]
    pub removed: Option<Minor>,
    /// First minor on which the gate is locked on (false is refused).
    #[serde(default)]
    pub locked: Option<Minor>,
}

/// Whether a version accepts a flag or item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existence {
    /// Accepted.
    Accepted,
    /// Introduced later.
    NotYet(Minor),
    /// Removed at this minor.
    Removed(Minor),
    /// The version is unknown and the lifecycle is bounded.
    Unknown,
}

fn existence(since: Option<Minor>, removed: Option<Minor>, v: Option<Version>) -> Existence {
    match v {
        None if since.is_none() && removed.is_none() => Existence::Accepted,
        None => Existence::Unknown,
        Some(v) => match (since, removed) {
            (Some(s), _) if !s.le(v) => Existence::NotYet(s),
            (_, Some(r)) if r.le(v) => Existence::Removed(r),
            _ => Existence::Accepted,
        },
    }
}

/// Explains an existence for a message: "removed in 1.22", "introduced in 1.29".
pub fn explain(e: Existence) -> String {
    match e {
        Existence::Accepted => "accepted".into(),
        Existence::NotYet(m) => format!("introduced in {m}"),
        Existence::Removed(m) => format!("removed in {m}"),
        Existence::Unknown => "version unknown".into(),
    }
}

/// Where a rule looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileRole {
    /// The kube-apiserver manifest.
    ManifestKubeApiserver,
    /// The kube-controller-manager manifest.
    ManifestKubeControllerManager,
    /// The kube-scheduler manifest.
    ManifestKubeScheduler,
    /// The etcd manifest.
    ManifestEtcd,
    /// CNI configuration and state files.
    Cni,
    /// The etcd data directory.
    EtcdDataDir,
    /// admin.conf and super-admin.conf.
    AdminKubeconfig,
    /// scheduler.conf.
    SchedulerKubeconfig,
    /// controller-manager.conf.
    ControllerManagerKubeconfig,
    /// kubelet.conf, the kubelet's kubeconfig (CIS 4.1.5-4.1.6).
    KubeletKubeconfig,
    /// Everything under the PKI directory.
    Pki,
    /// `*.crt` under the PKI directory.
    PkiCert,
    /// `*.key` under the PKI directory.
    PkiKey,
    /// Any kubeconfig: the node's five, and one named on the command line.
    Kubeconfig,
    /// A file that holds certificates: a `*.crt` under the PKI directory, a PEM file named
    /// on the command line, a kubeconfig with client certificates.
    Certificate,
}

impl FileRole {
    /// The manifest role of a component.
    pub fn manifest_of(c: Component) -> FileRole {
        match c {
            Component::KubeApiserver => FileRole::ManifestKubeApiserver,
            Component::KubeControllerManager => FileRole::ManifestKubeControllerManager,
            Component::KubeScheduler => FileRole::ManifestKubeScheduler,
            Component::Etcd => FileRole::ManifestEtcd,
        }
    }
}

/// A rule's condition.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Test {
    /// Effective value equals.
    Eq(FlagValue),
    /// Effective value differs.
    NotEq(FlagValue),
    /// Flag present.
    Set(FlagRef),
    /// Flag absent.
    NotSet(FlagRef),
    /// List includes item.
    Has(FlagItem),
    /// List does not include item.
    NotHas(FlagItem),
    /// Integer at least.
    Gte(FlagNumber),
    /// Every list item is allowed.
    Subset(FlagAllowed),
    /// Feature gate not set to value.
    GateNot(GateValue),
    /// All hold.
    All(Vec<Test>),
    /// One holds.
    Any(Vec<Test>),
    /// Needs a person: always a warn with a note.
    Manual(ManualNote),
    /// File permission bits at most (octal).
    ModeAtMost(String),
    /// File owner `user:group`.
    Owner(String),
    /// A check written in code.
    Builtin(Builtin),
}

/// `{flag}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagRef {
    /// Flag name.
    pub flag: String,
}

/// `{flag, value}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagValue {
    /// Flag name.
    pub flag: String,
    /// Value.
    pub value: String,
}

/// `{flag, item}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagItem {
    /// Flag name.
    pub flag: String,
    /// List item.
    pub item: String,
}

/// `{flag, value}` with a number.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagNumber {
    /// Flag name.
    pub flag: String,
    /// Threshold.
    pub value: i64,
}

/// `{flag, allowed}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagAllowed {
    /// Flag name.
    pub flag: String,
    /// Allowed items.
    pub allowed: Vec<String>,
}

/// `{gate, value}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GateValue {
    /// Gate name.
    pub gate: String,
    /// The value that fails.
    pub value: String,
}

/// `{note}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManualNote {
    /// What a person should check.
    pub note: String,
}

/// Checks written in code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Builtin {
    /// Flags the version does not accept.
    UnsupportedFlags,
    /// Admission plugins the version does not have.
    UnsupportedPlugins,
    /// Feature gates removed, not yet there, or locked on and set false.
    UnsupportedGates,
    /// Positional words on the command line.
    StrayArguments,
    /// Values the component cannot parse.
    InvalidValues,
    /// The version is known.
    VersionKnown,
    /// The version is still supported.
    SupportedVersion,
    /// No known CVE affects the version.
    KnownCves,
    /// Anonymous access restricted through an AuthenticationConfiguration.
    AnonymousRestricted,
    /// The deprecated `--admission-control` together with `--enable-admission-plugins` or
    /// `--disable-admission-plugins`, which kube-apiserver refuses.
    AdmissionFlagsMixed,
    /// `--authorization-config` with `--authorization-mode` or `--authorization-webhook-*`.
    AuthorizationFlagsMixed,
    /// A certificate in the file has expired.
    CertExpired,
    /// A certificate expires within the high threshold (`tls.expiry_high_days`).
    CertExpiring,
    /// A certificate expires within the medium threshold (`tls.expiry_medium_days`).
    CertExpiringSoon,
    /// An RSA key under 2048 bits or a curve under 256 bits.
    CertWeakKey,
    /// A signature with MD2, MD4, MD5 or SHA-1.
    CertWeakSignature,
    /// A serving or client certificate that is itself a CA.
    CertLeafIsCa,
    /// The private key next to the certificate is not its key.
    CertKeyMismatch,
    /// A kubeconfig cluster's server is not `https://`.
    KubeconfigHttps,
    /// A kubeconfig cluster names no CA.
    KubeconfigCaNamed,
    /// A kubeconfig cluster has `insecure-skip-tls-verify: true`.
    KubeconfigVerifies,
    /// On a node, a kubeconfig cluster trusts another CA than the cluster's.
    KubeconfigClusterCa,
    /// A kubeconfig user has a username or password.
    KubeconfigNoBasicAuth,
    /// A kubeconfig user has a static token.
    KubeconfigNoStaticToken,
    /// A kubeconfig user's client key file is readable by others than its owner.
    KubeconfigClientKeyMode,
    /// kube-apiserver's serving certificate does not cover the names clients use.
    ApiserverCertNames,
    /// etcd's `--trusted-ca-file` is the cluster CA (CIS 2.7).
    EtcdCaDistinct,
    /// Live: the API server does not answer on its secure port.
    LiveAnswers,
    /// Live: the secure port accepts TLS 1.0 or 1.1.
    LiveTlsVersion,
    /// Live: the served chain does not verify against the cluster CA.
    LiveChainVerifies,
    /// Live: the served certificate is not the one in `--tls-cert-file`.
    LiveServesCertFile,
    /// Live: the Kubernetes API answers in plaintext.
    LiveNoPlaintext,
    /// Live: an unauthenticated `/api` is not refused though the manifest turns anonymous
    /// access off.
    LiveAnonymousRefused,
}

impl Builtin {
    /// Whether the check reads certificate files (the others read manifests).
    pub fn on_certificates(self) -> bool {
        matches!(
            self,
            Builtin::CertExpired
                | Builtin::CertExpiring
                | Builtin::CertExpiringSoon
                | Builtin::CertWeakKey
                | Builtin::CertWeakSignature
                | Builtin::CertLeafIsCa
                | Builtin::CertKeyMismatch
        )
    }

    /// Whether the check looks at what the running API server serves (a probe, not a file).
    pub fn on_live(self) -> bool {
        matches!(
            self,
            Builtin::LiveAnswers
                | Builtin::LiveTlsVersion
                | Builtin::LiveChainVerifies
                | Builtin::LiveServesCertFile
                | Builtin::LiveNoPlaintext
                | Builtin::LiveAnonymousRefused
        )
    }

    /// Whether the check reads kubeconfigs.
    pub fn on_kubeconfigs(self) -> bool {
        matches!(
            self,
            Builtin::KubeconfigHttps
                | Builtin::KubeconfigCaNamed
                | Builtin::KubeconfigVerifies
                | Builtin::KubeconfigClusterCa
                | Builtin::KubeconfigNoBasicAuth
                | Builtin::KubeconfigNoStaticToken
                | Builtin::KubeconfigClientKeyMode
        )
    }
}

/// A fix, as data.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Fix {
    /// Set a flag to a value (adding it if absent).
    Set(FlagValue),
    /// Remove every occurrence of a flag.
    Remove(FlagRef),
    /// Add an item to a list flag (adding the flag if absent).
    AddToList(FlagItem),
    /// Remove an item from a list flag.
    RemoveFromList(FlagItem),
    /// Allow anonymous requests only to /livez, /readyz and /healthz: write an
    /// AuthenticationConfiguration into a directory the pod already mounts, name it with
    /// `--authentication-config` and remove `--anonymous-auth` (kube-apiserver 1.32+).
    AnonymousHealthOnly,
    /// The same, and anonymous reads of the kube-public/cluster-info ConfigMap too, which
    /// `kubeadm join` token discovery makes (chosen with `fix.keep_cluster_info`).
    AnonymousHealthAndDiscovery,
}

/// First etcd minor without any `--experimental-*` flag (etcd CHANGELOG-3.7, etcd#19959).
pub const ETCD_NO_EXPERIMENTAL: Minor = Minor(3, 7);

/// First kube-apiserver minor whose AuthenticationConfiguration takes an `anonymous:` block
/// without an alpha feature gate (KEP-4633 beta, on by default).
pub const ANONYMOUS_CONFIG_SINCE: Minor = Minor(1, 32);

/// What a rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Manifests of one component.
    Component(Component),
    /// Manifests of every component.
    AnyComponent,
    /// Files of a role.
    Files(FileRole),
}

/// A rule as written in data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Stable id.
    pub id: String,
    /// CIS id.
    #[serde(default)]
    pub cis: Option<String>,
    /// Component name or `any`.
    #[serde(default)]
    pub component: Option<String>,
    /// File role.
    #[serde(default)]
    pub files: Option<FileRole>,
    /// Title.
    pub title: String,
    /// Severity.
    pub severity: Severity,
    /// A failing test is a warn (CIS Manual).
    #[serde(default)]
    pub warn_only: bool,
    /// CIS scores the check (kube-bench `scored`). Default: not `warn_only` and not a manual
    /// test; `false` for a Manual check this project still fails (CIS 1.2.1).
    #[serde(default)]
    pub scored: Option<bool>,
    /// The setting lives in a file named by this flag when it is set.
    #[serde(default)]
    pub unless_set: Option<String>,
    /// First minor the rule applies to, beyond what its flags imply.
    #[serde(default)]
    pub since: Option<Minor>,
    /// First minor the rule no longer applies to.
    #[serde(default)]
    pub until: Option<Minor>,
    /// Why it no longer applies from `until` on (a flag that has no effect there), said in
    /// the skip instead of a bare "does not apply".
    #[serde(default)]
    pub until_reason: Option<String>,
    /// The test.
    pub test: Test,
    /// What to do.
    pub remediation: String,
    /// The fix as data.
    #[serde(default)]
    pub fix: Option<Fix>,
    /// Safe to apply unattended.
    #[serde(default)]
    pub safe: bool,
}

/// A checked rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Stable id.
    pub id: Arc<str>,
    /// CIS Kubernetes Benchmark id.
    pub cis: Option<Arc<str>>,
    /// What it looks at.
    pub target: Target,
    /// Title.
    pub title: Arc<str>,
    /// Severity.
    pub severity: Severity,
    /// A failing test is a warn.
    pub warn_only: bool,
    /// CIS scores the check (kube-bench's `scored`).
    pub scored: bool,
    /// See [`RawRule::unless_set`].
    pub unless_set: Option<String>,
    /// First minor it applies to.
    pub since: Option<Minor>,
    /// First minor it no longer applies to.
    pub until: Option<Minor>,
    /// See [`RawRule::until_reason`].
    pub until_reason: Option<String>,
    /// The test.
    pub test: Test,
    /// Remediation text.
    pub remediation: Arc<str>,
    /// The fix.
    pub fix: Option<Fix>,
    /// Safe unattended.
    pub safe: bool,
    /// Every flag the test names, in order (see [`referenced_flags`]).
    pub flags: Vec<String>,
    /// Whether the rule's component accepts each of `flags` on a version, looked up once.
    pub flag_lifecycle: Vec<Lifecycle>,
}

/// The versions that accept a flag: from `since` until `removed`, both optional; `known`
/// is false for a flag the catalogue does not list (accepted by every version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifecycle {
    known: bool,
    since: Option<Minor>,
    removed: Option<Minor>,
}

impl Lifecycle {
    /// Whether `v` accepts the flag (as [`Catalogue::flag_exists`]).
    pub fn on(self, v: Option<Version>) -> Existence {
        if self.known {
            existence(self.since, self.removed, v)
        } else {
            Existence::Accepted
        }
    }
}

/// The support window of a product.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Support {
    /// `kube` or `etcd`.
    pub component: String,
    /// Oldest supported minor.
    pub oldest: Minor,
    /// Where that comes from.
    pub source: String,
}

/// A known vulnerability.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cve {
    /// CVE id.
    pub id: String,
    /// Component affected.
    #[serde(deserialize_with = "de_component")]
    pub component: Component,
    /// Severity.
    pub severity: Severity,
    /// What it is.
    pub title: String,
    /// Minor that introduced it, when known.
    #[serde(default)]
    pub since: Option<Minor>,
    /// First fixed patch release per minor.
    pub fixed: Vec<String>,
    /// `fixed`, parsed (when the catalogue is loaded).
    #[serde(skip)]
    pub fixed_versions: Vec<Version>,
    /// Advisory.
    pub source: String,
}

/// Release support and CVEs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionTable {
    /// The day the table was compiled.
    pub compiled: String,
    /// Support windows.
    pub supported: Vec<Support>,
    /// Known CVEs.
    pub cves: Vec<Cve>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagsDoc {
    flags: Vec<FlagSpec>,
    items: Vec<ItemSpec>,
}

/// A list of rules, as in `rules.yaml` and in config.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesDoc {
    /// The rules.
    pub rules: Vec<RawRule>,
}

/// Flags, items, rules and versions, checked.
#[derive(Debug, Clone)]
pub struct Catalogue {
    /// Flag lifecycle and defaults.
    pub flags: Vec<FlagSpec>,
    /// Plugin and gate lifecycle.
    pub items: Vec<ItemSpec>,
    /// Rules, in catalogue order.
    pub rules: Vec<Rule>,
    /// Support and CVEs.
    pub versions: VersionTable,
    /// `flags` by component and name (every evaluation looks flags up many times).
    flag_index: [HashMap<String, usize, BuildHasherDefault<Fx>>; Component::ALL.len()],
}

/// The Fx hash (rustc's): flag names are the catalogue's own, not attacker-chosen, and
/// lookups are most of what the evaluator does, so a word-at-a-time hash beats SipHash.
/// Also used for the check's memo of manifest contents, which is bounded (a crafted
/// collision costs at most a comparison per remembered content).
#[derive(Default)]
pub(crate) struct Fx(u64);

impl Fx {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let mut last = [0u8; 8];
        let rest = chunks.remainder();
        last[..rest.len()].copy_from_slice(rest);
        self.add(u64::from_le_bytes(last));
    }

    fn write_u8(&mut self, b: u8) {
        self.add(u64::from(b));
    }
}

fn parse_yaml<T: for<'de> Deserialize<'de>>(name: &str, text: &str) -> Result<T, CatalogueError> {
    serde_saphyr::from_str(text).map_err(|e| CatalogueError::Parse {
        source_name: name.to_string(),
        message: e.to_string(),
    })
}

fn parse_json<T: for<'de> Deserialize<'de>>(name: &str, text: &str) -> Result<T, CatalogueError> {
    serde_json::from_str(text).map_err(|e| CatalogueError::Parse {
        source_name: name.to_string(),
        message: e.to_string(),
    })
}

impl Catalogue {
    /// The catalogue built into the binary.
    pub fn builtin() -> &'static Catalogue {
        static BUILTIN: OnceLock<Catalogue> = OnceLock::new();
        BUILTIN.get_or_init(Catalogue::builtin_owned)
    }

    /// A catalogue of its own, as built into the binary (to extend or trim: read afresh,
    /// which is cheaper than a copy of [`Catalogue::builtin`]).
    pub fn builtin_owned() -> Catalogue {
        let parsed = (|| {
            Catalogue::load(
                parse_json("built-in flags.yaml", FLAGS_JSON)?,
                parse_json("built-in versions.yaml", VERSIONS_JSON)?,
                parse_json("built-in rules.yaml", RULES_JSON)?,
            )
        })();
        parsed.expect("the built-in catalogue is valid (checked by its unit tests)")
    }

    fn load(
        flags: FlagsDoc,
        mut versions: VersionTable,
        rules: RulesDoc,
    ) -> Result<Catalogue, CatalogueError> {
        for cve in &mut versions.cves {
            for f in &cve.fixed {
                match Version::parse(f).filter(|v| v.patch.is_some()) {
                    Some(v) => cve.fixed_versions.push(v),
                    None => {
                        return Err(CatalogueError::Parse {
                            source_name: "built-in versions.yaml".into(),
                            message: format!("{}: fixed version {f:?} is not x.y.z", cve.id),
                        });
                    }
                }
            }
        }
        let mut flag_index: [HashMap<String, usize, _>; Component::ALL.len()] = Default::default();
        for (i, f) in flags.flags.iter().enumerate() {
            // The first record of a flag wins, as a linear search would find it.
            flag_index[f.component as usize]
                .entry(f.flag.clone())
                .or_insert(i);
        }
        let mut cat = Catalogue {
            flags: flags.flags,
            items: flags.items,
            rules: Vec::new(),
            versions,
            flag_index,
        };
        cat.add_raw_rules(rules.rules)?;
        Ok(cat)
    }

    /// Adds rules written in the catalogue format (from config), checking each.
    pub fn add_rules(&mut self, yaml: &str, name: &str) -> Result<(), CatalogueError> {
        let doc: RulesDoc = parse_yaml(name, yaml)?;
        self.add_raw_rules(doc.rules)
    }

    /// Adds already-parsed rules, checking each.
    pub fn add_raw_rules(&mut self, raw: Vec<RawRule>) -> Result<(), CatalogueError> {
        let mut ids: HashSet<Arc<str>> = self.rules.iter().map(|r| r.id.clone()).collect();
        for r in raw {
            let rule = self.check_rule(r)?;
            if !ids.insert(rule.id.clone()) {
                return Err(CatalogueError::Rule {
                    id: rule.id.to_string(),
                    problem: "the id is used by another rule".into(),
                });
            }
            self.rules.push(rule);
        }
        Ok(())
    }

    /// Removes rules by id; an unknown id is an error (a typo would otherwise silently
    /// keep the rule on).
    pub fn disable(&mut self, ids: &[String]) -> Result<(), CatalogueError> {
        for id in ids {
            let before = self.rules.len();
            self.rules.retain(|r| *r.id != **id);
            if self.rules.len() == before {
                return Err(CatalogueError::Rule {
                    id: id.clone(),
                    problem: "cannot disable: no rule has this id (see `lockdown-agent rules`)"
                        .into(),
                });
            }
        }
        Ok(())
    }

    fn check_rule(&self, r: RawRule) -> Result<Rule, CatalogueError> {
        let bad = |problem: String| CatalogueError::Rule {
            id: r.id.clone(),
            problem,
        };
        if r.id.is_empty()
            || !r
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(bad("ids are letters, digits, '-' and '.'".into()));
        }
        let target = match (&r.component, r.files) {
            (Some(c), None) if c == "any" => Target::AnyComponent,
            (Some(c), None) => Target::Component(
                Component::from_executable(c)
                    .ok_or_else(|| bad(format!("unknown component {c:?}")))?,
            ),
            (None, Some(role)) => Target::Files(role),
            _ => return Err(bad("set exactly one of `component` and `files`".into())),
        };
        let mut flags = Vec::new();
        referenced_flags(&r.test, &mut flags);
        if let Target::Component(c) = target {
            let mut missing = flags.clone();
            if let Some(f) = &r.unless_set {
                missing.push(f.clone());
            }
            for flag in missing {
                if flag != "*" && self.flag(c, &flag).is_none() {
                    return Err(bad(format!(
                        "names --{flag}, which the catalogue does not know for {c}; add it to flags.yaml"
                    )));
                }
            }
        }
        Ok(Rule {
            id: r.id.into(),
            cis: r.cis.map(Arc::from),
            target,
            title: r.title.into(),
            severity: r.severity,
            warn_only: r.warn_only,
            scored: r
                .scored
                .unwrap_or(!r.warn_only && !matches!(r.test, Test::Manual(_))),
            unless_set: r.unless_set,
            since: r.since,
            until: r.until,
            until_reason: r.until_reason,
            test: r.test,
            remediation: r.remediation.into(),
            fix: r.fix,
            safe: r.safe,
            flag_lifecycle: flags.iter().map(|f| self.lifecycle(target, f)).collect(),
            flags,
        })
    }

    /// The spec of a flag.
    pub fn flag(&self, c: Component, name: &str) -> Option<&FlagSpec> {
        let i = *self.flag_index[c as usize].get(name)?;
        self.flags.get(i)
    }

    /// The lifecycle of a flag a rule names, for the rule's component.
    fn lifecycle(&self, target: Target, name: &str) -> Lifecycle {
        let spec = match target {
            Target::Component(c) => self.flag(c, name),
            _ => None,
        };
        Lifecycle {
            known: spec.is_some(),
            since: spec.and_then(|s| s.since),
            removed: spec.and_then(|s| s.removed),
        }
    }

    /// Whether a flag of any component can carry a secret: marked `sensitive` in the
    /// catalogue, or named like one (see [`crate::redact::sensitive_by_name`]).
    pub fn sensitive(&self, name: &str) -> bool {
        crate::redact::sensitive_by_name(name)
            || self.flags.iter().any(|f| f.sensitive && f.flag == name)
    }

    /// How a flag's value is read (scalar when the catalogue does not know it).
    pub fn kind(&self, c: Component, name: &str) -> FlagKind {
        self.flag(c, name).map(|f| f.kind).unwrap_or_default()
    }

    /// Whether `v` accepts the flag (flags the catalogue does not know are assumed accepted).
    pub fn flag_exists(&self, c: Component, name: &str, v: Option<Version>) -> Existence {
        Self::exists(self.flag(c, name), c, name, v)
    }

    /// [`Catalogue::flag_exists`] with the flag's record already looked up.
    pub fn exists(
        spec: Option<&FlagSpec>,
        c: Component,
        name: &str,
        v: Option<Version>,
    ) -> Existence {
        match spec {
            Some(f) => existence(f.since, f.removed, v),
            // etcd 3.7 removed every --experimental-* flag, also any the table does not list.
            None if c == Component::Etcd && name.starts_with("experimental-") => {
                existence(None, Some(ETCD_NO_EXPERIMENTAL), v)
            }
            None => Existence::Accepted,
        }
    }

    /// The lifecycle record of a plugin or gate.
    pub fn item(&self, c: Component, list_flag: &str, name: &str) -> Option<&ItemSpec> {
        let family = item_family(list_flag);
        self.items
            .iter()
            .find(|i| i.component == c && item_family(&i.flag) == family && i.name == name)
    }

    /// Whether `v` has the plugin or gate.
    pub fn item_exists(
        &self,
        c: Component,
        list_flag: &str,
        name: &str,
        v: Option<Version>,
    ) -> Existence {
        match self.item(c, list_flag, name) {
            Some(i) => existence(i.since, i.removed, v),
            None => Existence::Accepted,
        }
    }

    /// The value an absent flag has on `v`; `None` when unknown (no default recorded, or the
    /// version is unknown and the default changed between versions).
    pub fn default_of(&self, c: Component, name: &str, v: Option<Version>) -> Option<String> {
        let spec = self.flag(c, name)?;
        match v {
            Some(v) => spec
                .defaults
                .iter()
                .rfind(|d| d.since.is_none_or(|s| s.le(v)))
                .map(|d| d.value.clone()),
            None => {
                let first = spec.defaults.first()?;
                spec.defaults
                    .iter()
                    .all(|d| d.value == first.value)
                    .then(|| first.value.clone())
            }
        }
    }

    /// The support window for a component.
    pub fn support(&self, c: Component) -> Option<&Support> {
        let key = if c == Component::Etcd { "etcd" } else { "kube" };
        self.versions.supported.iter().find(|s| s.component == key)
    }

    /// The ids of the rules in force, in catalogue order.
    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| &*r.id)
    }

    /// The CIS ids of the rules in force that apply to a node running the components for
    /// which `runs` holds (a node without etcd does not pass the etcd checks: it has none),
    /// sorted, each once. File rules apply to every node.
    pub fn cis_ids(&self, runs: impl Fn(Component) -> bool) -> Vec<String> {
        let applies = |t: &Target| match t {
            Target::Component(c) => runs(*c),
            Target::AnyComponent => Component::ALL.iter().any(|c| runs(*c)),
            Target::Files(_) => true,
        };
        let ids: std::collections::BTreeSet<&str> = (self.rules.iter())
            .filter(|r| applies(&r.target))
            .filter_map(|r| r.cis.as_deref())
            .collect();
        ids.into_iter().map(str::to_string).collect()
    }

    /// Whether a rule judges what a probe saw (not a file).
    pub fn is_live(&self, rule_id: &str) -> bool {
        self.rules
            .iter()
            .any(|r| &*r.id == rule_id && matches!(r.test, Test::Builtin(b) if b.on_live()))
    }

    /// Whether a rule can fail more than once in one file (one finding per unsupported flag,
    /// plugin, gate, stray word, unparseable value or CVE).
    pub fn multi_instance(&self, rule_id: &str) -> bool {
        self.rules.iter().any(|r| {
            &*r.id == rule_id
                && matches!(
                    r.test,
                    Test::Builtin(
                        Builtin::UnsupportedFlags
                            | Builtin::UnsupportedPlugins
                            | Builtin::UnsupportedGates
                            | Builtin::StrayArguments
                            | Builtin::InvalidValues
                            | Builtin::KnownCves
                    )
                )
        })
    }
}

/// Admission plugin flags share one plugin namespace.
fn item_family(flag: &str) -> &str {
    match flag {
        "enable-admission-plugins" | "disable-admission-plugins" | "admission-control" => {
            "admission-plugins"
        }
        other => other,
    }
}

/// Every flag a test names.
pub fn referenced_flags(t: &Test, out: &mut Vec<String>) {
    match t {
        Test::Eq(f) | Test::NotEq(f) => out.push(f.flag.clone()),
        Test::Set(f) | Test::NotSet(f) => out.push(f.flag.clone()),
        Test::Has(f) | Test::NotHas(f) => out.push(f.flag.clone()),
        Test::Gte(f) => out.push(f.flag.clone()),
        Test::Subset(f) => out.push(f.flag.clone()),
        Test::GateNot(_) => out.push("feature-gates".into()),
        Test::All(ts) | Test::Any(ts) => ts.iter().for_each(|t| referenced_flags(t, out)),
        Test::Manual(_) | Test::ModeAtMost(_) | Test::Owner(_) | Test::Builtin(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON that build.rs writes gives the catalogue the YAML gives (a version such as
    /// 1.20 stays "1.20", nothing is dropped or renamed).
    #[test]
    fn a_node_without_etcd_is_not_said_to_evaluate_the_etcd_checks() {
        let cat = Catalogue::builtin();
        let all = cat.cis_ids(|_| true);
        let no_etcd = cat.cis_ids(|c| c != Component::Etcd);
        assert!(all.iter().any(|c| c.starts_with("2.")), "{all:?}");
        assert!(!no_etcd.iter().any(|c| c.starts_with("2.")), "{no_etcd:?}");
        // The file checks apply everywhere.
        assert!(no_etcd.iter().any(|c| c.starts_with("1.1.")), "{no_etcd:?}");
        let nothing_runs = cat.cis_ids(|_| false);
        assert!(nothing_runs.len() < no_etcd.len() && !nothing_runs.contains(&"1.2.1".to_string()));
    }

    #[test]
    fn the_compiled_catalogue_is_the_yaml_catalogue() {
        let from_yaml = Catalogue::load(
            parse_yaml("flags.yaml", include_str!("../../catalogue/flags.yaml")).unwrap(),
            parse_yaml(
                "versions.yaml",
                include_str!("../../catalogue/versions.yaml"),
            )
            .unwrap(),
            parse_yaml("rules.yaml", include_str!("../../catalogue/rules.yaml")).unwrap(),
        )
        .unwrap();
        let built = Catalogue::builtin();
        assert_eq!(
            format!("{:?}", from_yaml.flags),
            format!("{:?}", built.flags)
        );
        assert_eq!(
            format!("{:?}", from_yaml.items),
            format!("{:?}", built.items)
        );
        assert_eq!(
            format!("{:?}", from_yaml.rules),
            format!("{:?}", built.rules)
        );
        assert_eq!(
            format!("{:?}", from_yaml.versions),
            format!("{:?}", built.versions)
        );
        assert!(built.flags.len() > 100 && built.rules.len() > 80);
    }

    #[test]
    fn builtin_catalogue_loads_and_covers_every_cis_control_plane_check() {
        let cat = Catalogue::builtin();
        let ids: HashSet<&str> = cat.rules.iter().filter_map(|r| r.cis.as_deref()).collect();
        let tsv = include_str!("../../../tests/data/kube-bench-ids.txt");
        let missing: Vec<&str> = tsv.lines().filter(|id| !ids.contains(id)).collect();
        assert!(missing.is_empty(), "CIS checks without a rule: {missing:?}");
    }

    #[test]
    fn defaults_follow_the_version() {
        let cat = Catalogue::builtin();
        let c = Component::KubeApiserver;
        assert_eq!(
            cat.default_of(c, "insecure-port", Some(Version::new(1, 19, 0)))
                .as_deref(),
            Some("8080")
        );
        assert_eq!(
            cat.default_of(c, "insecure-port", Some(Version::new(1, 20, 0)))
                .as_deref(),
            Some("0")
        );
        assert_eq!(
            cat.default_of(c, "audit-log-maxage", Some(Version::new(1, 36, 1)))
                .as_deref(),
            Some("366")
        );
        assert_eq!(cat.default_of(c, "audit-log-maxage", None), None);
        assert_eq!(
            cat.default_of(c, "profiling", None).as_deref(),
            Some("true")
        );
    }

    #[test]
    fn lifecycle_answers() {
        let cat = Catalogue::builtin();
        let c = Component::KubeApiserver;
        let v = |m| Some(Version::new(1, m, 0));
        assert_eq!(
            cat.flag_exists(c, "kubelet-https", v(21)),
            Existence::Accepted
        );
        assert_eq!(
            cat.flag_exists(c, "kubelet-https", v(22)),
            Existence::Removed(Minor(1, 22))
        );
        assert_eq!(
            cat.flag_exists(c, "authentication-config", v(28)),
            Existence::NotYet(Minor(1, 29))
        );
        assert_eq!(
            cat.flag_exists(c, "kubelet-https", None),
            Existence::Unknown
        );
        assert_eq!(
            cat.item_exists(c, "disable-admission-plugins", "PodSecurityPolicy", v(25)),
            Existence::Removed(Minor(1, 25))
        );
    }

    #[test]
    fn a_rule_naming_an_unknown_flag_is_refused() {
        let mut cat = Catalogue::builtin().clone();
        let err = cat
            .add_rules(
                "rules:\n- {id: x, component: kube-apiserver, title: t, severity: low, test: {set: {flag: anonymus-auth}}, remediation: r}\n",
                "test",
            )
            .unwrap_err();
        assert!(err.to_string().contains("--anonymus-auth"), "{err}");
    }

    #[test]
    fn duplicate_ids_and_unknown_disables_are_refused() {
        let mut cat = Catalogue::builtin().clone();
        let dup = "rules:\n- {id: apiserver-profiling, component: kube-apiserver, title: t, severity: low, test: {set: {flag: profiling}}, remediation: r}\n";
        assert!(cat.add_rules(dup, "test").is_err());
        assert!(cat.disable(&["no-such-rule".into()]).is_err());
        cat.disable(&["apiserver-profiling".into()]).unwrap();
        assert!(cat.rules.iter().all(|r| &*r.id != "apiserver-profiling"));
    }

    #[test]
    fn unknown_keys_in_rules_are_refused() {
        let mut cat = Catalogue::builtin().clone();
        let err = cat
            .add_rules(
                "rules:\n- {id: x, component: etcd, title: t, severity: low, tset: {set: {flag: cert-file}}, remediation: r}\n",
                "test",
            )
            .unwrap_err();
        assert!(err.to_string().contains("tset"), "{err}");
    }
}
