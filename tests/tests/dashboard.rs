//! The dashboard end to end: real agents on sandbox nodes streaming to a real collector,
//! its pages opened in a real headless Chromium (Debian's chromium and chromium-driver),
//! and assertions on the rendered DOM: the fleet's numbers are the `summary` command's, an
//! insecure edit reaches the live tail without a reload (also across a collector restart)
//! and the node's page, an exception added from the page marks the finding excepted, and a
//! file name that is HTML stays text. A screenshot of each page is saved under
//! `target/dashboard-screenshots/` (the README shows copies). Who may look and change is
//! checked with a plain HTTPS client.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use lockdown_e2e::browser::{Browser, https};
use lockdown_e2e::collector::{Collector, Pki, free_addr};
use lockdown_e2e::node::Node;
use lockdown_e2e::wait_until;
use serde_json::{Value, json};

const READER_TOKEN: &str = "reader-token-0123456789abcdefghijklmnopqrstuvwxyz";
const ADMIN_TOKEN: &str = "admin-token-0123456789abcdefghijklmnopqrstuvwxyz";
/// A file name that is HTML: a page that does not escape it runs its handler.
const EVIL: &str = "<img src=x onerror=document.title='owned'>.yaml";

/// A collector with its dashboard on `dash`, readable with [`READER_TOKEN`] and changeable
/// with [`ADMIN_TOKEN`] (and the PKI's reader and admin certificates).
fn collector(pki: &Pki, dash: SocketAddr, extra: &str) -> (Collector, tempfile::TempDir) {
    let tokens = tempfile::tempdir().unwrap();
    let (reader, admin) = (tokens.path().join("reader"), tokens.path().join("admin"));
    fs::write(&reader, format!("{READER_TOKEN}\n")).unwrap();
    fs::write(&admin, format!("{ADMIN_TOKEN}\n")).unwrap();
    let col = Collector::new(
        pki,
        &format!(
            "dashboard: {{listen: {dash}, token_file: {}, admin_token_file: {}}}\n{extra}",
            reader.display(),
            admin.display()
        ),
    );
    (col, tokens)
}

fn summary(pki: &Pki, col: &Collector) -> Value {
    let out = pki
        .reader_command(col.addr, pki, &["summary", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn shots() -> PathBuf {
    // tests/ -> the workspace's target/
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots")
}

/// The fleet row of the posture table as the browser shows it: label -> number.
fn fleet_row(b: &Browser) -> Value {
    b.run(
        "const out = {};
         for (const td of document.querySelectorAll('#fleet-row td[data-count]'))
           out[td.dataset.count] = Number(td.textContent.trim());
         return out;",
        json!([]),
    )
}

/// The same numbers from the summary command.
fn summary_row(s: &Value) -> Value {
    let fleet = &s["fleet"];
    let mut out = serde_json::Map::new();
    for state in ["connected", "stale", "missing"] {
        out.insert(
            state.into(),
            fleet["nodes_by_state"][state].as_u64().unwrap_or(0).into(),
        );
    }
    for sev in ["critical", "high", "medium", "low", "info"] {
        out.insert(
            sev.into(),
            fleet["open_by_severity"][sev].as_u64().unwrap_or(0).into(),
        );
    }
    out.insert(
        "excepted".into(),
        fleet["excepted"].as_u64().unwrap_or(0).into(),
    );
    Value::Object(out)
}

/// The sections table as the browser shows it: [section, pass, fail, unknown].
fn sections_shown(b: &Browser) -> Value {
    b.run(
        "return [...document.querySelectorAll('#sections-table tbody tr')].map(tr => [
           tr.dataset.section,
           ...['pass', 'fail', 'unknown'].map(k => Number(tr.querySelector(`[data-count=${k}]`).textContent))]);",
        json!([]),
    )
}

fn sections_summary(s: &Value) -> Value {
    let list: Vec<Value> = (s["fleet"]["sections"].as_array().unwrap().iter())
        .map(|c| json!([c["cis"], c["pass"], c["fail"], c["unknown"]]))
        .collect();
    Value::Array(list)
}

#[test]
fn the_dashboard_shows_the_fleet_live_in_a_real_browser() {
    let pki = Pki::new(&["cp-1", "cp-2"]);
    let dash = free_addr();
    let (mut col, _tokens) = collector(
        &pki,
        dash,
        "nodes: {stale_after: 30s, expected: [cp-1, cp-2, cp-3]}",
    );
    let nodes: Vec<Node> = ["cp-1", "cp-2"]
        .iter()
        .map(|n| {
            Node::named(
                n,
                &format!("{}  cluster: prod\n", pki.agent_config(col.addr, n)),
            )
        })
        .collect();
    // A node's file named like HTML: its findings carry the name to every page.
    let evil = nodes[1].manifests.join(EVIL);
    fs::copy(nodes[1].manifest("kube-scheduler.yaml"), &evil).unwrap();
    fs::set_permissions(&evil, fs::Permissions::from_mode(0o600)).unwrap();
    let agents: Vec<_> = nodes.iter().map(Node::start).collect();
    wait_until(
        "both nodes report findings, the evil file's among them",
        || {
            let s = summary(&pki, &col);
            s["fleet"]["nodes_by_state"]["connected"] == 2
                && pki
                    .reader_command(col.addr, &pki, &["findings", "--node", "cp-2"])
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("onerror"))
        },
    );

    let b = Browser::start();
    // As behind an authenticating proxy: the admin token, and the person it vouches for.
    b.headers(&[
        ("Authorization", &format!("Bearer {ADMIN_TOKEN}")),
        ("X-Forwarded-User", "alice"),
    ]);
    let base = format!("https://localhost:{}", dash.port());

    // Fleet: the numbers are the summary command's (read on both sides until they agree
    // twice in a row: the agents may still be sending).
    b.goto(&format!("{base}/"));
    wait_until("the fleet page shows what summary says", || {
        let before = summary(&pki, &col);
        b.goto(&format!("{base}/"));
        let (row, sections) = (fleet_row(&b), sections_shown(&b));
        let after = summary(&pki, &col);
        before == after && row == summary_row(&after) && sections == sections_summary(&after)
    });
    let row = fleet_row(&b);
    assert_eq!(row["connected"], 2, "{row}");
    assert_eq!(
        row["missing"], 1,
        "cp-3 is expected and never heard from: {row}"
    );
    assert!(row["high"].as_u64().unwrap() > 0, "{row}");
    assert!(b.text("footer").contains("kube-lockdown"));
    assert_eq!(b.text(".who"), "alice (admin token)");
    b.screenshot(&shots().join("fleet.png"));
    // By keyboard: the first Tab reaches the skip link, Enter takes focus past the
    // navigation, and the next Tab lands on the first link of the content, outlined.
    const TAB: &str = "\u{E004}";
    const ENTER: &str = "\u{E007}";
    b.keys(&[TAB]);
    assert_eq!(
        b.run("return document.activeElement.textContent;", json!([])),
        "Skip to the content"
    );
    b.keys(&[ENTER, TAB]);
    assert_eq!(
        b.run(
            "const e = document.activeElement;
             return [e.tagName, e.closest('main') !== null, getComputedStyle(e).outlineStyle !== 'none'];",
            json!([])
        ),
        json!(["A", true, true])
    );
    // Every number links to the list behind it: the missing count lists cp-3.
    b.click("#fleet-row td[data-count=missing] a");
    b.wait_for(
        "return document.querySelector('#nodes-table tr[data-node=\"cp-3\"]') !== null",
        "the missing node listed",
    );
    assert_eq!(b.text("#total"), "1");
    b.screenshot(&shots().join("nodes.png"));

    // Findings: the evil file name is text, and nothing of it ran.
    b.goto(&format!("{base}/findings?node=cp-2"));
    let cells = b.run(
        "return [...document.querySelectorAll('#findings-table td.path')].map(td => td.textContent);",
        json!([]),
    );
    let evil_path = evil.display().to_string();
    assert!(
        cells
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == &json!(evil_path)),
        "{cells}"
    );
    assert_eq!(
        b.run(
            "return document.querySelectorAll('main img, main script').length;",
            json!([])
        ),
        0
    );
    assert_ne!(b.run("return document.title;", json!([])), "owned");
    // Every field has a label, for keyboard and screen-reader users.
    assert_eq!(
        b.run(
            "return [...document.querySelectorAll('input:not([type=hidden]), select')].filter(e => e.labels.length === 0).length;",
            json!([])
        ),
        0
    );
    b.screenshot(&shots().join("findings.png"));
    // A check's page: which nodes fail it, and what to do.
    b.goto(&format!("{base}/checks/scheduler-profiling"));
    // cp-2 fails it twice (its evil copy of the scheduler's manifest too).
    assert_eq!(b.text("#failing-nodes"), "2");
    assert_eq!(
        b.run(
            "return document.querySelectorAll('#check-table tr[data-node]').length;",
            json!([])
        ),
        3
    );
    assert!(
        b.text("#remediation").contains("--profiling=false"),
        "{}",
        b.text("#remediation")
    );
    b.screenshot(&shots().join("check.png"));

    // The live tail: an insecure edit appears without a reload.
    b.goto(&format!("{base}/events"));
    b.wait_for(
        "return document.getElementById('tail-status').dataset.state === 'live'",
        "the live tail connected",
    );
    nodes[0].scheduler_flag("--bind-address", Some("0.0.0.0"));
    let raised = "return [...document.querySelectorAll('#tail li.new')].some(li =>
         li.textContent.includes('cp-1') && li.textContent.includes('finding_raised')
         && li.textContent.includes('kube-scheduler.yaml'));";
    b.wait_for(raised, "the insecure edit's finding in the live tail");
    b.screenshot(&shots().join("events.png"));
    // The collector restarts; the tail reconnects and goes on from the last event it saw.
    let shown_before = b
        .run(
            "return document.querySelectorAll('#tail li').length;",
            json!([]),
        )
        .as_u64()
        .unwrap();
    col.stop();
    b.wait_for(
        "return document.getElementById('tail-status').dataset.state === 'reconnecting'",
        "the tail noticed the collector went away",
    );
    col.restart();
    b.wait_for(
        "return document.getElementById('tail-status').dataset.state === 'live'",
        "the tail reconnected",
    );
    let scheduler = nodes[0].manifest("kube-scheduler.yaml");
    fs::set_permissions(&scheduler, fs::Permissions::from_mode(0o644)).unwrap();
    b.wait_for(
        "return [...document.querySelectorAll('#tail li.new')].some(li => li.textContent.includes('permission_drift'))",
        "an event after the restart in the tail",
    );
    // Nothing was sent twice across the reconnect: every row's cursor once.
    let dupes = b.run(
        "const c = [...document.querySelectorAll('#tail li')].map(li => li.dataset.cursor);
         return c.length - new Set(c).size;",
        json!([]),
    );
    assert_eq!(dupes, 0);
    assert!(
        b.run(
            "return document.querySelectorAll('#tail li').length;",
            json!([])
        )
        .as_u64()
        .unwrap()
            > shown_before
    );

    // The node's page: the edit with its diff.
    b.goto(&format!("{base}/nodes/cp-1"));
    assert_eq!(b.text("#state"), "connected");
    let recent = b.text("#tail");
    assert!(recent.contains("file_modified"), "{recent}");
    assert!(recent.contains("+    - --bind-address=0.0.0.0"), "{recent}");
    b.screenshot(&shots().join("node.png"));

    // An exception added from the page marks the finding excepted.
    b.goto(&format!("{base}/exceptions"));
    b.fill("#add-form input[name=rule_id]", "scheduler-bind-address");
    b.fill("#add-form input[name=node]", "cp-1");
    b.fill(
        "#add-form input[name=reason]",
        "bound to a private interface by the host's firewall",
    );
    b.fill("#add-form input[name=days]", "7");
    b.click("#add-form button[type=submit]");
    b.wait_for(
        "return document.querySelector('#exceptions-table tr[data-rule=\"scheduler-bind-address\"][data-state=\"active\"]') !== null",
        "the new exception listed",
    );
    assert!(b.text("#exceptions-table").contains("alice (admin token)"));
    b.screenshot(&shots().join("exceptions.png"));
    b.goto(&format!(
        "{base}/findings?node=cp-1&rule=scheduler-bind-address"
    ));
    assert_eq!(
        b.run(
            "return [...document.querySelectorAll('#findings-table tr[data-rule]')].map(tr => tr.dataset.excepted);",
            json!([])
        ),
        json!(["yes"])
    );
    let listed = pki
        .reader_command(
            col.addr,
            &pki,
            &[
                "findings",
                "--node",
                "cp-1",
                "--rule",
                "scheduler-bind-address",
                "--format",
                "json",
            ],
        )
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["excepted"], true, "{listed}");

    // A narrow screen: nothing wider than the window but the tables' own scrolling.
    drop(b);
    let narrow = Browser::with_window(390, 844);
    narrow.headers(&[("Authorization", &format!("Bearer {READER_TOKEN}"))]);
    narrow.goto(&format!("{base}/findings"));
    assert_eq!(
        narrow.run(
            "return document.documentElement.scrollWidth <= window.innerWidth;",
            json!([])
        ),
        true
    );
    // A reader sees no forms to change exceptions.
    narrow.goto(&format!("{base}/exceptions"));
    assert_eq!(
        narrow.run(
            "return document.querySelectorAll('form[method=post]').length;",
            json!([])
        ),
        0
    );
    drop(agents);
}

#[test]
fn only_readers_look_and_only_admins_change_and_only_from_the_dashboards_pages() {
    let pki = Pki::new(&["cp-1"]);
    let dash = free_addr();
    let (_col, _tokens) = collector(&pki, dash, "");
    let ca = pki.path("ca.crt");
    let cert = |name: &str| {
        (
            pki.path(&format!("{name}.crt")),
            pki.path(&format!("{name}.key")),
        )
    };
    let get = |path: &str, auth: &str, client: Option<(PathBuf, PathBuf)>| {
        https(
            dash,
            &ca,
            client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            &format!(
                "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\n{auth}Connection: close\r\n\r\n",
                dash.port()
            ),
        )
    };
    let header = |h: &[(String, String)], name: &str| {
        h.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };

    // Nobody, or a wrong token: refused, and told how to authenticate.
    let (status, h, body) = get("/", "", None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(header(&h, "www-authenticate"), "Bearer");
    assert!(header(&h, "content-security-policy").contains("default-src 'none'"));
    assert!(!body.contains("cp-1"));
    let (status, _, _) = get(
        "/findings",
        "Authorization: Bearer not-the-token-0123456789abcdefghij\r\n",
        None,
    );
    assert_eq!(status, 401);
    // An agent's certificate is not a reader's.
    let (status, _, _) = get("/", "", Some(cert("cp-1")));
    assert_eq!(status, 401);
    // Readers, by token or certificate.
    let (status, h, body) = get(
        "/",
        &format!("Authorization: Bearer {READER_TOKEN}\r\n"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(header(&h, name), value, "{name}");
    }
    assert!(header(&h, "content-security-policy").contains("script-src 'self'"));
    let (status, _, body) = get("/exceptions", "", Some(cert("reader")));
    assert_eq!(status, 200);
    assert!(body.contains("needs an admin"), "{body}");
    assert!(!body.contains("name=\"csrf\""), "{body}");

    // Changes: an admin's, with the token of its own page's form, from that page.
    let (_, _, page) = get("/exceptions", "", Some(cert("admin")));
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("an admin's page has the form")
        .to_string();
    let post_to = |path: &str,
                   client: Option<(PathBuf, PathBuf)>,
                   auth: &str,
                   extra: &str,
                   form: &str| {
        https(
            dash,
            &ca,
            client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            &format!(
                "POST {path} HTTP/1.1\r\nHost: localhost:{}\r\n{auth}{extra}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
                dash.port(),
                form.len()
            ),
        )
        .0
    };
    let post = |client, auth: &str, extra: &str, form: &str| {
        post_to("/exceptions", client, auth, extra, form)
    };
    let form = |csrf: &str| {
        format!(
            "csrf={csrf}&rule_id=scheduler-profiling&node=cp-1&max_severity=low&reason=tested&days=1"
        )
    };
    let reader_token = format!("Authorization: Bearer {READER_TOKEN}\r\n");
    assert_eq!(
        post(Some(cert("reader")), "", "", &form(&csrf)),
        403,
        "a reader"
    );
    assert_eq!(
        post(None, &reader_token, "", &form(&csrf)),
        403,
        "the reader token"
    );
    assert_eq!(
        post(Some(cert("admin")), "", "", &form("")),
        403,
        "no CSRF token"
    );
    assert_eq!(
        post(Some(cert("admin")), "", "", &form(&"0".repeat(64))),
        403,
        "a forged one"
    );
    let other_site = "Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\n";
    assert_eq!(
        post(Some(cert("admin")), "", other_site, &form(&csrf)),
        403,
        "from another site"
    );
    // The admin token's forms have their own CSRF token: the certificate's does not serve.
    let admin_token = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    assert_eq!(
        post(None, &admin_token, "", &form(&csrf)),
        403,
        "another identity's token"
    );
    let same_site = format!(
        "Origin: https://localhost:{}\r\nSec-Fetch-Site: same-origin\r\n",
        dash.port()
    );
    assert_eq!(post(Some(cert("admin")), "", &same_site, &form(&csrf)), 303);
    let (_, _, listed) = get("/exceptions", "", Some(cert("reader")));
    assert!(
        listed.contains("data-rule=\"scheduler-profiling\""),
        "{listed}"
    );
    assert!(
        listed.contains(">admin<"),
        "the author is the admin's certificate: {listed}"
    );
    // The admin removes it; a second removal finds nothing in force.
    let id = listed
        .split("<tr id=\"x")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the exception's row")
        .to_string();
    let remove = || {
        let path = format!("/exceptions/{id}/remove");
        post_to(&path, Some(cert("admin")), "", "", &format!("csrf={csrf}"))
    };
    assert_eq!(remove(), 303);
    let (_, _, listed) = get("/exceptions", "", Some(cert("reader")));
    assert!(listed.contains("data-state=\"removed\""), "{listed}");
    assert_eq!(remove(), 404);
}
