//! How readers hear that something was committed, so that a watch reads on. In one process a
//! channel; with several replicas on one database, a notification from the database (for
//! PostgreSQL, LISTEN/NOTIFY) turned into the same wake-ups. A wake-up says only "read
//! again": readers read from their cursor, so a missed or spurious one loses nothing.

use tokio::sync::watch;

/// A source of "something was committed" wake-ups.
pub trait CommitFeed: Send + Sync {
    /// Says a commit happened (the writer, after each commit).
    fn committed(&self);
    /// A receiver that changes after each commit from now on.
    fn subscribe(&self) -> watch::Receiver<u64>;
}

/// The feed of one collector process: its writer's commits.
#[derive(Debug)]
pub struct InProcess(watch::Sender<u64>);

impl Default for InProcess {
    fn default() -> Self {
        InProcess(watch::channel(0).0)
    }
}

impl CommitFeed for InProcess {
    fn committed(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_subscriber_wakes_after_a_commit_and_not_before() {
        let feed = InProcess::default();
        let mut rx = feed.subscribe();
        assert!(!rx.has_changed().unwrap());
        feed.committed();
        rx.changed().await.unwrap();
        assert!(!rx.has_changed().unwrap());
        // Two commits before the reader looks are one wake-up: it reads everything anyway.
        feed.committed();
        feed.committed();
        rx.changed().await.unwrap();
        assert!(!rx.has_changed().unwrap());
    }
}
