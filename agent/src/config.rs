//! Agent configuration, in two steps: a raw serde struct that rejects unknown keys, then a
//! validated [`Config`] that the rest of the code uses.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::rules::Catalogue;
use crate::rules::catalogue::{CatalogueError, RawRule};

/// Where the agent looks for its config when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/kube-lockdown/agent.yaml";

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Static pod manifest directory the kubelet runs (kubelet `staticPodPath`).
    /// Default: /etc/kubernetes/manifests.
    #[serde(default)]
    pub manifests_dir: Option<PathBuf>,
    /// Directory holding admin.conf, super-admin.conf, scheduler.conf and
    /// controller-manager.conf. Default: /etc/kubernetes.
    #[serde(default)]
    pub kubernetes_dir: Option<PathBuf>,
    /// PKI directory (CIS 1.1.19-1.1.21). Default: /etc/kubernetes/pki.
    #[serde(default)]
    pub pki_dir: Option<PathBuf>,
    /// etcd data directory when the etcd manifest does not name one (CIS 1.1.11-1.1.12).
    /// Default: /var/lib/etcd.
    #[serde(default)]
    pub etcd_data_dir: Option<PathBuf>,
    /// Directories of CNI configuration and state (CIS 1.1.9-1.1.10).
    /// Default: /etc/cni/net.d and /var/lib/cni/networks.
    #[serde(default)]
    pub cni_dirs: Option<Vec<PathBuf>>,
    /// Rule catalogue changes.
    #[serde(default)]
    pub rules: RawRulesConfig,
}

/// `rules:` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRulesConfig {
    /// Ids of built-in rules to turn off.
    #[serde(default)]
    pub disable: Vec<String>,
    /// Extra rules, in the catalogue's own format (see agent/catalogue/rules.yaml).
    #[serde(default)]
    pub extra: Vec<RawRule>,
}

/// The validated config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Static pod manifest directory.
    pub manifests_dir: PathBuf,
    /// Directory of the control-plane kubeconfigs.
    pub kubernetes_dir: PathBuf,
    /// PKI directory.
    pub pki_dir: PathBuf,
    /// Fallback etcd data directory.
    pub etcd_data_dir: PathBuf,
    /// CNI directories.
    pub cni_dirs: Vec<PathBuf>,
    /// The rule catalogue in force.
    pub catalogue: Catalogue,
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Cannot read the file.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file does not match the schema (an unknown key names itself here).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A rule change is invalid.
    #[error("invalid config {path}: {source}")]
    Rules {
        /// File.
        path: PathBuf,
        /// Cause.
        source: CatalogueError,
    },
    /// A path is not absolute.
    #[error("invalid config {path}: {field} must be an absolute path, got {value}")]
    Relative {
        /// File.
        path: PathBuf,
        /// Field.
        field: &'static str,
        /// Value.
        value: String,
    },
}

impl Config {
    /// Defaults for a kubeadm node.
    pub fn kubeadm_defaults() -> Self {
        Self::validate(RawConfig::default(), Path::new("(defaults)")).expect("defaults are valid")
    }

    /// Loads `path`; when `explicit` is false and the file does not exist, the defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::kubeadm_defaults());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?
        };
        Self::validate(raw, path)
    }

    fn validate(raw: RawConfig, path: &Path) -> Result<Self, ConfigError> {
        let abs = |field: &'static str,
                   v: Option<PathBuf>,
                   default: &str|
         -> Result<PathBuf, ConfigError> {
            let v = v.unwrap_or_else(|| PathBuf::from(default));
            if v.is_absolute() {
                Ok(v)
            } else {
                Err(ConfigError::Relative {
                    path: path.to_path_buf(),
                    field,
                    value: v.display().to_string(),
                })
            }
        };
        let mut catalogue = Catalogue::builtin().clone();
        let rules_err = |source| ConfigError::Rules {
            path: path.to_path_buf(),
            source,
        };
        catalogue.disable(&raw.rules.disable).map_err(rules_err)?;
        catalogue
            .add_raw_rules(raw.rules.extra)
            .map_err(rules_err)?;
        let cni_dirs = raw
            .cni_dirs
            .unwrap_or_else(|| vec!["/etc/cni/net.d".into(), "/var/lib/cni/networks".into()]);
        for d in &cni_dirs {
            if !d.is_absolute() {
                return Err(ConfigError::Relative {
                    path: path.to_path_buf(),
                    field: "cni_dirs",
                    value: d.display().to_string(),
                });
            }
        }
        Ok(Config {
            manifests_dir: abs(
                "manifests_dir",
                raw.manifests_dir,
                "/etc/kubernetes/manifests",
            )?,
            kubernetes_dir: abs("kubernetes_dir", raw.kubernetes_dir, "/etc/kubernetes")?,
            pki_dir: abs("pki_dir", raw.pki_dir, "/etc/kubernetes/pki")?,
            etcd_data_dir: abs("etcd_data_dir", raw.etcd_data_dir, "/var/lib/etcd")?,
            cni_dirs,
            catalogue,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::parse("manifest_dir: /x\n", Path::new("a.yaml")).unwrap_err();
        assert!(err.to_string().contains("manifest_dir"), "{err}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let err = Config::parse("pki_dir: pki\n", Path::new("a.yaml")).unwrap_err();
        assert!(
            err.to_string().contains("pki_dir must be an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn rules_can_be_disabled_and_added() {
        let cfg = Config::parse(
            "rules:\n  disable: [apiserver-profiling]\n  extra:\n  - {id: site-audit-policy, component: kube-apiserver, title: Audit policy set, severity: medium, test: {set: {flag: audit-policy-file}}, remediation: set it}\n",
            Path::new("a.yaml"),
        )
        .unwrap();
        let ids: Vec<&str> = cfg.catalogue.rule_ids().collect();
        assert!(!ids.contains(&"apiserver-profiling"));
        assert!(ids.contains(&"site-audit-policy"));
    }

    #[test]
    fn missing_default_config_means_defaults_but_missing_named_config_is_an_error() {
        let cfg = Config::load(Path::new("/nonexistent/agent.yaml"), false).unwrap();
        assert_eq!(cfg.manifests_dir, Path::new("/etc/kubernetes/manifests"));
        assert!(Config::load(Path::new("/nonexistent/agent.yaml"), true).is_err());
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_documented_example_config_is_valid() {
        let text = include_str!("../agent.example.yaml");
        let cfg = Config::parse(text, Path::new("agent.example.yaml")).unwrap();
        assert!(
            cfg.catalogue
                .rule_ids()
                .any(|id| id == "site-audit-policy-file")
        );
    }
}
