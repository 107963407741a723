//! The Debian packages, the systemd units they install and the DaemonSet alternative, built
//! and inspected: `systemd/package-deb` run on the test build's binaries, the packages'
//! metadata and contents checked, the units verified by `systemd-analyze verify` inside the
//! unpacked packages, their sandboxing scored by `systemd-analyze security --offline` against
//! the targets (agent at most 2.5, collector at most 2.0), and the packaged configs loaded.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use lockdown_e2e::bin;

struct Built {
    _dir: tempfile::TempDir,
    agent: PathBuf,
    collector: PathBuf,
    /// Both packages unpacked, plus the distribution's own units (for `verify --root`).
    root: PathBuf,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn build() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let bins = bin("lockdown-agent").parent().unwrap().to_path_buf();
    bin("lockdown-collector");
    let out = run(Command::new(workspace().join("systemd/package-deb"))
        .env("DEB_COMPRESSION", "none") // debug binaries are large; xz would take a minute
        .arg(&bins)
        .arg(dir.path().join("debs")));
    let debs: Vec<PathBuf> = out.lines().map(PathBuf::from).collect();
    assert_eq!(debs.len(), 2, "{out}");
    let root = dir.path().join("root");
    for deb in &debs {
        run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root));
    }
    // What `systemd-analyze verify --root` needs besides our units: the distribution's units
    // (sysinit.target, ...) and /bin/kill for ExecReload=.
    run(Command::new("cp")
        .args(["-r", "/usr/lib/systemd/system/."])
        .arg(root.join("usr/lib/systemd/system")));
    fs::copy("/bin/kill", root.join("usr/bin/kill")).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    Built {
        agent: debs[0].clone(),
        collector: debs[1].clone(),
        root,
        _dir: dir,
    }
}

fn field(deb: &Path, name: &str) -> String {
    run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_string()
}

fn verify(root: &Path, units: &[&str]) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .expect("systemd-analyze (package systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "verify {units:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The overall exposure `systemd-analyze security --offline=true` gives a unit.
fn exposure(root: &Path, unit: &str) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(format!("--root={}", root.display()))
        .arg(unit)
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure for {unit}: {out:?}"));
    let value = line
        .rsplit(':')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let v: f64 = value.parse().unwrap();
    println!("{unit}: exposure {v}");
    v
}

#[test]
fn packages_have_their_metadata_files_and_modes() {
    let b = build();
    let version = env!("CARGO_PKG_VERSION");
    for (deb, pkg) in [
        (&b.agent, "lockdown-agent"),
        (&b.collector, "lockdown-collector"),
    ] {
        assert_eq!(field(deb, "Package"), pkg);
        assert_eq!(field(deb, "Version"), version);
        let depends = field(deb, "Depends");
        assert!(
            depends.contains("libc6 (>= 2.") && depends.contains("systemd"),
            "{depends}"
        );
    }
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&b.agent));
    for (mode, path) in [
        ("drwxr-xr-x", "./"),
        ("-rwxr-xr-x", "./usr/bin/lockdown-agent"),
        (
            "-rw-r--r--",
            "./usr/lib/systemd/system/lockdown-agent.service",
        ),
        ("-rw-r--r--", "./etc/kube-lockdown/agent.yaml"),
        ("-rw-r--r--", "./usr/lib/sysusers.d/kube-lockdown.conf"),
        (
            "-rw-r--r--",
            "./usr/share/doc/lockdown-agent/enforce.conf.example",
        ),
        ("drwx------", "./var/lib/kube-lockdown/"),
    ] {
        assert!(
            listing.lines().any(|l| l.starts_with(mode)
                && l.contains(" root/root ")
                && l.ends_with(&format!(" {path}"))),
            "{mode} {path} not in:\n{listing}"
        );
    }
    // The drop-in is shipped as an example, never active by default.
    assert!(!listing.contains("lockdown-agent.service.d"));
    // Conffiles: the configs survive upgrades and are asked about when changed.
    let info = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&b.agent)
        .arg("conffiles"));
    assert_eq!(info.trim(), "/etc/kube-lockdown/agent.yaml");
    let info = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&b.collector)
        .arg("conffiles"));
    assert_eq!(info.trim(), "/etc/kube-lockdown/collector.yaml");
    // Maintainer scripts are valid sh, and the agent's creates its user.
    for deb in [&b.agent, &b.collector] {
        for script in ["postinst", "prerm", "postrm"] {
            let text = run(Command::new("dpkg-deb").arg("-I").arg(deb).arg(script));
            let out = Command::new("sh")
                .args(["-n", "-c", &text])
                .output()
                .unwrap();
            assert!(out.status.success(), "{script}: {out:?}");
        }
    }
    let postinst = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&b.agent)
        .arg("postinst"));
    assert!(postinst.contains("systemd-sysusers kube-lockdown.conf"));
    let sysusers =
        fs::read_to_string(b.root.join("usr/lib/sysusers.d/kube-lockdown.conf")).unwrap();
    assert!(sysusers.contains("u kube-lockdown "), "{sysusers}");
}

#[test]
fn units_verify_and_their_exposure_meets_the_targets() {
    let b = build();
    verify(
        &b.root,
        &["lockdown-agent.service", "lockdown-collector.service"],
    );
    let agent = exposure(&b.root, "lockdown-agent.service");
    let collector = exposure(&b.root, "lockdown-collector.service");
    assert!(agent <= 2.5, "agent exposure {agent}");
    assert!(collector <= 2.0, "collector exposure {collector}");
    // With the enforce drop-in installed as documented.
    let dropin = b.root.join("etc/systemd/system/lockdown-agent.service.d");
    fs::create_dir_all(&dropin).unwrap();
    fs::copy(
        b.root
            .join("usr/share/doc/lockdown-agent/enforce.conf.example"),
        dropin.join("enforce.conf"),
    )
    .unwrap();
    verify(&b.root, &["lockdown-agent.service"]);
    let enforce = exposure(&b.root, "lockdown-agent.service");
    assert!(enforce <= 2.5, "agent exposure with enforce {enforce}");
    assert!(enforce >= agent, "enforce grants more, not less");
}

#[test]
fn packaged_configs_load() {
    let b = build();
    let agent = b.root.join("etc/kube-lockdown/agent.yaml");
    run(Command::new(bin("lockdown-agent"))
        .arg("--config")
        .arg(&agent)
        .arg("rules"));
    let cfg = lockdown_collector::config::Config::load(
        &b.root.join("etc/kube-lockdown/collector.yaml"),
        true,
        None,
    )
    .unwrap();
    assert!(
        matches!(&cfg.database, lockdown_collector::config::Database::Sqlite(p)
            if p == Path::new("/var/lib/kube-lockdown-collector/events.db")),
        "{}",
        cfg.database
    );
    // The credentials the unit loads are the files the config reads.
    let unit = fs::read_to_string(
        b.root
            .join("usr/lib/systemd/system/lockdown-collector.service"),
    )
    .unwrap();
    let config = fs::read_to_string(b.root.join("etc/kube-lockdown/collector.yaml")).unwrap();
    for name in ["collector.crt", "collector.key", "ca.crt"] {
        assert!(unit.contains(&format!("LoadCredential={name}:")), "{name}");
        assert!(
            config.contains(&format!(
                "/run/credentials/lockdown-collector.service/{name}"
            )),
            "{name}"
        );
    }
}

#[test]
fn the_daemonset_is_least_privilege_and_its_config_loads() {
    let text = fs::read_to_string(workspace().join("agent/deploy/daemonset.yaml")).unwrap();
    let docs: Vec<serde_json::Value> = text
        .split("\n---\n")
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["DAC_READ_SEARCH"])
    );
    assert!(sc.get("privileged").is_none_or(|p| p == false));
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod.get(key).is_none_or(|v| v == false), "{key}");
    }
    // Every host path is read-only but the agent's own state.
    for m in c["volumeMounts"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let ro = m["readOnly"] == true;
        assert_eq!(ro, name != "state", "mount {name}");
    }
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.yaml");
    fs::write(&cfg, cm["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    run(Command::new(bin("lockdown-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("rules"));
}

/// The `Exec*=` command lines of a unit file, split into words.
fn exec_lines(unit: &str) -> Vec<(String, Vec<String>)> {
    unit.lines()
        .filter_map(|l| {
            let (key, value) = l.split_once('=')?;
            key.starts_with("Exec").then(|| {
                (
                    key.to_string(),
                    value.split_whitespace().map(str::to_string).collect(),
                )
            })
        })
        .collect()
}

#[test]
fn the_units_command_lines_are_ones_the_binaries_and_the_system_accept() {
    // Issue 15 (1): the collector's unit ran `lockdown-collector --config ... serve`, which the
    // CLI refuses ("unexpected argument '--config'"): a restart loop. (5): ExecReload= used
    // /bin/kill, which comes from procps, a package nothing depended on. On the commit before
    // the fix the first assertion failed for the collector.
    let b = build();
    let dir = tempfile::tempdir().unwrap();
    for (deb, pkg) in [
        (&b.agent, "lockdown-agent"),
        (&b.collector, "lockdown-collector"),
    ] {
        let unit = fs::read_to_string(workspace().join(format!("systemd/{pkg}.service"))).unwrap();
        let depends = field(deb, "Depends");
        for (key, words) in exec_lines(&unit) {
            let exe = &words[0];
            if exe == &format!("/usr/bin/{pkg}") {
                // Our own command line, with a config that does not exist: the binary must
                // get as far as reading it (exit 2 naming it), not stop at its arguments.
                let missing = dir.path().join("missing.yaml");
                let args: Vec<String> = words[1..]
                    .iter()
                    .map(|w| {
                        if w.starts_with("/etc/kube-lockdown/") {
                            missing.display().to_string()
                        } else {
                            w.clone()
                        }
                    })
                    .collect();
                let out = Command::new(bin(pkg)).args(&args).output().unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(
                    !stderr.contains("unexpected argument") && !stderr.contains("Usage:"),
                    "{key} {words:?}: {stderr}"
                );
                assert_eq!(out.status.code(), Some(2), "{key}: {stderr}");
                assert!(stderr.contains("missing.yaml"), "{key}: {stderr}");
            } else {
                // Anything else the unit runs comes from a package this one depends on.
                let owner = run(Command::new("dpkg").args(["-S", exe]));
                let owner = owner.split(':').next().unwrap().trim();
                assert!(
                    depends.split(',').any(|d| d.trim().starts_with(owner)),
                    "{pkg}: {key} runs {exe} from {owner}, not in Depends: {depends}"
                );
            }
        }
    }
}

#[test]
fn the_enforce_drop_in_tolerates_a_missing_manifests_directory() {
    // Issue 15 (6): ReadWritePaths=/etc/kubernetes/manifests without "-" failed the unit with
    // 226/NAMESPACE before `kubeadm init` made the directory.
    let text =
        fs::read_to_string(workspace().join("systemd/lockdown-agent.service.d/enforce.conf"))
            .unwrap();
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("ReadWritePaths="))
        .flat_map(str::split_whitespace)
        .collect();
    assert!(!paths.is_empty());
    for p in paths {
        assert!(p.starts_with('-'), "{p} fails the unit when it is missing");
    }
}

#[test]
fn the_agent_cannot_write_its_configuration_directory() {
    // Issue 15 (4): ConfigurationDirectory= made /etc/kube-lockdown writable through
    // ProtectSystem=strict, against "writes only its state directory".
    let unit = fs::read_to_string(workspace().join("systemd/lockdown-agent.service")).unwrap();
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("ConfigurationDirectory=")
                || (l.starts_with("ReadWritePaths=") && l.contains("/etc"))),
        "{unit}"
    );
}

#[test]
fn the_collector_package_does_not_enable_its_unit_on_first_install() {
    // Issue 15 (2): the collector's postinst enabled the unit on first install (deb-systemd-
    // helper's was-enabled says yes for a unit with no recorded state), before its
    // certificates exist. Its maintainer script runs here against a deb-systemd-helper that
    // records what it is asked (the real one would change this machine's units).
    let b = build();
    let script = run(Command::new("dpkg-deb")
        .arg("-I")
        .arg(&b.collector)
        .arg("postinst"));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("calls");
    for tool in ["deb-systemd-helper", "deb-systemd-invoke", "systemctl"] {
        let path = dir.path().join(tool);
        fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{tool} $*\" >>{}\nexit 0\n",
                log.display()
            ),
        )
        .unwrap();
        let mut perm = fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        fs::set_permissions(&path, perm).unwrap();
    }
    let calls = |args: &[&str]| {
        let _ = fs::remove_file(&log);
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg("postinst")
            .args(args)
            .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        fs::read_to_string(&log).unwrap_or_default()
    };
    let first = calls(&["configure", ""]);
    assert!(!first.contains("deb-systemd-helper enable"), "{first}");
    assert!(first.contains("update-state"), "{first}");
    let upgrade = calls(&["configure", "0.0.9"]);
    assert!(
        upgrade.contains("was-enabled") && upgrade.contains("deb-systemd-helper enable"),
        "an upgrade keeps an enabled collector enabled: {upgrade}"
    );
}
