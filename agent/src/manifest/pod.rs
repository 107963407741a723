//! The parts of a Pod that matter for control-plane checks, read from the document tree.
//!
//! Only fields we use are read; everything else is ignored as the kubelet would ignore
//! fields it does not know. Wrong types in fields we use are errors with the field's path.

use super::ManifestError;
use super::flags::{Arg, ArgSource};
use super::yaml::{Node, Style};

/// A static pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pod {
    /// `metadata.name`.
    pub name: Option<String>,
    /// `metadata.namespace`.
    pub namespace: Option<String>,
    /// `spec.containers`.
    pub containers: Vec<Container>,
    /// `spec.volumes` that are hostPath volumes.
    pub host_paths: Vec<HostPathVolume>,
}

/// A container of the pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Container {
    /// `name`.
    pub name: String,
    /// `image`.
    pub image: Option<String>,
    /// `command`, with spans.
    pub command: Vec<Arg>,
    /// `args`, with spans.
    pub args: Vec<Arg>,
    /// `env` entries in order: name and `value` (empty when absent), `None` when the value
    /// comes from `valueFrom` (known only at run time).
    pub env: Vec<(String, Option<String>)>,
    /// `envFrom` is set: variables not in `env` may come from a ConfigMap or Secret.
    pub env_from: bool,
    /// `volumeMounts`.
    pub mounts: Vec<Mount>,
    /// `startupProbe`, `readinessProbe`, `livenessProbe`, where set.
    pub probes: Vec<Probe>,
    /// Named container ports (`probe-port`), for probes that name their port.
    pub ports: Vec<(String, String)>,
}

/// A `volumeMounts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Volume name.
    pub name: String,
    /// Path inside the container.
    pub mount_path: String,
}

/// A `hostPath` volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPathVolume {
    /// Volume name.
    pub name: String,
    /// Path on the host.
    pub path: String,
}

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// `startupProbe`.
    Startup,
    /// `readinessProbe`.
    Readiness,
    /// `livenessProbe`.
    Liveness,
}

/// A probe, as far as the health gate needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// Which probe this is.
    pub kind: ProbeKind,
    /// `httpGet`, when the probe is an HTTP probe.
    pub http_get: Option<HttpGet>,
    /// `periodSeconds` (default 10).
    pub period_seconds: u32,
    /// `failureThreshold` (default 3).
    pub failure_threshold: u32,
    /// `initialDelaySeconds` (default 0).
    pub initial_delay_seconds: u32,
    /// `timeoutSeconds` (default 1).
    pub timeout_seconds: u32,
}

/// An `httpGet` probe action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// `scheme` (HTTP or HTTPS).
    pub scheme: String,
    /// `host`, when set.
    pub host: Option<String>,
    /// `port`: a number or a named port.
    pub port: String,
    /// `path`.
    pub path: String,
}

impl Pod {
    /// Reads a Pod from the root of a document.
    pub fn from_node(root: &Node) -> Result<Self, ManifestError> {
        if !matches!(root, Node::Map(_)) {
            return Err(ManifestError::NotAPod {
                found: format!("a YAML {}", root.kind()),
            });
        }
        let kind = root.get("kind").and_then(Node::as_str);
        match kind {
            Some("Pod") => {}
            Some(other) => {
                return Err(ManifestError::NotAPod {
                    found: format!("kind {other:?}"),
                });
            }
            None => {
                return Err(ManifestError::NotAPod {
                    found: "no kind field".into(),
                });
            }
        }
        let metadata = root.get("metadata");
        let spec = root
            .get("spec")
            .ok_or_else(|| invalid("spec", "a Pod needs a spec"))?;
        let mut pod = Pod {
            name: metadata.and_then(|m| scalar(m, "name")),
            namespace: metadata.and_then(|m| scalar(m, "namespace")),
            ..Pod::default()
        };
        for (i, c) in seq(spec, "containers", "spec")?.iter().enumerate() {
            pod.containers
                .push(Container::from_node(c, &format!("spec.containers[{i}]"))?);
        }
        if pod.containers.is_empty() {
            return Err(invalid(
                "spec.containers",
                "a Pod needs at least one container",
            ));
        }
        for v in seq(spec, "volumes", "spec")? {
            if let (Some(name), Some(path)) = (
                scalar(v, "name"),
                v.get("hostPath").and_then(|h| scalar(h, "path")),
            ) {
                pod.host_paths.push(HostPathVolume { name, path });
            }
        }
        Ok(pod)
    }
}

impl Container {
    fn from_node(node: &Node, path: &str) -> Result<Self, ManifestError> {
        if !matches!(node, Node::Map(_)) {
            return Err(invalid(path, "a container must be a mapping"));
        }
        let mut c = Container {
            name: scalar(node, "name").unwrap_or_default(),
            image: scalar(node, "image"),
            command: words(node, "command", path, ArgSource::Command)?,
            args: words(node, "args", path, ArgSource::Args)?,
            ..Container::default()
        };
        c.env_from = !seq(node, "envFrom", path)?.is_empty();
        for e in seq(node, "env", path)? {
            if let Some(k) = scalar(e, "name") {
                let value = match e.get("valueFrom") {
                    Some(_) => None,
                    None => Some(
                        e.get("value")
                            .and_then(Node::as_str)
                            .unwrap_or_default()
                            .to_string(),
                    ),
                };
                c.env.push((k, value));
            }
        }
        for m in seq(node, "volumeMounts", path)? {
            if let (Some(name), Some(mount_path)) = (scalar(m, "name"), scalar(m, "mountPath")) {
                c.mounts.push(Mount { name, mount_path });
            }
        }
        for p in seq(node, "ports", path)? {
            if let (Some(name), Some(port)) = (scalar(p, "name"), scalar(p, "containerPort")) {
                c.ports.push((name, port));
            }
        }
        for (key, kind) in [
            ("startupProbe", ProbeKind::Startup),
            ("readinessProbe", ProbeKind::Readiness),
            ("livenessProbe", ProbeKind::Liveness),
        ] {
            if let Some(p) = node.get(key).filter(|p| matches!(p, Node::Map(_))) {
                c.probes.push(Probe::from_node(p, kind));
            }
        }
        Ok(c)
    }
}

impl Probe {
    fn from_node(node: &Node, kind: ProbeKind) -> Self {
        let num = |key: &str, default: u32| {
            scalar(node, key)
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Probe {
            kind,
            http_get: node.get("httpGet").map(|h| HttpGet {
                scheme: scalar(h, "scheme").unwrap_or_else(|| "HTTP".into()),
                host: scalar(h, "host"),
                port: scalar(h, "port").unwrap_or_default(),
                path: scalar(h, "path").unwrap_or_else(|| "/".into()),
            }),
            period_seconds: num("periodSeconds", 10),
            failure_threshold: num("failureThreshold", 3),
            initial_delay_seconds: num("initialDelaySeconds", 0),
            timeout_seconds: num("timeoutSeconds", 1),
        }
    }
}

fn invalid(field: &str, problem: &str) -> ManifestError {
    ManifestError::Invalid {
        field: field.to_string(),
        problem: problem.to_string(),
    }
}

fn scalar(node: &Node, key: &str) -> Option<String> {
    node.get(key)
        .and_then(Node::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A sequence field; absent or null is empty, any other non-sequence is an error.
fn seq<'a, 'n>(node: &'a Node<'n>, key: &str, path: &str) -> Result<&'a [Node<'n>], ManifestError> {
    match node.get(key) {
        None => Ok(&[]),
        Some(Node::Seq(items)) => Ok(items),
        Some(n) if n.kind() == "null" => Ok(&[]),
        Some(n) => Err(invalid(
            &format!("{path}.{key}"),
            &format!("must be a sequence, found a {}", n.kind()),
        )),
    }
}

/// `command` / `args`: a sequence of scalars, each kept with its source span.
fn words(node: &Node, key: &str, path: &str, source: ArgSource) -> Result<Vec<Arg>, ManifestError> {
    seq(node, key, path)?
        .iter()
        .enumerate()
        .map(|(i, n)| match n {
            Node::Scalar { value, style, span } => Ok(Arg {
                text: value.to_string(),
                // Block scalars (`|`, `>`) span lines and their reported range is not the
                // token; such words are never edited in place.
                span: span.clone().filter(|_| *style != Style::Block),
                source,
                expanded: false,
            }),
            other => Err(invalid(
                &format!("{path}.{key}[{i}]"),
                &format!("must be a string, found a {}", other.kind()),
            )),
        })
        .collect()
}
