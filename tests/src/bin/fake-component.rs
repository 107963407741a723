//! A stand-in for a control-plane component, run by the kubelet double (`kubelet.rs`).
//!
//! It does what matters to the fixer's health gate, and nothing else:
//! - it refuses to start, like the real one, when its flags are not what its version
//!   accepts: a flag, admission plugin or feature gate the version removed or does not have
//!   yet (from its own table, [`LIFECYCLE`], written independently of the agent's
//!   catalogue), a positional argument or a flag without its value;
//! - it also refuses the argv words a test names in `FAKE_REFUSE` (a fix the test wants to
//!   fail);
//! - it serves its probe paths (`FAKE_SERVE`: `scheme:port` entries, `FAKE_PATHS`) on
//!   127.0.0.1, over TLS for `https` (with the certificate and key in `FAKE_CERT` and
//!   `FAKE_KEY`, else a throwaway one), answering 200, or 401 to every request when
//!   `--anonymous-auth=false` (the kubelet's probes send no credentials); `/api` answers as
//!   kube-apiserver does, with its JSON (`APIVersions`, or a 401 `Status`).
//!
//! Usage: `FAKE_COMPONENT=kube-scheduler FAKE_VERSION=1.31.4 FAKE_SERVE=https:10259
//! FAKE_PATHS=/healthz fake-component --flag=value ...`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use lockdown_agent::manifest::Component;
use lockdown_agent::manifest::flags::{Arg, ArgSource, Flags, parse_go_bool};
use lockdown_agent::manifest::version::Version;
use lockdown_agent::rules::Catalogue;

fn main() {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let component = Component::from_name(&env("FAKE_COMPONENT")).unwrap_or_else(|| {
        eprintln!("FAKE_COMPONENT is not a component");
        std::process::exit(2)
    });
    let version = Version::parse(&env("FAKE_VERSION"));
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = validate(component, version, &argv) {
        eprintln!("{component}: {e}");
        std::process::exit(1);
    }
    let refuse: Vec<String> = env("FAKE_REFUSE")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(w) = argv.iter().find(|w| refuse.contains(w)) {
        eprintln!("{component}: refusing {w} (test)");
        std::process::exit(1);
    }
    let cat = Catalogue::builtin();
    let flags = parse(cat, component, &argv);
    let unauthorized = flags
        .value("anonymous-auth")
        .is_some_and(|v| parse_go_bool(&v) == Some(false));
    let paths: Arc<Vec<String>> = Arc::new(
        env("FAKE_PATHS")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    );
    let mut threads = Vec::new();
    for entry in env("FAKE_SERVE").split(',').filter(|s| !s.is_empty()) {
        let (scheme, port) = entry.split_once(':').expect("scheme:port");
        let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("port")))
            .unwrap_or_else(|e| {
                eprintln!("{component}: cannot listen on {port}: {e}");
                std::process::exit(1)
            });
        let tls = (scheme == "https").then(|| tls_config(&env("FAKE_CERT"), &env("FAKE_KEY")));
        let paths = Arc::clone(&paths);
        threads.push(std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let tls = tls.clone();
                let paths = Arc::clone(&paths);
                std::thread::spawn(move || serve(conn, tls, &paths, unauthorized));
            }
        }));
    }
    eprintln!("{component}: serving {}", env("FAKE_SERVE"));
    for t in threads {
        let _ = t.join();
    }
}

fn parse(cat: &Catalogue, c: Component, argv: &[String]) -> Flags {
    let args = argv
        .iter()
        .map(|a| Arg {
            text: a.clone(),
            span: None,
            source: ArgSource::Command,
            expanded: false,
        })
        .collect();
    Flags::parse(args, &|name| cat.kind(c, name))
}

/// A minor version, `(major, minor)`: the first that accepts something.
type Since = Option<(u32, u32)>;
/// The first minor that refuses it.
type Until = Option<(u32, u32)>;

/// What each version accepts, written down independently of the agent's catalogue, so that
/// a wrong version rule there makes the component refuse the agent's fix here (issue 11).
/// From `../shared/reference/flag-lifecycle.tsv`, checked against the Kubernetes and etcd
/// CHANGELOGs and flag registrations: (component, what, first minor that accepts it, first
/// minor that refuses it). `what` is `--flag`, `plugin:Name` or `gate:Name`. What is not
/// listed is accepted.
const LIFECYCLE: &[(&str, &str, Since, Until)] = &[
    ("kube-apiserver", "--basic-auth-file", None, Some((1, 19))), // #89069
    (
        "kube-apiserver",
        "--insecure-allow-any-token",
        None,
        Some((1, 8)),
    ), // #49045
    ("kube-apiserver", "--kubelet-https", None, Some((1, 22))),   // #101178
    (
        "kube-apiserver",
        "--repair-malformed-updates",
        None,
        Some((1, 14)),
    ), // #73663
    ("kube-apiserver", "--enable-swagger-ui", None, Some((1, 24))), // #105032
    ("kube-apiserver", "--insecure-port", None, Some((1, 24))),   // #106859
    (
        "kube-apiserver",
        "--insecure-bind-address",
        None,
        Some((1, 24)),
    ), // #106859
    (
        "kube-apiserver",
        "--authentication-config",
        Some((1, 29)),
        None,
    ), // 1.29 CHANGELOG
    (
        "kube-apiserver",
        "--service-account-extend-token-expiration",
        Some((1, 19)),
        None,
    ), // #89549
    (
        "kube-apiserver",
        "--enable-admission-plugins",
        Some((1, 10)),
        None,
    ), // #58123
    (
        "kube-apiserver",
        "--disable-admission-plugins",
        Some((1, 10)),
        None,
    ), // #58123
    (
        "kube-apiserver",
        "--encryption-provider-config",
        Some((1, 13)),
        None,
    ),
    (
        "kube-apiserver",
        "--experimental-encryption-provider-config",
        None,
        Some((1, 24)),
    ),
    (
        "kube-apiserver",
        "plugin:EventRateLimit",
        Some((1, 8)),
        None,
    ), // #50925
    (
        "kube-apiserver",
        "plugin:NodeRestriction",
        Some((1, 7)),
        None,
    ),
    (
        "kube-apiserver",
        "plugin:SecurityContextDeny",
        None,
        Some((1, 30)),
    ), // #122612
    (
        "kube-apiserver",
        "plugin:PodSecurityPolicy",
        None,
        Some((1, 25)),
    ), // #109798
    (
        "kube-apiserver",
        "plugin:DenyServiceExternalIPs",
        Some((1, 21)),
        None,
    ), // #97395
    ("kube-apiserver", "plugin:PodSecurity", Some((1, 22)), None),
    (
        "kube-apiserver",
        "plugin:DenyEscalatingExec",
        None,
        Some((1, 21)),
    ), // #98669
    (
        "kube-apiserver",
        "plugin:DenyExecOnPrivileged",
        None,
        Some((1, 21)),
    ), // #98669
    (
        "kube-apiserver",
        "gate:AnonymousAuthConfigurableEndpoints",
        Some((1, 31)),
        Some((1, 37)),
    ), // #124917, #138723
    (
        "kube-apiserver",
        "gate:PodSecurity",
        Some((1, 22)),
        Some((1, 28)),
    ), // #114068
    (
        "kube-apiserver",
        "gate:AdvancedAuditing",
        Some((1, 7)),
        Some((1, 28)),
    ),
    (
        "kube-apiserver",
        "gate:StructuredAuthenticationConfiguration",
        Some((1, 29)),
        Some((1, 37)),
    ),
    (
        "kube-apiserver",
        "gate:StructuredAuthorizationConfiguration",
        Some((1, 29)),
        Some((1, 36)),
    ),
    ("kube-controller-manager", "--address", None, Some((1, 24))), // #106860
    ("kube-controller-manager", "--port", None, Some((1, 24))),    // #106860
    (
        "kube-controller-manager",
        "--bind-address",
        Some((1, 12)),
        None,
    ), // #64149
    (
        "kube-controller-manager",
        "--secure-port",
        Some((1, 12)),
        None,
    ),
    (
        "kube-controller-manager",
        "--authentication-kubeconfig",
        Some((1, 12)),
        None,
    ),
    (
        "kube-controller-manager",
        "--authorization-kubeconfig",
        Some((1, 12)),
        None,
    ),
    ("kube-scheduler", "--address", None, Some((1, 24))), // #106865
    ("kube-scheduler", "--port", None, Some((1, 24))),    // #106865
    ("kube-scheduler", "--bind-address", Some((1, 13)), None),
    (
        "etcd",
        "--experimental-initial-corrupt-check",
        Some((3, 3)),
        Some((3, 7)),
    ), // #19959
    (
        "etcd",
        "--experimental-watch-progress-notify-interval",
        Some((3, 4)),
        Some((3, 7)),
    ),
];

/// Why `what` is refused by component `c` at version `v`, if it is.
fn refused(c: Component, what: &str, v: Option<Version>) -> Option<String> {
    let v = v?.minor_pair();
    LIFECYCLE
        .iter()
        .filter(|(comp, w, ..)| *comp == c.name() && *w == what)
        .find_map(|(_, _, since, until)| match (since, until) {
            (Some(s), _) if v < *s => Some(format!("{what} does not exist before {}.{}", s.0, s.1)),
            (_, Some(u)) if v >= *u => Some(format!("{what} was removed in {}.{}", u.0, u.1)),
            _ => None,
        })
}

fn validate(c: Component, v: Option<Version>, argv: &[String]) -> Result<(), String> {
    let cat = Catalogue::builtin();
    let flags = parse(cat, c, argv);
    if let Some(&i) = flags.stray.first() {
        return Err(format!("unexpected argument {:?}", flags.args[i].text));
    }
    if let Some(name) = flags.missing_value.first() {
        return Err(format!("flag needs an argument: --{name}"));
    }
    for u in &flags.uses {
        if let Some(why) = refused(c, &format!("--{}", u.name), v) {
            return Err(format!("unknown flag: --{} ({why})", u.name));
        }
    }
    for list in ["enable-admission-plugins", "disable-admission-plugins"] {
        for item in flags.list(list).unwrap_or_default() {
            if let Some(why) = refused(c, &format!("plugin:{item}"), v) {
                return Err(format!("unknown admission plugin {item} ({why})"));
            }
        }
    }
    for (gate, _) in flags.map("feature-gates").unwrap_or_default() {
        if let Some(why) = refused(c, &format!("gate:{gate}"), v) {
            return Err(format!("unrecognized feature gate: {gate} ({why})"));
        }
    }
    Ok(())
}

fn serve(
    conn: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    paths: &[String],
    unauthorized: bool,
) {
    match tls {
        Some(cfg) => {
            let Ok(session) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            answer(rustls::StreamOwned::new(session, conn), paths, unauthorized);
        }
        None => answer(conn, paths, unauthorized),
    }
}

fn answer<S: Read + Write>(stream: S, paths: &[String], unauthorized: bool) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split(' ').nth(1).unwrap_or("/");
    let path = path.split('?').next().unwrap_or(path);
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => break,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let (code, text) = if unauthorized {
        (401, "Unauthorized")
    } else if paths.iter().any(|p| p == path) || path == "/api" {
        (200, "OK")
    } else {
        (404, "Not Found")
    };
    let body = match (path, code) {
        ("/api", 200) => {
            "{\"kind\":\"APIVersions\",\"versions\":[\"v1\"],\"serverAddressByClientCIDRs\":[]}\n"
                .to_string()
        }
        ("/api", _) => format!(
            "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"status\":\"Failure\",\"message\":\"{text}\",\"code\":{code}}}\n"
        ),
        _ => format!("{text}\n"),
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {text}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// The certificate chain and key in these PEM files, or a throwaway pair when not given.
fn tls_config(cert_file: &str, key_file: &str) -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    let (chain, key) = if cert_file.is_empty() {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed");
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![cert.der().clone()], key)
    } else {
        let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert_file)
            .expect("FAKE_CERT")
            .collect::<Result<Vec<_>, _>>()
            .expect("FAKE_CERT");
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key_file).expect("FAKE_KEY");
        (chain, key)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    Arc::new(cfg)
}
