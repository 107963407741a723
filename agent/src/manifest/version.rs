//! Component versions, read from image references.
//!
//! Kubernetes images are tagged `vMAJOR.MINOR.PATCH` with distribution suffixes
//! (`v1.30.2-eks-1-30`, `v1.30.2-rke2r1-build20240614`); etcd images carry etcd's own version
//! (`3.5.15-0`). Registries may have ports and images may be pinned by digest, so the tag is
//! the part after the last `:` of the last path segment, before any `@`.

use std::fmt;

/// A release version. `patch` is `None` when the tag names only a minor (`v1.30`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch, when the tag has one.
    pub patch: Option<u32>,
}

impl Version {
    /// A version with a patch number.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch: Some(patch),
        }
    }

    /// The `(major, minor)` pair.
    pub fn minor_pair(&self) -> (u32, u32) {
        (self.major, self.minor)
    }

    /// Parses `1.30`, `v1.30.2`, `1.30.2-rke2r1`, `3.5.15-0`. Returns `None` for anything
    /// that does not start with a dotted number.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.strip_prefix('v').unwrap_or(text);
        let mut parts = text.splitn(3, '.');
        let major = leading_number(parts.next()?)?.0;
        let (minor, rest) = leading_number(parts.next()?)?;
        let patch = if rest.is_empty() {
            parts.next().and_then(leading_number).map(|(p, _)| p)
        } else {
            None
        };
        Some(Self {
            major,
            minor,
            patch,
        })
    }
}

fn leading_number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 || end > 9 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.patch {
            Some(p) => write!(f, "{}.{}.{}", self.major, self.minor, p),
            None => write!(f, "{}.{}", self.major, self.minor),
        }
    }
}

/// An image reference split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef<'a> {
    /// Everything before the tag: registry, path and name.
    pub repository: &'a str,
    /// The last path segment of the repository (`kube-apiserver`).
    pub name: &'a str,
    /// The tag, if any.
    pub tag: Option<&'a str>,
    /// The digest, if any.
    pub digest: Option<&'a str>,
}

impl<'a> ImageRef<'a> {
    /// Splits `my.reg:5000/k8s/kube-apiserver:v1.30.2@sha256:abc`.
    pub fn parse(image: &'a str) -> Self {
        let image = image.trim();
        let (rest, digest) = match image.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (image, None),
        };
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        let name = &repository[repository.rfind('/').map_or(0, |i| i + 1)..];
        Self {
            repository,
            name,
            tag: tag.filter(|t| !t.is_empty()),
            digest,
        }
    }

    /// The version the tag names, if it names one.
    pub fn version(&self) -> Option<Version> {
        self.tag.and_then(Version::parse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_with_registries_ports_and_digests() {
        let r = ImageRef::parse("my.reg:5000/k8s/kube-apiserver:v1.30.2@sha256:0123abcd");
        assert_eq!(r.name, "kube-apiserver");
        assert_eq!(r.repository, "my.reg:5000/k8s/kube-apiserver");
        assert_eq!(r.tag, Some("v1.30.2"));
        assert_eq!(r.digest, Some("sha256:0123abcd"));
        assert_eq!(r.version(), Some(Version::new(1, 30, 2)));
    }

    #[test]
    fn registry_port_without_tag_is_not_a_tag() {
        let r = ImageRef::parse("my.reg:5000/kube-apiserver");
        assert_eq!(r.tag, None);
        assert_eq!(r.version(), None);
        let r = ImageRef::parse("registry.k8s.io/kube-apiserver@sha256:0123");
        assert_eq!(r.version(), None);
        assert_eq!(r.name, "kube-apiserver");
    }

    #[test]
    fn distribution_suffixes_and_etcd_tags() {
        assert_eq!(
            ImageRef::parse("rancher/hardened-kubernetes:v1.30.2-rke2r1-build20240614").version(),
            Some(Version::new(1, 30, 2))
        );
        assert_eq!(
            ImageRef::parse("registry.k8s.io/etcd:3.5.15-0").version(),
            Some(Version::new(3, 5, 15))
        );
        assert_eq!(
            ImageRef::parse("x/kube-apiserver:v1.29").version(),
            Some(Version {
                major: 1,
                minor: 29,
                patch: None
            })
        );
        assert_eq!(ImageRef::parse("x/kube-apiserver:latest").version(), None);
        assert_eq!(ImageRef::parse("x/kube-apiserver:v1").version(), None);
    }

    #[test]
    fn versions_order_numerically() {
        assert!(Version::new(1, 9, 0) < Version::new(1, 10, 0));
        assert!(Version::parse("v1.28.15").unwrap() > Version::parse("1.28.9").unwrap());
    }
}
