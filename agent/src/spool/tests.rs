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
fn full_spool_drops_the_oldest_and_accounts_for_every_one_exactly() {
    // Issue 11 (8): overflow events carried the counts of evicted overflow events into
    // ranges that overlapped kept events, and the counts came out wrong (550 for 780). Now
    // each commit's range is exact, and a total that nothing evicts counts them all.
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
    let big = "x".repeat(1000);
    let body = |i: usize| EventBody::FileInvalid {
        path: format!("/p/{i}"),
        error: big.clone(),
    };
    let mut all = Vec::new();
    for i in 0..300 {
        let batch = if i % 7 == 0 {
            vec![body(i), body(i + 1000)]
        } else {
            vec![body(i)]
        };
        all.extend(s.commit("n1", batch, &[]).unwrap());
    }
    let d = s.depth();
    assert!(d.bytes <= MIN_MAX_BYTES);
    let kept = s.read_from(0, 10_000).unwrap();
    // Held events are one contiguous run ending at last_seq.
    let first = kept[0].seq;
    assert_eq!(seqs(&kept), (first..=d.last_seq).collect::<Vec<_>>());
    // Every overflow event ever written names exactly what it dropped, nothing kept inside.
    let mut counted = 0;
    let mut total_seen = 0;
    for e in &all {
        if let EventBody::SpoolOverflow {
            dropped,
            first_seq,
            last_seq,
            total_dropped,
        } = e.body
        {
            assert_eq!(dropped, last_seq - first_seq + 1, "{e:?}");
            assert!(last_seq < e.seq);
            assert!(
                kept.iter()
                    .all(|k| !(first_seq..=last_seq).contains(&k.seq))
            );
            counted += dropped;
            assert!(total_dropped > total_seen);
            total_seen = total_dropped;
        }
    }
    // Nothing was acked: what is not held was dropped, and the counts agree exactly.
    assert_eq!(counted, first - 1);
    assert_eq!(d.dropped_total, first - 1);
    assert_eq!(total_seen, d.dropped_total);
    drop(s);
    let s = Spool::open(dir.path(), MIN_MAX_BYTES).unwrap();
    assert_eq!(s.depth().dropped_total, first - 1, "kept across a restart");
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
