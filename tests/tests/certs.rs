//! The daemon on certificates and kubeconfigs: what is in the files is judged as they
//! change, as what they depend on changes, and as time passes.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use lockdown_agent::event::{Event, EventBody};
use lockdown_e2e::node::{Node, about};
use lockdown_e2e::pki::{self, Ca};
use time::{Duration, OffsetDateTime};

/// Whether `rule` was raised on `path` among `events`.
fn raised_on(events: &[Event], rule: &str, path: &std::path::Path) -> bool {
    about(events, "finding_raised", path).iter().any(
        |e| matches!(&e.body, EventBody::FindingRaised { finding, .. } if finding.rule_id == rule),
    )
}

fn write(path: &std::path::Path, text: &str, mode: u32) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn expiry_is_judged_again_as_time_passes_without_a_file_change() {
    // No periodic rescan: only the certificate clock can see the expiry.
    let node = Node::new("rescan_interval: 0s\ntls:\n  recheck_interval: 1s");
    let soon = node.pki.join("soon.crt");
    let pair = node.ca.issue_until(
        "soon",
        &["soon"],
        OffsetDateTime::now_utc() + Duration::seconds(4),
    );
    write(&soon, &pair.cert, 0o644);
    write(&node.pki.join("soon.key"), &pair.key, 0o600);
    let agent = node.start();
    let events = agent.wait_for(0, |ev| raised_on(ev, "cert-expiring", &soon));
    assert!(!raised_on(&events, "cert-expired", &soon), "{events:#?}");
    let seq = events.last().unwrap().seq;
    let events = agent.wait_for(seq, |ev| raised_on(ev, "cert-expired", &soon));
    // Nothing happened to the file (and no rescan ran): only its findings changed.
    assert!(about(&events, "file_modified", &soon).is_empty());
    assert!(
        !events.iter().any(|e| e.body.kind() == "rescan"),
        "{events:#?}"
    );
    let expired = about(&events, "finding_raised", &soon)
        .into_iter()
        .find_map(|e| match &e.body {
            EventBody::FindingRaised { finding, .. } if finding.rule_id == "cert-expired" => {
                Some(finding.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(
        expired.observed.as_deref().unwrap().contains(" expired "),
        "{expired:?}"
    );
    assert!(agent.stop().success());
}

#[test]
fn a_key_beside_a_certificate_and_the_cluster_ca_are_dependencies() {
    let node = Node::kubeadm_full("");
    let crt = node.pki.join("apiserver.crt");
    let admin = node.kubernetes.join("admin.conf");
    let apiserver = node.manifest("kube-apiserver.yaml");
    let agent = node.start();
    let events = agent.wait_for(0, |ev| ev.iter().any(|e| e.body.kind() == "agent_started"));
    // A sandbox made as kubeadm makes a node: no certificate or kubeconfig finding.
    let noisy: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(&e.body, EventBody::FindingRaised { finding, .. }
                if finding.rule_id.starts_with("cert-")
                    || finding.rule_id.starts_with("kubeconfig-")
                    || finding.rule_id == "apiserver-cert-names"
                    || finding.rule_id == "etcd-unique-ca")
        })
        .collect();
    assert!(noisy.is_empty(), "{noisy:#?}");
    let seq = events.last().unwrap().seq;

    // Another key written beside apiserver.crt: the certificate did not change, its pair did.
    let other = node.ca.issue("other", &[]);
    write(&node.pki.join("apiserver.key"), &other.key, 0o600);
    let events = agent.wait_for(seq, |ev| raised_on(ev, "cert-key-mismatch", &crt));
    let seq = events.last().unwrap().seq;

    // A new serving certificate without the Service names: the manifest's finding.
    let narrow = node.ca.issue("kube-apiserver", &["cp-1"]);
    write(&crt, &narrow.cert, 0o644);
    let events = agent.wait_for(seq, |ev| raised_on(ev, "apiserver-cert-names", &apiserver));
    let seq = events.last().unwrap().seq;

    // A new cluster CA: admin.conf (unchanged) no longer trusts it.
    let new_ca = Ca::new("kubernetes");
    write(&node.pki.join("ca.crt"), &new_ca.pem, 0o644);
    let events = agent.wait_for(seq, |ev| raised_on(ev, "kubeconfig-cluster-ca", &admin));
    let seq = events.last().unwrap().seq;

    // admin.conf rewritten for the new CA: resolved.
    let client = new_ca.issue("kubernetes-admin", &[]);
    let text = pki::kubeconfig(
        "https://10.0.0.10:6443",
        &new_ca,
        "kubernetes-admin",
        &client,
    );
    write(&admin, &text, 0o600);
    agent.wait_for(seq, |ev| {
        about(ev, "finding_resolved", &admin).iter().any(|e| {
            matches!(&e.body, EventBody::FindingResolved { finding, .. }
                if finding.rule_id == "kubeconfig-cluster-ca")
        })
    });
    assert!(agent.stop().success());
}

#[test]
fn a_certificate_a_manifest_names_outside_the_pki_is_tracked_and_its_directory_watched() {
    let node = Node::new("");
    let elsewhere = node.root.path().join("etcd-tls");
    fs::create_dir_all(&elsewhere).unwrap();
    let etcd = node.manifest("etcd.yaml");
    let text = fs::read_to_string(&etcd).unwrap().replace(
        &format!("      path: {}/pki/etcd\n", node.kubernetes.display()),
        &format!("      path: {}\n", elsewhere.display()),
    );
    assert!(text.contains(elsewhere.to_str().unwrap()), "{text}");
    fs::write(&etcd, text).unwrap();
    let server = elsewhere.join("server.crt");
    let soon = node.ca.issue_until(
        "cp-1",
        &["cp-1"],
        OffsetDateTime::now_utc() + Duration::days(3),
    );
    write(&server, &soon.cert, 0o644);
    write(&elsewhere.join("server.key"), &soon.key, 0o600);
    let agent = node.start();
    let events = agent.wait_for(0, |ev| raised_on(ev, "cert-expiring", &server));
    let seq = events.last().unwrap().seq;
    // Renewed: heard through the watch on its directory.
    let renewed = node.ca.issue("cp-1", &["cp-1"]);
    write(&elsewhere.join("server.key"), &renewed.key, 0o600);
    write(&server, &renewed.cert, 0o644);
    agent.wait_for(seq, |ev| {
        about(ev, "finding_resolved", &server).iter().any(|e| {
            matches!(&e.body, EventBody::FindingResolved { finding, .. }
                if finding.rule_id == "cert-expiring")
        })
    });
    assert!(agent.stop().success());
}
