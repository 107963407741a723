//! The fleet dashboard, on a listener of its own (`dashboard.listen`, off by default):
//! server-rendered pages of what the store holds (`view`), a live tail of events as
//! server-sent events, and the exceptions form. Nothing is fetched from anywhere else: the
//! stylesheet and the one small script are in the binary.
//!
//! Who may look: with TLS (the collector's certificate), every request authenticates, by a
//! client certificate of a reader (an admin's may change exceptions) or a bearer token from
//! `dashboard.token_file` (`admin_token_file` for changes), for a proxy that authenticates
//! people in front of it. Without TLS (the plaintext loopback mode) the dashboard is plain
//! HTTP on loopback, open to the machine as the readers' API is, and answers only to a
//! loopback host name (a page of another site that resolves its own name to 127.0.0.1
//! cannot read it).
//!
//! Every change is a POST with a CSRF token (an HMAC of who is asking, under a key made at
//! start) from a page of the same origin. Every response carries a strict
//! Content-Security-Policy: scripts and styles from the dashboard only, no inline code, no
//! frames.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use askama::Template;
use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use hmac::{KeyInit, Mac};

use super::{Shared, auth};
use crate::config::DashboardConfig;
use crate::posture::{self, NodeState};
use crate::store::{EventStore, Filter, FindingQuery, SEVERITIES};

pub mod view;

use view::{
    AddForm, CheckPage, ErrorPage, EventParams, EventRow, EventsPage, ExceptionsPage,
    FindingParams, FindingsPage, FleetPage, Frame, NodePage, NodeParams, NodesPage, Standing,
};

/// Most connections at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take for its TLS handshake or its request's head.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Largest request body (a form).
const MAX_BODY: usize = 64 << 10;
/// Event kinds that are a fix's outcome.
const FIX_OUTCOMES: [&str; 3] = ["fix_verified", "fix_rolled_back", "fix_quarantined"];
/// The newest events a page lists.
const RECENT_EVENTS: usize = 100;
/// What every response says the browser may do.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Who is asking.
#[derive(Debug, Clone)]
struct Who {
    /// The certificate's name, the token's user, or "loopback".
    name: String,
    /// May add and remove exceptions.
    admin: bool,
}

/// What a connection's client certificate proved (TLS only).
#[derive(Clone)]
struct Peer(Option<Who>);

struct Dash {
    shared: Arc<Shared>,
    cfg: DashboardConfig,
    /// Keys CSRF tokens; made at start, so a form outlives no restart.
    csrf_key: [u8; 32],
    /// Plain HTTP on loopback (no TLS).
    plain: bool,
}

/// Serves the dashboard until the collector stops.
pub(super) async fn serve(shared: Arc<Shared>, cfg: DashboardConfig) -> Result<(), String> {
    let listen = cfg.listen;
    let tls = match &shared.cfg.tls {
        Some(t) => Some(acceptor(t)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("dashboard: cannot listen on {listen}: {e}"))?;
    let mut csrf_key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut csrf_key))
        .map_err(|e| format!("dashboard: cannot read /dev/urandom: {e}"))?;
    let dash = Arc::new(Dash {
        plain: tls.is_none(),
        shared: Arc::clone(&shared),
        cfg,
        csrf_key,
    });
    let app = router(Arc::clone(&dash));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut stopping = shared.stopping.subscribe();
    tracing::info!(%listen, tls = !dash.plain, "dashboard serving");
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.map_err(|e| e.to_string())?,
            () = stopped(&mut stopping) => return Ok(()),
        };
        let (tcp, remote) = tokio::select! {
            a = listener.accept() => match a {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "dashboard: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut stopping) => return Ok(()),
        };
        let (app, tls, dash) = (app.clone(), tls.clone(), Arc::clone(&dash));
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => connection(tcp, app.layer(axum::Extension(Peer(None)))).await,
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "dashboard: TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let certs = stream.get_ref().1.peer_certificates();
                    let s = &dash.shared;
                    let who = auth::may_read(&s.cfg, s.split_cas.as_ref(), certs).then(|| {
                        match auth::admin_name(&s.cfg, certs) {
                            Some(name) => Who { name, admin: true },
                            None => Who {
                                name: certificate_name(&s.cfg, certs),
                                admin: false,
                            },
                        }
                    });
                    connection(stream, app.layer(axum::Extension(Peer(who)))).await;
                }
            }
        });
    }
}

/// Resolves once the collector starts to stop (or its stop signal is gone, which means the
/// same).
async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}

/// The reader name a certificate is valid for, to show who is looking (a certificate of a
/// separate reader CA may carry none of them).
fn certificate_name(cfg: &crate::config::Config, certs: auth::PeerCerts<'_>) -> String {
    (cfg.readers.iter())
        .find(|r| auth::cert_names_match(certs, r))
        .cloned()
        .unwrap_or_else(|| "a reader certificate".into())
}

async fn connection<S>(io: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}

/// A TLS acceptor with the collector's certificate that asks for, but does not require, a
/// client certificate of the agents' or readers' CA (a bearer token may stand in for one).
fn acceptor(tls: &crate::config::Tls) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| format!("dashboard: cannot read {}: {e}", p.display()))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(&tls.cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("dashboard: {}: {e}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&tls.key)?)
        .map_err(|e| format!("dashboard: {}: {e}", tls.key.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in std::iter::once(&tls.client_ca).chain(tls.reader_ca.as_ref()) {
        for der in CertificateDer::pem_slice_iter(&read(ca)?) {
            let der = der.map_err(|e| format!("dashboard: {}: {e}", ca.display()))?;
            roots
                .add(der)
                .map_err(|e| format!("dashboard: {}: {e}", ca.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| format!("dashboard: client CA: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("dashboard: TLS: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("dashboard: {}: {e}", tls.cert.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

fn router(dash: Arc<Dash>) -> Router {
    Router::new()
        .route("/", get(fleet))
        .route("/findings", get(findings))
        .route("/checks/{rule}", get(check))
        .route("/nodes", get(nodes))
        .route("/nodes/{node}", get(node))
        .route("/events", get(events))
        .route("/events/stream", get(stream))
        .route("/exceptions", get(exceptions).post(add_exception))
        .route("/exceptions/{id}/remove", post(remove_exception))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&dash),
            guard,
        ))
        .with_state(dash)
}

/// Authenticates every request, refuses a change from another site, and puts the security
/// headers on every response.
async fn guard(State(dash): State<Arc<Dash>>, mut req: Request, next: Next) -> Response {
    let mut res = match dash.admit(&req) {
        Ok(who) => {
            req.extensions_mut().insert(who);
            next.run(req).await
        }
        Err(refused) => refused.into_response(),
    };
    let h = res.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "same-origin",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if !dash.plain {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    res
}

impl Dash {
    /// Who the request is, or the response that refuses it.
    fn admit(&self, req: &Request) -> Result<Who, Refusal> {
        let headers = req.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let who = if self.plain {
            if !loopback_host(host) {
                return Err(refuse(
                    StatusCode::MISDIRECTED_REQUEST,
                    "This dashboard answers to a loopback address or localhost only.",
                ));
            }
            Who {
                name: "loopback".into(),
                admin: true,
            }
        } else if let Some(who) = req.extensions().get::<Peer>().and_then(|p| p.0.clone()) {
            who
        } else {
            let bearer = headers
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim);
            let user = || {
                headers
                    .get("x-forwarded-user")
                    .and_then(|h| h.to_str().ok())
                    .map(|u| clip(u, 128))
                    .filter(|u| !u.is_empty())
            };
            let token = |t: &Option<crate::config::Secret>| matches!((bearer, t), (Some(b), Some(t)) if same(b.as_bytes(), t.0.as_bytes()));
            if token(&self.cfg.admin_token) {
                Who {
                    name: user().map_or("admin token".into(), |u| format!("{u} (admin token)")),
                    admin: true,
                }
            } else if token(&self.cfg.token) {
                Who {
                    name: user().map_or("token".into(), |u| format!("{u} (token)")),
                    admin: false,
                }
            } else {
                tracing::warn!(target: "audit", "dashboard: a request without a reader's certificate or a valid token");
                return Err(refuse(
                    StatusCode::UNAUTHORIZED,
                    "The dashboard needs a reader's client certificate or a bearer token.",
                ));
            }
        };
        if !matches!(*req.method(), Method::GET | Method::HEAD) && !same_origin(headers, host) {
            let get = |name: &str| {
                headers
                    .get(name)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
            };
            tracing::warn!(target: "audit", who = who.name, host, origin = get("origin"), site = get("sec-fetch-site"), "dashboard: a change from another site refused");
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "A change must come from the dashboard's own pages.",
            ));
        }
        Ok(who)
    }

    /// The CSRF token of `who`'s forms.
    fn csrf(&self, who: &Who) -> String {
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.csrf_key).expect("any key length");
        mac.update(who.name.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The CSRF token for an admin's forms, or "" (no forms) for a reader.
    fn forms(&self, who: &Who) -> String {
        if who.admin {
            self.csrf(who)
        } else {
            String::new()
        }
    }

    /// Whether a change may go on: an admin, with the token of its own forms.
    fn may_change(&self, who: &Who, csrf: &str) -> Result<(), Refusal> {
        if !who.admin {
            tracing::warn!(target: "audit", who = who.name, "dashboard: an exception change from a reader that is not an admin");
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "Changing exceptions needs an admin.",
            ));
        }
        if !same(csrf.as_bytes(), self.csrf(who).as_bytes()) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "The form has expired (the collector restarted, or it came from elsewhere); reload the page and try again.",
            ));
        }
        Ok(())
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn EventStore) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, Refusal> {
        super::read(&self.shared, f).await.map_err(|status| {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("The store cannot be read: {}", status.message()),
            )
        })
    }

    /// Every node, with the expected ones never heard from, and its state now.
    async fn standings(&self) -> Result<Vec<Standing>, Refusal> {
        let nodes = self.read(|s| s.nodes()).await?;
        let now = SystemTime::now();
        let cfg = &self.shared.cfg;
        let mut out: Vec<Standing> = nodes
            .into_iter()
            .map(|info| Standing {
                state: NodeState::of(&info.last_seen, now, cfg.stale_after),
                info,
            })
            .collect();
        for e in &cfg.expected_nodes {
            if !out.iter().any(|s| &s.info.node == e) {
                out.push(Standing {
                    info: crate::store::NodeInfo {
                        node: e.clone(),
                        ..Default::default()
                    },
                    state: NodeState::Missing,
                });
            }
        }
        out.sort_by(|a, b| a.info.node.cmp(&b.info.node));
        Ok(out)
    }
}

/// Whether `host` (a Host header) names the loopback interface.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a change request comes from a page of this origin: a browser's `Sec-Fetch-Site`
/// says so (no page can set it), else its `Origin`. A client that sends neither is no
/// browser, and has no ambient credentials for another site to ride on.
fn same_origin(headers: &HeaderMap, host: &str) -> bool {
    let get = |name: &str| headers.get(name).and_then(|h| h.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    match get("origin") {
        None => true,
        Some(origin) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
    }
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// At most `max` characters, without control characters.
fn clip(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// A request refused, or a page that cannot be shown: its status and what to tell.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    message: String,
}

/// Refuses with `status`, saying `message`.
fn refuse(status: StatusCode, message: &str) -> Refusal {
    Refusal {
        status,
        message: message.to_string(),
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut r = page_with(
            self.status,
            ErrorPage {
                frame: Frame::new(self.status.canonical_reason().unwrap_or("Error"), "", ""),
                message: self.message,
            },
        );
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

fn page(t: impl Template) -> Response {
    page_with(StatusCode::OK, t)
}

fn page_with(status: StatusCode, t: impl Template) -> Response {
    match t.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the page cannot be rendered: {e}"),
        )
            .into_response(),
    }
}

type Shown = Result<Response, Refusal>;

fn either(r: Shown) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn fleet(
    State(dash): State<Arc<Dash>>,
    axum::Extension(who): axum::Extension<Who>,
) -> Response {
    either(fleet_page(&dash, &who).await)
}

async fn fleet_page(dash: &Dash, who: &Who) -> Shown {
    let at = super::now();
    let (nodes, counts, fixes) = dash
        .read(move |s| {
            Ok((
                s.nodes()?,
                s.finding_counts(&at)?,
                s.recent(&Filter::default(), &FIX_OUTCOMES, 10)?,
            ))
        })
        .await?;
    let (fleet, clusters) = super::summarize(&dash.shared.cfg, nodes, &counts);
    Ok(page(FleetPage::new(
        Frame::new("Fleet", "fleet", &who.name),
        &fleet,
        &clusters,
        &fixes,
    )))
}

async fn findings(
    State(dash): State<Arc<Dash>>,
    axum::Extension(who): axum::Extension<Who>,
    params: Result<Query<FindingParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    either(findings_page(&dash, &who, params).await)
}

fn bad_query(e: impl std::fmt::Display) -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        &format!("The address is not one the dashboard makes: {e}"),
    )
}

async fn findings_page(
    dash: &Dash,
    who: &Who,
    params: Result<Query<FindingParams>, axum::extract::rejection::QueryRejection>,
) -> Shown {
    let Query(params) = params.map_err(bad_query)?;
    if !params.severity.is_empty() && !SEVERITIES.contains(&params.severity.as_str()) {
        return Err(bad_query(format!(
            "{:?} is not a severity",
            params.severity
        )));
    }
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let q = FindingQuery {
        cluster: opt(&params.cluster),
        node: opt(&params.node),
        rule_id: opt(&params.rule),
        cis: opt(params.cis.trim_end_matches('.')),
        excepted: match params.excepted.as_str() {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        },
        now: super::now(),
        ..Default::default()
    };
    let rows = dash
        .read(move |s| crate::store::all_findings(s, &q))
        .await?;
    Ok(page(FindingsPage::new(
        Frame::new("Findings", "findings", &who.name),
        params,
        rows,
    )))
}

async fn check(
    State(dash): State<Arc<Dash>>,
    axum::Extension(who): axum::Extension<Who>,
    Path(rule): Path<String>,
) -> Response {
    let (q, filter) = (
        FindingQuery {
            rule_id: Some(rule.clone()),
            now: super::now(),
            ..Default::default()
        },
        Filter {
            kind: Some("finding_raised".into()),
            rule_id: Some(rule.clone()),
            ..Default::default()
        },
    );
    let read = dash
        .read(move |s| {
            Ok((
                crate::store::all_findings(s, &q)?,
                s.recent(&filter, &[], 1)?,
            ))
        })
        .await;
    match read {
        Ok((rows, raised)) => page(CheckPage::new(
            Frame::new(format!("Check {rule}"), "findings", &who.name),
            rule,
            rows,
            raised.first(),
            dash.forms(&who),
        )),
        Err(r) => r.into_response(),
    }
}

async fn nodes(
    State(dash): State<Arc<Dash>>,
    axum::Extension(who): axum::Extension<Who>,
    params: Result<Query<NodeParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    either(nodes_page(&dash, &who, params).await)
}

async fn nodes_page(
    dash: &Dash,
    who: &Who,
    params: Result<Query<NodeParams>, axum::extract::rejection::QueryRejection>,
) -> Shown {
    let Query(params) = params.map_err(bad_query)?;
    let standings = dash.standings().await?;
    let cis = if params.section.is_empty() {
        params.check.clone()
    } else {
        params.section.clone()
    };
    // A node's result on a section or check, as the fleet page counts it.
    let mut results = std::collections::HashMap::new();
    if !cis.is_empty() && !params.result.is_empty() {
        let at = super::now();
        let counts = dash.read(move |s| s.finding_counts(&at)).await?;
        let cfg = &dash.shared.cfg;
        let nodes = standings.iter().map(|s| s.info.clone()).collect();
        let members = posture::members(
            nodes,
            &cfg.expected_nodes,
            SystemTime::now(),
            cfg.stale_after,
        );
        let by_section = !params.section.is_empty();
        let mut by_node: std::collections::HashMap<&str, Vec<crate::store::FindingCount>> =
            std::collections::HashMap::new();
        for c in &counts {
            by_node.entry(&c.node).or_default().push(c.clone());
        }
        for m in &members {
            let mine = by_node.get(m.node.as_str()).map_or(&[][..], Vec::as_slice);
            let (p, _) = posture::summarize(std::slice::from_ref(m), mine);
            let list = if by_section { &p.sections } else { &p.cis };
            let result = match list.iter().find(|c| c.cis == cis) {
                Some(c) if c.fail > 0 => "fail",
                Some(c) if c.pass > 0 => "pass",
                _ => "unknown",
            };
            results.insert(m.node.clone(), result);
        }
    }
    Ok(page(NodesPage::new(
        Frame::new("Nodes", "nodes", &who.name),
        &params,
        standings,
        |node| results.get(node).copied().unwrap_or("unknown"),
    )))
}

async fn node(
    State(dash): State<Arc<Dash>>,
    axum::Extension(who): axum::Extension<Who>,
    Path(name): Path<String>,
) -> Response {
    either(node_page(&dash, &who, name).await)
}

async fn node_page(dash: &Dash, who: &Who, name: String) -> Shown {
    let standing = dash
        .standings()
        .await?
        .into_iter()
        .find(|s| s.info.node == name)
        .ok_or_else(|| {
            refuse(
                StatusCode::NOT_FOUND,
                &format!("No node is called {name:?}."),
            )
        })?;
    let (q, filter) = (
        FindingQuery {
            node: Some(name.clone()),
            now: super::now(),
            ..Default::default()
        },
        Filter {
            node: Some(name.clone()),
            ..Default::default()
        },
    );
    let (findings, events, fixes) = dash
        .read(move |s| {
            Ok((
                crate::store::all_findings(s, &q)?,
                s.recent(&filter, &[], 50)?,
                s.recent(
                    &filter,
                    &[
                        "fix_applied",
                        "fix_verified",
                        "fix_rolled_back",
                        "fix_quarantined",
                        "fix_skipped",
                    ],
                    20,
                )?,
            ))
        })
        .await?;
    let connected = dash
        .shared
        .connected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&name);
    Ok(page(NodePage::new(
        Frame::new(format!("Node {name}"), "nodes", &who.name),
        standing,
        connected,
        findings,
        &events,
        &fixes,
    )))
}

/// The store's filter for events, checked.
fn event_filter(p: &EventParams) -> Result<Filter, Refusal> {
    if !p.severity.is_empty() && !SEVERITIES.contains(&p.severity.as_str()) {
        return Err(bad_query(format!("{:?} is not a severity", p.severity)));
    }
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(Filter {
        node: opt(&p.node),
        kind: opt(&p.kind),
        min_severity: opt(&p.severity),
        rule_id: opt(&p.rule),
        ..Default::default()
    })
}

async fn events(
    State(dash): State<Arc<Dash>>,
    axum::Extension(who): axum::Extension<Who>,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let shown = async {
        let Query(params) = params.map_err(bad_query)?;
        let filter = event_filter(&params)?;
        let (events, max) = dash
            .read(move |s| Ok((s.recent(&filter, &[], RECENT_EVENTS)?, s.max_cursor()?)))
            .await?;
        Ok(page(EventsPage::new(
            Frame::new("Events", "events", &who.name),
            params,
            &events,
            max,
        )))
    };
    either(shown.await)
}

/// The live tail: every stored event that matches after the cursor the browser last saw
/// (`Last-Event-ID` on a reconnect, else `after`), then each as it is committed. A
/// collector that restarts, or a store that comes back, is resumed from where it was.
async fn stream(
    State(dash): State<Arc<Dash>>,
    headers: HeaderMap,
    params: Result<Query<EventParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return bad_query(e).into_response(),
    };
    let filter = match event_filter(&params) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let after = match resume.or(params.after) {
        Some(c) => c,
        None => match dash.read(|s| s.max_cursor()).await {
            Ok(c) => c,
            Err(r) => return r.into_response(),
        },
    };
    use tokio_stream::StreamExt;
    let row = |e: crate::store::Stored| {
        SseEvent::default()
            .event("event")
            .id(e.cursor.to_string())
            .data(EventRow::of(&e).json().to_string())
    };
    let tail = super::query::tail(Arc::clone(&dash.shared), filter, after, row);
    let events = tokio_stream::wrappers::ReceiverStream::new(tail).map(|e| {
        // When the tail ends, the browser tries again in a moment, from the last cursor
        // it saw.
        Ok::<_, Infallible>(e.unwrap_or_else(|status| {
            SseEvent::default()
                .event("failure")
                .data(format!("{}; reconnecting…", status.message()))
        }))
    });
    let retry = SseEvent::default()
        .retry(Duration::from_secs(2))
        .comment("tail");
    Sse::new(tokio_stream::once(Ok(retry)).chain(events))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

async fn exceptions(
    State(dash): State<Arc<Dash>>,
    axum::Extension(who): axum::Extension<Who>,
) -> Response {
    either(exceptions_page(&dash, &who, None).await.map(page))
}

/// The exceptions page; after a refused change, with its error and the form as it was.
async fn exceptions_page(
    dash: &Dash,
    who: &Who,
    refused: Option<(String, AddForm)>,
) -> Result<ExceptionsPage, Refusal> {
    let all = dash.read(|s| s.exceptions()).await?;
    let mut p = ExceptionsPage::new(
        Frame::new("Exceptions", "exceptions", &who.name),
        all,
        &super::now(),
        dash.forms(who),
    );
    if let Some((error, form)) = refused {
        p.error = error;
        p.form = AddForm {
            csrf: String::new(),
            ..form
        };
    }
    Ok(p)
}

/// A posted form, read and allowed: `who` must be an admin, with the CSRF token of its own
/// forms.
fn change<T: HasCsrf>(
    dash: &Dash,
    who: &Who,
    form: Result<Form<T>, axum::extract::rejection::FormRejection>,
) -> Result<T, Refusal> {
    let Form(form) = form.map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            &format!("The form cannot be read: {e}"),
        )
    })?;
    dash.may_change(who, form.csrf())?;
    Ok(form)
}

/// A form that carries a CSRF token.
trait HasCsrf {
    fn csrf(&self) -> &str;
}

impl HasCsrf for AddForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl HasCsrf for RemoveForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// The HTTP status of a refused exception change.
fn change_status(status: &tonic::Status) -> StatusCode {
    match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::Unavailable | tonic::Code::Internal => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn add_exception(
    State(dash): State<Arc<Dash>>,
    axum::Extension(who): axum::Extension<Who>,
    form: Result<Form<AddForm>, axum::extract::rejection::FormRejection>,
) -> Shown {
    let form = change(&dash, &who, form)?;
    let added = match form.days.trim().parse::<u64>() {
        Ok(days) if days > 0 => {
            let request = lockdown_proto::v1::AddExceptionRequest {
                rule_id: form.rule_id.trim().to_string(),
                node: form.node.trim().to_string(),
                cluster: form.cluster.trim().to_string(),
                path: form.path.trim().to_string(),
                reason: form.reason.clone(),
                expires_in_seconds: days.saturating_mul(86_400),
                max_severity: form.max_severity.clone(),
            };
            super::exceptions::add(&dash.shared, who.name.clone(), request)
                .await
                .map_err(|s| (change_status(&s), s.message().to_string()))
        }
        _ => Err((
            StatusCode::BAD_REQUEST,
            format!("{:?} is not a number of days", form.days),
        )),
    };
    match added {
        Ok(x) => Ok(Redirect::to(&format!("/exceptions#x{}", x.id)).into_response()),
        // The page again, saying why, with the form as it was.
        Err((code, error)) => Ok(page_with(
            code,
            exceptions_page(&dash, &who, Some((error, form))).await?,
        )),
    }
}

#[derive(serde::Deserialize)]
struct RemoveForm {
    #[serde(default)]
    csrf: String,
}

async fn remove_exception(
    State(dash): State<Arc<Dash>>,
    axum::Extension(who): axum::Extension<Who>,
    Path(id): Path<u64>,
    form: Result<Form<RemoveForm>, axum::extract::rejection::FormRejection>,
) -> Shown {
    change(&dash, &who, form)?;
    super::exceptions::remove(&dash.shared, who.name.clone(), id)
        .await
        .map_err(|s| refuse(change_status(&s), s.message()))?;
    Ok(Redirect::to(&format!("/exceptions#x{id}")).into_response())
}

async fn css() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../../static/app.css"),
    )
}

async fn js() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../../static/app.js"),
    )
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "private, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn not_found() -> Response {
    refuse(StatusCode::NOT_FOUND, "There is no such page.").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_answered_in_plain_http() {
        for ok in [
            "127.0.0.1:7480",
            "localhost:7480",
            "[::1]:7480",
            "LOCALHOST",
            "127.0.0.2",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:7480",
            "10.0.0.1:7480",
            "",
            "localhost.evil.example",
            "[::2]:1",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn a_change_from_another_site_is_refused() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h, "127.0.0.1:7480"));
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:7480"));
        assert!(same_origin(&h, "127.0.0.1:7480"));
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h, "127.0.0.1:7480"));
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, "127.0.0.1:7480"));
        // A form posted under a strict referrer policy says `Origin: null`; the browser's
        // own Sec-Fetch-Site decides.
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        h.insert("origin", HeaderValue::from_static("null"));
        assert!(same_origin(&h, "127.0.0.1:7480"));
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
