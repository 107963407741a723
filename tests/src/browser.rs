//! A real headless Chromium driven through chromedriver (WebDriver over HTTP on loopback),
//! for the dashboard's tests: open a page, read the rendered DOM, type, click, and take a
//! screenshot. Chromium runs with a new profile and without its background traffic (the
//! machine's network is closed).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::collector::free_addr;
use crate::node::WAIT;

/// A Chromium session.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

/// One HTTP/1.1 exchange on a fresh connection: the status and the body (read to its
/// Content-Length, or to the end of the connection).
fn exchange(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("chromedriver answers");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse::<usize>().ok();
        }
        if k.eq_ignore_ascii_case("transfer-encoding") && v.to_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let mut out = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            out.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        out.resize(n, 0);
        r.read_exact(&mut out).unwrap();
    } else {
        r.read_to_end(&mut out).unwrap();
    }
    (status, serde_json::from_slice(&out).unwrap_or(Value::Null))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a window of 1280×900.
    pub fn start() -> Browser {
        Browser::with_window(1280, 900)
    }

    /// Starts chromedriver and a headless Chromium with a window of `width`×`height`.
    pub fn with_window(width: u32, height: u32) -> Browser {
        let addr = free_addr();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is installed");
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver does not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The collector's certificate is of the test's own CA, which this new profile
            // does not trust; the tests check who may look, not the browser's trust store.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args},
        }}});
        let (status, v) = exchange(addr, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "chromedriver refused the session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            addr,
            session,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}/{what}", self.session);
        let (status, v) = exchange(self.addr, method, &path, body.as_ref());
        assert_eq!(status, 200, "{method} {what}: {v}");
        v["value"].clone()
    }

    /// Sends every request of the page with these headers (DevTools' Network domain), as
    /// a proxy in front of the dashboard would.
    pub fn headers(&self, headers: &[(&str, &str)]) {
        let map: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        for (cmd, params) in [
            ("Network.enable", json!({})),
            ("Network.setExtraHTTPHeaders", json!({"headers": map})),
        ] {
            self.call(
                "POST",
                "goog/cdp/execute",
                Some(json!({"cmd": cmd, "params": params})),
            );
        }
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.call("POST", "url", Some(json!({"url": url})));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page; its result.
    pub fn run(&self, script: &str, args: Value) -> Value {
        self.call(
            "POST",
            "execute/sync",
            Some(json!({"script": script, "args": args})),
        )
    }

    /// The page's text content of what `selector` selects first ("" when nothing).
    pub fn text(&self, selector: &str) -> String {
        self.run(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            json!([selector]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Waits (at most [`WAIT`]) until `script` returns true in the page.
    pub fn wait_for(&self, script: &str, what: &str) {
        let deadline = Instant::now() + WAIT;
        while self.run(script, json!([])) != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "{what}: not seen in the page:\n{}",
                self.text("main")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sets the value of the form field `selector`.
    pub fn fill(&self, selector: &str, value: &str) {
        let done = self.run(
            "const e = document.querySelector(arguments[0]); if (!e) return false; e.value = arguments[1]; return true;",
            json!([selector, value]),
        );
        assert_eq!(done, Value::Bool(true), "no field {selector}");
    }

    /// Clicks what `selector` selects, as a user would (WebDriver's element click).
    pub fn click(&self, selector: &str) {
        let found = self.call(
            "POST",
            "element",
            Some(json!({"using": "css selector", "value": selector})),
        );
        let id = found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {selector}"))
            .to_string();
        self.call("POST", &format!("element/{id}/click"), Some(json!({})));
    }

    /// Presses and releases each key in turn, as a keyboard would (WebDriver key actions):
    /// `"\u{E004}"` is Tab, `"\u{E007}"` Enter.
    pub fn keys(&self, keys: &[&str]) {
        let actions: Vec<Value> = keys
            .iter()
            .flat_map(|k| {
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        self.call(
            "POST",
            "actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        );
    }

    /// The page's address now.
    pub fn url(&self) -> String {
        self.call("GET", "url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.call("GET", "screenshot", None);
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(|| {
            exchange(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            )
        });
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// An HTTPS request to the dashboard at `addr` (certificate checked against `ca`), with a
/// client certificate when `client` names one (`(cert, key)` PEM files): the status, the
/// headers (lower-case names) and the body.
pub fn https(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    request: &str,
) -> (u16, Vec<(String, String)>, String) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    // The server closes after answering (the request says `Connection: close`); a peer
    // that ends TLS without close_notify still gave everything before.
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}
