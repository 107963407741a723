//! `lockdown-agent fix --dry-run | --apply`: the fixer driven once, by hand, through the same
//! steps as the daemon's ([`Fixer::look`], then [`Fixer::apply`] behind the health gate).
//! What differs is said here: every rule is in enforce mode (fixes not marked safe
//! unattended only when named), the diff is printed, the fight guard (a loop between the
//! daemon and another writer) does not apply, and a running agent or a pause refuses it.

use std::path::PathBuf;

use lockdown_proto::{out, outln};

use super::fixer::{Fixer, Look, Outcome};
use super::policy::{self, OwnWrites, QUARANTINE_FILE};
use crate::config::{Config, Mode};
use crate::event::EventBody;
use crate::rules::Finding;

/// Runs the command. Exit code: 0 when everything planned is done (or nothing is needed), 1
/// when a fix was skipped or rolled back, 2 on errors.
pub fn run(cfg: Config, paths: Vec<PathBuf>, apply: bool, rules: &[String]) -> u8 {
    for r in rules {
        if !cfg.catalogue.rule_ids().any(|id| id == r) {
            eprintln!("lockdown-agent: --rule {r:?} is not a rule id (see `lockdown-agent rules`)");
            return 2;
        }
    }
    // Anything but "nobody listens" means an agent is there (a busy one answers late).
    if apply
        && !matches!(
            crate::status::query_status(&cfg.state_dir),
            Err(crate::status::StatusError::NotRunning { .. })
        )
    {
        eprintln!(
            "lockdown-agent: an agent is running on {}; set fix.mode to enforce (or stop it) instead of applying by hand",
            cfg.state_dir.display()
        );
        return 2;
    }
    if apply && let Some(why) = policy::paused(&cfg.state_dir) {
        eprintln!("lockdown-agent: fixing is {why}");
        return 1;
    }
    let paths = if paths.is_empty() {
        vec![cfg.manifests_dir.clone()]
    } else {
        paths
    };
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            match crate::io::list_manifest_dir(&p) {
                Ok(list) => files.extend(list),
                Err(e) => {
                    eprintln!("lockdown-agent: {e}");
                    return 2;
                }
            }
        } else {
            files.push(p);
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lockdown-agent: cannot start the runtime: {e}");
            return 2;
        }
    };
    // A fix applied by hand is recorded like the daemon's: in the spool, for the collector.
    // No agent runs here (checked above), so the spool's lock is free.
    let mut spool = if apply {
        match crate::spool::Spool::open(&cfg.state_dir, cfg.spool_max_bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("lockdown-agent: {e}; not applying a fix that could not be recorded");
                return 2;
            }
        }
    } else {
        None
    };
    let node = cfg.node_name.clone();
    let fix_cfg = cfg.fix.clone();
    let catalogue = cfg.catalogue.clone();
    let mut fixer = Fixer::new(cfg, std::sync::Arc::new(OwnWrites::default()));
    let mut unrecorded = 0usize;
    let mut emit = |e: EventBody| {
        eprintln!("{}", serde_json::to_string(&e).expect("events serialise"));
        if let Some(spool) = spool.as_mut()
            && let Err(err) = spool.commit(&node, vec![e], &[])
        {
            eprintln!("lockdown-agent: this event is not in the spool: {err}");
            unrecorded += 1;
        }
    };
    let mut code = 0;
    runtime.block_on(async {
        if apply {
            fixer.recover(&mut emit).await;
        }
        let choose = |f: &Finding| super::choose(&fix_cfg, f, Mode::Enforce, rules);
        for path in files {
            let (bytes, plan, quarantined) = match fixer.look(&path, &choose) {
                Look::Symlink => {
                    eprintln!("{}: {}", path.display(), super::fixer::SYMLINK);
                    code = 1;
                    continue;
                }
                Look::Unplannable(e) => {
                    eprintln!("{}: {e}", path.display());
                    code = 1;
                    continue;
                }
                Look::Planned {
                    bytes,
                    plan,
                    quarantined,
                } => (bytes, plan, quarantined),
            };
            for s in &plan.skipped {
                outln!(
                    "# {}: not fixing {}: {}",
                    path.display(),
                    s.rule_id,
                    s.reason
                );
            }
            if plan.is_empty() {
                continue;
            }
            if let Some(q) = quarantined {
                outln!(
                    "# {}: not fixing: quarantined since {} was rolled back ({}); change the file or remove {} to try again",
                    path.display(),
                    q.rules.join(", "),
                    q.reason,
                    QUARANTINE_FILE
                );
                code = 1;
                continue;
            }
            let before = String::from_utf8_lossy(&bytes).into_owned();
            let diff = plan.diff(&catalogue, &path.display().to_string(), &before);
            out!("{diff}");
            if apply {
                match fixer.apply(&path, &bytes, &plan, diff, &mut emit).await {
                    Outcome::Verified => outln!("# {}: applied, healthy", path.display()),
                    other => {
                        outln!("# {}: {other:?}", path.display());
                        code = 1;
                    }
                }
            }
        }
    });
    if unrecorded > 0 {
        eprintln!("lockdown-agent: {unrecorded} fix events could not be spooled (see above)");
        return 2;
    }
    code
}
