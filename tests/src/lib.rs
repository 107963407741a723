//! Helpers for end-to-end tests that run the real kube-lockdown binaries.

pub mod browser;
pub mod collector;
pub mod http;
pub mod kubelet;
pub mod measure;
pub mod node;
pub mod pki;
pub mod proxy;
pub mod sim;

use std::path::PathBuf;

/// Path of a workspace binary built next to the running test executable. `cargo test` and
/// `cargo nextest` build a package's binaries only when that package has integration tests,
/// so agent/tests/ and collector/tests/ must stay non-empty for these tests to find them.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> (tests, benches) or target/<profile>/<bin> (binaries of
    // this package) -> target/<profile>/<name>
    let mut dir = exe.parent().expect("target dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the tests with `cargo nextest run --workspace` (or `cargo build --workspace` first)",
        path.display()
    );
    path
}

/// Whether a test that needs root can run: true as root. Elsewhere, under CI (`CI` set) it
/// fails, since CI runs as root and must run every test; on a developer's machine it says
/// why it skips and returns false.
pub fn needs_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root ({why}) and CI runs as root"
    );
    eprintln!("skipped: needs root ({why}); run the tests as root, as CI does");
    false
}

/// Waits, checking every 100 ms, until `done` says so; after `limit`, fails saying `what`
/// and what `log` tells (the logs of the processes involved).
pub fn wait_until_within(
    what: &str,
    limit: std::time::Duration,
    mut done: impl FnMut() -> bool,
    log: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}\n{}", log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// [`wait_until_within`] the tests' usual [`node::WAIT`], with nothing more to tell.
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_until_within(what, node::WAIT, done, String::new);
}
