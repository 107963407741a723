//! The README's quick start stays true: `quickstart` runs to the end and shows what the
//! README says it shows.

use std::process::Command;

use lockdown_e2e::bin;

#[test]
fn the_quick_start_shows_drift_and_its_fix_arriving_at_the_collector() {
    bin("lockdown-agent");
    bin("lockdown-collector");
    let out = Command::new(bin("quickstart"))
        .env("QUICKSTART_NO_BUILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = stdout
        .split("making kube-scheduler insecure")
        .nth(1)
        .unwrap_or_else(|| panic!("{stdout}"));
    for expected in [
        "file_modified     kube-scheduler.yaml",
        "+    - --profiling=true",
        "+    - --bind-address=0.0.0.0",
        "finding_raised    kube-scheduler.yaml           scheduler-profiling",
        "finding_raised    kube-scheduler.yaml           scheduler-bind-address",
        "fix_applied       kube-scheduler.yaml           [scheduler-profiling]",
        "fix_verified      kube-scheduler.yaml",
        "cp-1                     connected",
        "fleet: nodes 1 connected, 0 stale, 0 missing",
        "scheduler-bind-address",
    ] {
        assert!(after.contains(expected), "{expected:?} not in:\n{after}");
    }
}
