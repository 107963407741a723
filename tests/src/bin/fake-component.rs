//! A stand-in for a control-plane component, run by the kubelet double (`kubelet.rs`).
//!
//! It does what matters to the fixer's health gate, and nothing else:
//! - it refuses to start, like the real one, when its flags are not what its version
//!   accepts: a flag, admission plugin or feature gate the version removed or does not have
//!   yet (from the agent's catalogue), a positional argument or a flag without its value;
//! - it also refuses the argv words a test names in `FAKE_REFUSE` (a fix the test wants to
//!   fail);
//! - it serves its probe paths (`FAKE_SERVE`: `scheme:port` entries, `FAKE_PATHS`) on
//!   127.0.0.1, over TLS with a throwaway certificate for `https`, answering 200, or 401
//!   to every request when `--anonymous-auth=false` (the kubelet's probes send no
//!   credentials).
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
use lockdown_agent::rules::catalogue::Existence;

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
        let tls = (scheme == "https").then(tls_config);
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
        })
        .collect();
    Flags::parse(args, &|name| cat.kind(c, name))
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
        if let e @ (Existence::Removed(_) | Existence::NotYet(_)) = cat.flag_exists(c, &u.name, v) {
            return Err(format!("unknown flag: --{} ({e:?})", u.name));
        }
    }
    for list in ["enable-admission-plugins", "disable-admission-plugins"] {
        for item in flags.list(list).unwrap_or_default() {
            if let e @ (Existence::Removed(_) | Existence::NotYet(_)) =
                cat.item_exists(c, list, &item, v)
            {
                return Err(format!("unknown admission plugin {item} ({e:?})"));
            }
        }
    }
    for (gate, _) in flags.map("feature-gates").unwrap_or_default() {
        if let e @ (Existence::Removed(_) | Existence::NotYet(_)) =
            cat.item_exists(c, "feature-gates", &gate, v)
        {
            return Err(format!("unrecognized feature gate: {gate} ({e:?})"));
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
    } else if paths.iter().any(|p| p == path) {
        (200, "OK")
    } else {
        (404, "Not Found")
    };
    let body = format!("{text}\n");
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {text}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn tls_config() -> Arc<rustls::ServerConfig> {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    Arc::new(cfg)
}
