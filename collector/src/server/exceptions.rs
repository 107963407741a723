//! Accepted risks: added and removed by admins (the author is the admin certificate's
//! name), listed by readers, and their expiry announced as an event when it happens, or at
//! start for those that expired while the collector was down.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use lockdown_proto::v1;
use tonic::Status;

use super::writer::Job;
use super::{Shared, ask, now, read};
use crate::store::{EventStore, Exception, FindingQuery, SEVERITIES, StoreError};

/// The longest an exception may hold: accepted risks are looked at again.
pub const MAX_EXPIRY: Duration = Duration::from_secs(366 * 24 * 3600);
/// The expiry watcher looks at least this often (a replica's clock, another replica's adds).
const EXPIRY_POLL: Duration = Duration::from_secs(30);

/// Runs `f` on the writer's store and waits for its answer.
async fn write<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&mut dyn EventStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    ask(shared, |reply| {
        Job::Write(Box::new(move |store| {
            let _ = reply.send(f(store).map_err(Arc::new));
        }))
    })
    .await
}

/// The wire form, with its state now.
pub(super) fn to_proto(x: Exception) -> v1::Exception {
    let state = x.state(&now()).to_string();
    v1::Exception {
        id: x.id,
        rule_id: x.rule_id,
        node: x.node,
        cluster: x.cluster,
        path: x.path,
        max_severity: x.max_severity,
        reason: x.reason,
        author: x.author,
        created: x.created,
        expires: x.expires,
        state,
        removed_by: x.removed_by,
        removed_at: x.removed_at,
    }
}

/// Text an admin typed that becomes stored data: bounded, no control characters.
fn text(what: &str, v: &str, max: usize) -> Result<(), Status> {
    if v.chars().count() > max || v.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "{what} must be at most {max} characters, without control characters"
        )));
    }
    Ok(())
}

/// Adds an exception for `author` (an admin).
pub(super) async fn add(
    shared: &Arc<Shared>,
    author: String,
    r: v1::AddExceptionRequest,
) -> Result<v1::Exception, Status> {
    if r.rule_id.is_empty() {
        return Err(Status::invalid_argument(
            "an exception names a rule (--rule)",
        ));
    }
    text("the rule id", &r.rule_id, 128)?;
    text("the path", &r.path, 4096)?;
    text("the reason", &r.reason, 2000)?;
    if r.reason.trim().is_empty() {
        return Err(Status::invalid_argument(
            "an exception says why the risk is accepted (--reason)",
        ));
    }
    if !r.node.is_empty() && !r.cluster.is_empty() {
        return Err(Status::invalid_argument(
            "an exception is for one node, one cluster or the fleet: not both --node and --cluster",
        ));
    }
    if !r.node.is_empty() && !crate::admit::node_name_ok(&r.node) {
        return Err(Status::invalid_argument(format!(
            "{:?} is not a node name",
            r.node
        )));
    }
    text("the cluster", &r.cluster, 253)?;
    let lasts = Duration::from_secs(r.expires_in_seconds);
    if lasts.is_zero() || lasts > MAX_EXPIRY {
        return Err(Status::invalid_argument(format!(
            "an exception expires within {} (--expires)",
            humantime::format_duration(MAX_EXPIRY)
        )));
    }
    if !r.max_severity.is_empty() && !SEVERITIES.contains(&r.max_severity.as_str()) {
        return Err(Status::invalid_argument(format!(
            "{:?} is not a severity",
            r.max_severity
        )));
    }
    let max_severity = if r.max_severity.is_empty() {
        // What it covers now sets how far it reaches: a finding that grows more severe
        // later is not hidden by it.
        let q = FindingQuery {
            rule_id: Some(r.rule_id.clone()),
            node: (!r.node.is_empty()).then(|| r.node.clone()),
            cluster: (!r.cluster.is_empty()).then(|| r.cluster.clone()),
            ..Default::default()
        };
        let path = r.path.clone();
        let rows = read(shared, move |s| s.findings(&q, None, usize::MAX)).await?;
        rows.iter()
            .filter(|row| path.is_empty() || row.finding.path == path)
            .filter_map(|row| SEVERITIES.iter().position(|s| *s == row.finding.severity))
            .max()
            .map(|i| SEVERITIES[i].to_string())
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "no open finding of {:?} matches; to accept it before it appears, say how severe it may be (--max-severity)",
                    r.rule_id
                ))
            })?
    } else {
        r.max_severity
    };
    let created = SystemTime::now();
    let x = Exception {
        rule_id: r.rule_id,
        node: r.node,
        cluster: r.cluster,
        path: r.path,
        max_severity,
        reason: r.reason,
        author,
        created: humantime::format_rfc3339_millis(created).to_string(),
        expires: humantime::format_rfc3339_millis(created + lasts).to_string(),
        ..Default::default()
    };
    let added = write(shared, move |s| s.add_exception(&x)).await?;
    tracing::info!(target: "audit", id = added.id, rule = added.rule_id, author = added.author, expires = added.expires, "exception added");
    shared.exceptions_changed.notify_one();
    Ok(to_proto(added))
}

/// Removes exception `id` for `by` (an admin).
pub(super) async fn remove(
    shared: &Arc<Shared>,
    by: String,
    id: u64,
) -> Result<v1::Exception, Status> {
    let time = now();
    let who = by.clone();
    let removed = write(shared, move |s| s.remove_exception(id, &who, &time))
        .await?
        .ok_or_else(|| Status::not_found(format!("no exception {id} in force")))?;
    tracing::info!(target: "audit", id, by, "exception removed");
    shared.exceptions_changed.notify_one();
    Ok(to_proto(removed))
}

/// Lists exceptions: those in force, or `all`.
pub(super) async fn list(shared: &Arc<Shared>, all: bool) -> Result<Vec<v1::Exception>, Status> {
    let at = now();
    let list = read(shared, |s| s.exceptions()).await?;
    Ok(list
        .into_iter()
        .filter(|x| all || x.state(&at) == "active")
        .map(to_proto)
        .collect())
}

/// Announces expiries as they happen: at start (those that expired while the collector was
/// down), at each exception's expiry, after every change, and every [`EXPIRY_POLL`].
pub(super) async fn watch_expiry(shared: Arc<Shared>) {
    loop {
        let at = now();
        match write(&shared, move |s| s.expire_exceptions(&at)).await {
            Ok(expired) => {
                for x in expired {
                    tracing::info!(target: "audit", id = x.id, rule = x.rule_id, expires = x.expires, "exception expired");
                }
            }
            Err(e) => tracing::error!(error = %e.message(), "cannot record exception expiries"),
        }
        let next = read(&shared, |s| s.exceptions())
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|x| x.removed_at.is_empty() && x.state(&now()) == "active")
            .filter_map(|x| humantime::parse_rfc3339(&x.expires).ok())
            .min();
        let wait = next
            .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(EXPIRY_POLL)
            .min(EXPIRY_POLL);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.exceptions_changed.notified() => {}
        }
    }
}
