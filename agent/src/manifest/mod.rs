//! Static pod manifests: from bytes to a model of the control-plane component they run.
//!
//! Pure: takes the file's bytes, returns a [`Manifest`] or a [`ManifestError`] that names the
//! problem. The kubelet accepts YAML or JSON and reads only the first document; so do we,
//! and we say so when there are more. The component is found from the executable the
//! container runs (`kube-apiserver`, `/usr/local/bin/kube-apiserver`, `sh -c "exec
//! kube-apiserver ..."`, `hyperkube kube-apiserver`), with the image and container name as
//! fallback when the pod sets no command.

pub mod expand;
pub mod flags;
pub mod mounts;
pub mod pod;
pub mod shell;
pub mod version;
pub mod yaml;

use std::borrow::Cow;
use std::fmt;

use expand::Expanded;
use flags::{Arg, ArgSource, FlagKind, Flags};
use pod::{Container, Pod};
use version::{ImageRef, Version};

/// Largest manifest we read (the kubelet's own limit is larger; real manifests are < 10 KiB).
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// A control-plane component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// kube-apiserver.
    KubeApiserver,
    /// kube-controller-manager.
    KubeControllerManager,
    /// kube-scheduler.
    KubeScheduler,
    /// etcd.
    Etcd,
}

impl Component {
    /// Every component.
    pub const ALL: [Component; 4] = [
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::Etcd,
    ];

    /// The executable name.
    pub fn name(self) -> &'static str {
        match self {
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::Etcd => "etcd",
        }
    }

    /// The component an executable (`/usr/local/bin/kube-apiserver`) runs.
    pub fn from_executable(path: &str) -> Option<Self> {
        let base = path.rsplit('/').next().unwrap_or(path);
        Component::ALL.into_iter().find(|c| c.name() == base)
    }

    /// The component a name or hyperkube sub-command (`apiserver`) names.
    pub fn from_name(name: &str) -> Option<Self> {
        let base = name.rsplit('/').next().unwrap_or(name);
        match base {
            "kube-apiserver" | "apiserver" => Some(Component::KubeApiserver),
            "kube-controller-manager" | "controller-manager" => {
                Some(Component::KubeControllerManager)
            }
            "kube-scheduler" | "scheduler" => Some(Component::KubeScheduler),
            "etcd" => Some(Component::Etcd),
            _ => None,
        }
    }

    /// The component an image or container name suggests (`kube-apiserver-amd64`,
    /// `hardened-etcd`).
    fn from_image_or_container_name(name: &str) -> Option<Self> {
        let name = name.strip_prefix("hardened-").unwrap_or(name);
        Component::ALL.into_iter().find(|c| {
            name == c.name()
                || name
                    .strip_prefix(c.name())
                    .is_some_and(|r| r.starts_with('-'))
        })
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a file is not a usable manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("file is {size} bytes, larger than the {limit}-byte limit for a manifest")]
    TooLarge {
        /// Size seen.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// Holds NUL bytes.
    #[error("file is binary (NUL byte at offset {offset}), not a YAML or JSON manifest")]
    Binary {
        /// First NUL.
        offset: usize,
    },
    /// Not valid UTF-8.
    #[error("file is not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 {
        /// First invalid byte.
        offset: usize,
    },
    /// Empty or whitespace only.
    #[error("file is empty")]
    Empty,
    /// Not well-formed, too deep, or an alias bomb.
    #[error("{0}")]
    Yaml(#[from] yaml::YamlError),
    /// Well-formed, but not a Pod.
    #[error("not a Pod: {found}")]
    NotAPod {
        /// What it is instead.
        found: String,
    },
    /// A Pod with a field of the wrong shape.
    #[error("invalid Pod: {field} {problem}")]
    Invalid {
        /// Path of the field (`spec.containers[0].args`).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

/// How the component was recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentifiedBy {
    /// The container's executable.
    Executable,
    /// The executable inside a `sh -c` script.
    ShellWrapper,
    /// A `hyperkube <component>` invocation.
    Hyperkube,
    /// The image name (no command set).
    Image,
    /// The container name (no command set).
    ContainerName,
}

/// A control-plane component found in a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlane {
    /// Which component.
    pub component: Component,
    /// Index of its container in [`Pod::containers`].
    pub container: usize,
    /// How it was recognised.
    pub identified_by: IdentifiedBy,
    /// Version from the image tag (etcd's own version for etcd); `None` when unknown.
    pub version: Option<Version>,
    /// The image, as written.
    pub image: Option<String>,
    /// Its flags.
    pub flags: Flags,
}

/// A parsed manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The pod.
    pub pod: Pod,
    /// The control-plane component it runs, if any (haproxy or kube-vip run none).
    pub control_plane: Option<ControlPlane>,
    /// Things worth telling about the file that are not errors.
    pub notes: Vec<String>,
}

/// Tells the flag parser what kind of value each flag of a component takes.
pub type FlagKinds<'a> = &'a dyn Fn(Component, &str) -> FlagKind;

/// Parses a manifest from its bytes.
pub fn parse(bytes: &[u8], kinds: FlagKinds<'_>) -> Result<Manifest, ManifestError> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_MANIFEST_BYTES,
        });
    }
    if bytes.contains(&0) {
        let offset = bytes.iter().position(|&b| b == 0).unwrap_or_default();
        return Err(ManifestError::Binary { offset });
    }
    let src = std::str::from_utf8(bytes).map_err(|e| ManifestError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    if src.trim().is_empty() {
        return Err(ManifestError::Empty);
    }
    let doc = yaml::parse_first_document(src)?;
    let pod = Pod::from_node(&doc.root)?;
    let mut notes = Vec::new();
    if doc.has_more_documents {
        notes.push(
            "file holds more than one YAML document; only the first counts (as for the kubelet)"
                .to_string(),
        );
    }
    let control_plane = pod
        .containers
        .iter()
        .enumerate()
        .find_map(|(i, c)| identify(src, i, c, kinds, &mut notes));
    Ok(Manifest {
        pod,
        control_plane,
        notes,
    })
}

fn identify(
    src: &str,
    index: usize,
    c: &Container,
    kinds: FlagKinds<'_>,
    notes: &mut Vec<String>,
) -> Option<ControlPlane> {
    // What the container receives: `$(VAR)` expanded from its env, as the kubelet does.
    let env = expand::Env::resolve(&c.env, c.env_from);
    let mut run_time = Vec::new();
    let n_command = c.command.len();
    let mut argv: Vec<Arg> = c
        .command
        .iter()
        .chain(&c.args)
        .map(|a| match env.expand(&a.text) {
            Expanded::Known(Cow::Borrowed(_)) => a.clone(),
            // Not the bytes that are written: never edited in place.
            Expanded::Known(Cow::Owned(text)) => Arg {
                text,
                span: None,
                source: a.source,
                expanded: true,
            },
            Expanded::RunTime(var) => {
                run_time.push((a.text.clone(), var));
                a.clone()
            }
        })
        .collect();
    let image = c.image.as_deref().map(ImageRef::parse);
    let (component, identified_by, rest) = if n_command > 0 {
        let first = &argv[0].text;
        let base = first.rsplit('/').next().unwrap_or(first);
        if let Some(component) = Component::from_executable(base) {
            argv.drain(..1);
            (component, IdentifiedBy::Executable, argv)
        } else if base == "hyperkube" {
            let component = argv.get(1).and_then(|a| Component::from_name(&a.text))?;
            argv.drain(..2);
            (component, IdentifiedBy::Hyperkube, argv)
        } else if matches!(base, "sh" | "bash" | "ash" | "dash") {
            let script_at = argv.iter().position(|a| a.text == "-c")? + 1;
            let (component, words) = from_script(src, argv.get(script_at)?, &env, notes)?;
            (component, IdentifiedBy::ShellWrapper, words)
        } else {
            return None;
        }
    } else if let Some(component) = image
        .as_ref()
        .and_then(|i| Component::from_image_or_container_name(i.name))
    {
        // No command: the image's entrypoint runs, with `args` as its arguments.
        (component, IdentifiedBy::Image, argv)
    } else {
        let component = Component::from_image_or_container_name(&c.name)?;
        (component, IdentifiedBy::ContainerName, argv)
    };
    for (word, var) in run_time {
        notes.push(format!(
            "{word:?} uses $({var}), which is set from valueFrom at run time; judged as written"
        ));
    }
    let version = image.as_ref().and_then(ImageRef::version);
    if version.is_none() {
        notes.push(format!(
            "cannot tell the {component} version from image {:?}; version-specific checks are limited and no fix will add anything",
            c.image.as_deref().unwrap_or("(none)")
        ));
    }
    let mut flags = Flags::parse(rest, &|name| kinds(component, name));
    if component == Component::Etcd {
        flags.add_env_fallbacks(
            c.env
                .iter()
                .filter_map(|(k, _)| Some((k.as_str(), env.get(k)??))),
        );
    }
    Some(ControlPlane {
        component,
        container: index,
        identified_by,
        version,
        image: c.image.clone(),
        flags,
    })
}

/// Finds `[exec] [VAR=x ...] <component> flags...` in a `sh -c` script and returns the
/// flag words, with spans where the script text maps one to one onto the source.
fn from_script(
    src: &str,
    script: &Arg,
    env: &expand::Env,
    notes: &mut Vec<String>,
) -> Option<(Component, Vec<Arg>)> {
    // Where the script's own text starts in the source, if the scalar is written verbatim.
    let base = script.span.as_ref().and_then(|span| {
        let raw = &src[span.clone()];
        let inner = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| raw.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
            .unwrap_or(raw);
        (inner == script.text).then(|| span.start + (raw.len() - inner.len()) / 2)
    });
    for command in shell::split_commands_with(&script.text, &|name| env.get(name)) {
        let mut words = command.into_iter().peekable();
        while let Some(w) = words.peek() {
            if w.text == "exec" || (w.text.contains('=') && !w.text.starts_with('-')) {
                words.next();
            } else {
                break;
            }
        }
        let Some(exe) = words.next() else { continue };
        let Some(component) = Component::from_executable(&exe.text) else {
            continue;
        };
        let args = words
            .map(|w| {
                if let Some(what) = &w.dynamic {
                    notes.push(format!(
                        "{:?} in the sh -c script uses {what}; judged as written",
                        w.text
                    ));
                }
                Arg {
                    span: base
                        .filter(|_| w.verbatim)
                        .map(|b| b + w.range.start..b + w.range.end),
                    text: w.text,
                    source: ArgSource::Shell,
                    expanded: script.expanded || w.expanded,
                }
            })
            .collect();
        return Some((component, args));
    }
    None
}

#[cfg(test)]
mod tests;
