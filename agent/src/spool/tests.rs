use super::*;
use crate::baseline::PathState;

fn rescan(n: usize) -> EventBody {
    EventBody::Rescan {
        reason: "test".into(),
        changes: n,
    }
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

#[test]
fn sequence_numbers_continue_across_reopen_and_trimming() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    let a = s.commit("n1", vec![rescan(1), rescan(2)], &[]).unwrap();
    assert_eq!(seqs(&a), [1, 2]);
    assert_eq!(s.ack(2).unwrap(), 2);
    assert_eq!(s.depth().events, 0);
    drop(s);
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    let b = s.commit("n1", vec![rescan(3)], &[]).unwrap();
    assert_eq!(seqs(&b), [3], "numbers are never reused after trimming");
    assert_eq!(s.depth().acked, 2);
    assert_eq!(seqs(&s.read_from(0, 10).unwrap()), [3]);
}

#[test]
fn reader_reads_from_a_sequence_number_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    s.commit("n1", (0..10).map(rescan).collect(), &[]).unwrap();
    assert_eq!(seqs(&s.read_from(7, 100).unwrap()), [7, 8, 9, 10]);
    assert_eq!(seqs(&s.read_from(2, 3).unwrap()), [2, 3, 4]);
    let r = SpoolReader::open(dir.path()).unwrap();
    assert_eq!(r.last_seq().unwrap(), 10);
    assert_eq!(r.read_from(10, 5).unwrap()[0].body, rescan(9));
}

#[test]
fn ack_frees_space_and_never_goes_past_what_exists() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    s.commit("n1", (0..4).map(rescan).collect(), &[]).unwrap();
    let before = s.depth().bytes;
    assert_eq!(s.ack(2).unwrap(), 2);
    assert!(s.depth().bytes < before);
    assert_eq!(s.ack(100).unwrap(), 2);
    assert_eq!(s.depth().acked, 4);
    assert_eq!(s.ack(3).unwrap(), 0);
}

#[test]
fn full_spool_drops_the_oldest_and_says_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
    let big = "x".repeat(1000);
    let body = |i: usize| EventBody::FileInvalid {
        path: format!("/p/{i}"),
        error: big.clone(),
    };
    let mut all = Vec::new();
    for i in 0..200 {
        all.extend(s.commit("n1", vec![body(i)], &[]).unwrap());
    }
    assert!(s.depth().bytes <= MIN_MAX_BYTES);
    let kept = s.read_from(0, 10_000).unwrap();
    let dropped: u64 = kept
        .iter()
        .filter_map(|e| match e.body {
            EventBody::SpoolOverflow { dropped, .. } => Some(dropped),
            _ => None,
        })
        .sum();
    let kept_files = kept
        .iter()
        .filter(|e| e.body.kind() == "file_invalid")
        .count() as u64;
    assert!(dropped > 0);
    // Every file event is either kept or counted by a kept overflow event, and every
    // sequence number is either kept or inside a kept overflow event's range.
    assert_eq!(kept_files + dropped, 200);
    let covered = |seq: u64| {
        kept.iter().any(|e| {
            e.seq == seq
                || matches!(e.body, EventBody::SpoolOverflow { first_seq, last_seq, .. }
                    if (first_seq..=last_seq).contains(&seq))
        })
    };
    let missing: Vec<u64> = (1..=s.depth().last_seq).filter(|q| !covered(*q)).collect();
    assert!(
        missing.is_empty(),
        "{missing:?} {:?}",
        kept.iter()
            .filter(|e| e.body.kind() == "spool_overflow")
            .collect::<Vec<_>>()
    );
    // The kept events are the newest, in order.
    assert_eq!(kept.last().unwrap().seq, s.depth().last_seq);
    assert!(kept.windows(2).all(|w| w[0].seq < w[1].seq));
}

#[test]
fn a_second_writer_is_refused_and_told_who_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _s = Spool::open(dir.path(), 1 << 20).unwrap();
    let err = Spool::open(dir.path(), 1 << 20).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SpoolError::Locked { .. }), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
}

#[test]
fn baseline_commits_with_events_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
    let st = PathState {
        error: Some("bad".into()),
        ..PathState::default()
    };
    s.commit(
        "n1",
        vec![rescan(1)],
        &[
            ("/a".into(), Some(st.clone())),
            ("/b".into(), Some(PathState::default())),
        ],
    )
    .unwrap();
    s.commit("n1", vec![], &[("/b".into(), None)]).unwrap();
    drop(s);
    let s = Spool::open(dir.path(), 1 << 20).unwrap();
    let b = s.baseline().unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b["/a"], st);
}
