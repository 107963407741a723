//! The `lockdown.v1` gRPC API: generated messages, clients and servers, and the file
//! descriptor set for server reflection.

#![allow(missing_docs, clippy::all, clippy::pedantic)] // generated code

/// `lockdown.v1`.
pub mod v1 {
    tonic::include_proto!("lockdown.v1");

    /// The encoded file descriptor set of `lockdown.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("lockdown_v1_descriptor");
}

/// Client TLS files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// CA bundle that signs the collector's certificate.
    pub ca: std::path::PathBuf,
    /// This client's certificate.
    pub cert: std::path::PathBuf,
    /// This client's key.
    pub key: std::path::PathBuf,
    /// Name to check the collector's certificate against (default: the address's host).
    pub server_name: Option<String>,
}

/// An endpoint for `address` (`https://host:port`, or `http://` for a loopback collector run
/// with `--insecure-listen-loopback`), with mutual TLS when `tls` is given. Connects lazily.
pub fn endpoint(
    address: &str,
    tls: Option<&ClientTls>,
) -> Result<tonic::transport::Endpoint, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut ep = Endpoint::from_shared(address.to_string())
        .map_err(|e| format!("{address:?} is not a collector address: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    match tls {
        Some(t) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
            };
            let mut cfg = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(&t.ca)?))
                .identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
            if let Some(name) = &t.server_name {
                cfg = cfg.domain_name(name.clone());
            }
            ep = ep
                .tls_config(cfg)
                .map_err(|e| format!("TLS setup for {address}: {e}"))?;
        }
        None if address.starts_with("https://") => {
            return Err(format!("{address} needs TLS files (ca, cert, key)"));
        }
        None => {}
    }
    Ok(ep)
}

/// `text` made safe for a terminal: control characters other than newline and tab, and the
/// Unicode bidirectional overrides, are written as escapes (`\u{1b}`). File names, flag
/// values and errors come from nodes, which may be compromised; human output passes through
/// here so that they cannot drive the reader's terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `println!` for command output: control characters from node data are escaped
/// ([`printable`]), and when stdout is a pipe whose reader has gone (`| head -1`), the process
/// ends quietly with the status of one killed by SIGPIPE (141) instead of panicking.
#[macro_export]
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let text = format!($($t)*);
        if let Err(e) = writeln!(std::io::stdout(), "{}", $crate::printable(&text)) {
            $crate::stdout_failed(e)
        }
    }};
}

/// `print!` with the same care as [`outln!`].
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let text = format!($($t)*);
        if let Err(e) = write!(std::io::stdout(), "{}", $crate::printable(&text)) {
            $crate::stdout_failed(e)
        }
    }};
}

/// Ends the process after stdout failed: 141 for a reader that went away, else 2.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    let arg0 = std::env::args().next().unwrap_or_default();
    let name = arg0.rsplit('/').next().unwrap_or_default();
    eprintln!("{name}: cannot write to stdout: {e}");
    std::process::exit(2);
}

#[cfg(test)]
mod tests {
    #[test]
    fn terminal_escapes_are_escaped_and_text_is_kept() {
        assert_eq!(super::printable("a/b.yaml\n"), "a/b.yaml\n");
        assert_eq!(
            super::printable("x\u{1b}[2Jy\r\u{202e}z"),
            "x\\u{1b}[2Jy\\u{d}\\u{202e}z"
        );
    }
}
