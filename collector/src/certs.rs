//! `lockdown-collector dev-ca`: a development CA with collector, agent and reader
//! certificates, for trying kube-lockdown and for the tests. Production uses the operator's
//! own PKI; the collector only needs PEM files.

use anyhow::Context as _;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Writes `ca.crt`, `collector.{crt,key}` (valid for `collector_names`, plus localhost and the
/// loopback addresses), `<node>.{crt,key}` for each agent node (its only DNS SAN is the node
/// name, as the collector checks) and `<reader>.{crt,key}` for each reader, into `out`.
/// The CA key is not kept: nothing more can be signed with it.
pub fn write_dev_ca(
    out: &Path,
    collector_names: &[String],
    nodes: &[String],
    readers: &[String],
) -> anyhow::Result<()> {
    let err = |e: rcgen::Error| anyhow::anyhow!("cannot make a certificate: {e}");
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "kube-lockdown development CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    write(out, "ca.crt", &ca_cert.pem(), 0o644)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |name: &str, sans: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(sans).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        write(out, &format!("{name}.crt"), &cert.pem(), 0o644)?;
        write(out, &format!("{name}.key"), &key.serialize_pem(), 0o600)
    };
    let mut sans: Vec<String> = collector_names.to_vec();
    sans.extend(["localhost", "127.0.0.1", "::1"].map(String::from));
    leaf("collector", sans, ExtendedKeyUsagePurpose::ServerAuth)?;
    for n in nodes.iter().chain(readers) {
        leaf(n, vec![n.clone()], ExtendedKeyUsagePurpose::ClientAuth)?;
    }
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str, mode: u32) -> anyhow::Result<()> {
    let path = dir.join(name);
    let _ = fs::remove_file(&path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
