//! Where a pod's files are on the host: a container path through the pod's hostPath
//! mounts, and the files a component's flags name (configs, certificates).

use std::path::{Path, PathBuf};

use super::{Component, ControlPlane, Manifest};

/// Maps a path inside the container to the host through the pod's hostPath mounts.
pub fn host_path(m: &Manifest, cp: &ControlPlane, inner: &str) -> Option<PathBuf> {
    // Compared by path components, as the container runtime does: `/var/lib/etcd//` is the
    // mount `/var/lib/etcd`, and `/var/lib/etcdx` is not under it.
    let inner = Path::new(inner);
    let c = &m.pod.containers[cp.container];
    c.mounts
        .iter()
        .filter_map(|mnt| {
            let rest = inner.strip_prefix(Path::new(&mnt.mount_path)).ok()?;
            // `..` leaves the mount inside the container; where it lands is not ours to say.
            let escapes = rest
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
            (!escapes).then_some((mnt, rest))
        })
        .max_by_key(|(mnt, _)| Path::new(&mnt.mount_path).components().count())
        .and_then(|(mnt, rest)| {
            let vol = m.pod.host_paths.iter().find(|v| v.name == mnt.name)?;
            Some(if rest.as_os_str().is_empty() {
                PathBuf::from(&vol.path)
            } else {
                Path::new(&vol.path).join(rest)
            })
        })
}

/// The host path of the AuthenticationConfiguration a manifest names, if any.
pub fn authn_host_path(m: &Manifest, cp: &ControlPlane) -> Option<PathBuf> {
    host_path(m, cp, &cp.flags.value("authentication-config")?)
}

/// The host path of the AuthorizationConfiguration a manifest names, if any.
pub fn authz_host_path(m: &Manifest, cp: &ControlPlane) -> Option<PathBuf> {
    host_path(m, cp, &cp.flags.value("authorization-config")?)
}

/// Certificate files each component's flags name.
const CERT_FLAGS: [(Component, &[&str]); 4] = [
    (
        Component::KubeApiserver,
        &[
            "tls-cert-file",
            "client-ca-file",
            "kubelet-client-certificate",
            "kubelet-certificate-authority",
            "etcd-certfile",
            "etcd-cafile",
            "proxy-client-cert-file",
            "requestheader-client-ca-file",
        ],
    ),
    (
        Component::KubeControllerManager,
        &[
            "tls-cert-file",
            "client-ca-file",
            "cluster-signing-cert-file",
            "root-ca-file",
            "requestheader-client-ca-file",
        ],
    ),
    (
        Component::KubeScheduler,
        &[
            "tls-cert-file",
            "client-ca-file",
            "requestheader-client-ca-file",
        ],
    ),
    (
        Component::Etcd,
        &[
            "cert-file",
            "peer-cert-file",
            "trusted-ca-file",
            "peer-trusted-ca-file",
        ],
    ),
];

/// Where on the host the certificate files the manifest's flags name are, as the pod mounts
/// them: on a node they are judged like the PKI directory's.
pub fn named_cert_paths(m: &Manifest, cp: &ControlPlane) -> Vec<PathBuf> {
    let flags = CERT_FLAGS
        .iter()
        .find(|(c, _)| *c == cp.component)
        .map_or(&[][..], |(_, f)| f);
    flags
        .iter()
        .filter_map(|f| host_path(m, cp, &cp.flags.value(f)?))
        .collect()
}
