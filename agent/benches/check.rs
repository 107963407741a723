//! Benchmarks for BENCHMARKS.md (run: `cargo bench -p lockdown-agent --bench check`).
//!
//! 1. parse + evaluate one kubeadm kube-apiserver manifest (pure core, no IO);
//! 2. a whole `lockdown-agent check` process on the four kubeadm 1.31 manifests, against the
//!    start-up of a Python interpreter (`python3 -c pass`), the floor of any Python scanner.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lockdown_agent::rules::Catalogue;
use lockdown_agent::rules::eval::{ManifestFacts, evaluate_manifest};
use lockdown_agent::rules::parse_manifest;

fn per_iter(total: Duration, n: u32) -> f64 {
    total.as_secs_f64() * 1e6 / f64::from(n)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let src = std::fs::read(root.join("tests/data/kubeadm/v1.31/kube-apiserver.yaml")).unwrap();
    let cat = Catalogue::builtin();
    let n = 20_000;
    let start = Instant::now();
    for _ in 0..n {
        let m = parse_manifest(cat, black_box(&src)).unwrap();
        let cp = m.control_plane.as_ref().unwrap();
        black_box(evaluate_manifest(
            cat,
            ManifestFacts {
                cp,
                authn: None,
                authz: None,
                certs: None,
            },
        ));
    }
    println!(
        "parse+evaluate kube-apiserver.yaml (kubeadm 1.31): {:.1} µs/manifest over {n}",
        per_iter(start.elapsed(), n)
    );

    let start = Instant::now();
    for _ in 0..n {
        black_box(parse_manifest(cat, black_box(&src)).unwrap());
    }
    println!(
        "parse only: {:.1} µs/manifest",
        per_iter(start.elapsed(), n)
    );

    let bin = root.join("target/release/lockdown-agent");
    if !bin.exists() {
        println!(
            "(build the release binary for the process comparison: cargo build --release -p lockdown-agent)"
        );
        return;
    }
    let runs = 50;
    let time = |cmd: &mut dyn FnMut() -> Command| {
        let start = Instant::now();
        for _ in 0..runs {
            let out = cmd().output().unwrap();
            black_box(out);
        }
        per_iter(start.elapsed(), runs) / 1000.0
    };
    let dir = root.join("tests/data/kubeadm/v1.31");
    let check = time(&mut || {
        let mut c = Command::new(&bin);
        c.args(["--config", "/dev/null", "check", "--format", "json"])
            .arg(&dir);
        c
    });
    let python = time(&mut || {
        let mut c = Command::new(if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        });
        c.args(["-c", "pass"]);
        c
    });
    println!("lockdown-agent check (4 manifests, json): {check:.2} ms/run over {runs}");
    println!("python3 -c pass (interpreter start-up):   {python:.2} ms/run over {runs}");
    println!("ratio check / python start-up: {:.2}", check / python);
}
