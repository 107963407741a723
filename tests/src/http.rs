//! A plain HTTP/1.0 GET for the tests' look at real servers (Alertmanager, Prometheus, the
//! collector's metrics): HTTP/1.0, so the answer is never chunked.

use std::io::{Read, Write};
use std::net::SocketAddr;

/// `GET path` on `addr`: the status and the body, or `None` when nothing answers.
pub fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}
