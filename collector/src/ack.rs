//! The contiguous-ack rule, free of any database: what every store backend decides with it.
//!
//! An agent's ack covers a contiguous prefix of its sequence numbers. It moves past a
//! number only when that event is stored, or a gap the agent explained (a `spool_overflow`
//! event's dropped range, a range an earlier store acknowledged) covers it. A gap nobody
//! explained holds the ack back, so the agent keeps, and resends, everything after it.

/// The highest sequence number reachable from `acked` through stored or explained events.
/// `stored(seq)` says whether that event is stored; `explained(seq)` gives the last sequence
/// number of an explained range that holds `seq`, if one does. Errors of either stop the walk.
pub fn advance<E>(
    mut acked: u64,
    mut stored: impl FnMut(u64) -> Result<bool, E>,
    mut explained: impl FnMut(u64) -> Result<Option<u64>, E>,
) -> Result<u64, E> {
    loop {
        let next = acked + 1;
        if stored(next)? {
            acked = next;
            continue;
        }
        match explained(next)? {
            // A range that ends before `next` cannot hold it: never walk backwards.
            Some(last) if last >= next => acked = last,
            _ => return Ok(acked),
        }
    }
}

/// The ranges `(first, last)` of `from..until` that `present` (ascending) does not hold, in
/// order: what a store is missing of a span the agent no longer has.
pub fn missing(from: u64, until: u64, present: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut next = from;
    for seq in present
        .into_iter()
        .filter(|s| (from..until).contains(s))
        .chain(std::iter::once(until))
    {
        if seq > next {
            out.push((next, seq - 1));
        }
        next = next.max(seq + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// The rule as a walk one number at a time over sets: the model the function must match.
    fn model(acked: u64, stored: &BTreeSet<u64>, gaps: &[(u64, u64)]) -> u64 {
        let mut at = acked;
        loop {
            let next = at + 1;
            if stored.contains(&next) || gaps.iter().any(|&(f, l)| f <= next && next <= l) {
                at = next;
            } else {
                return at;
            }
        }
    }

    fn explained(gaps: &[(u64, u64)], seq: u64) -> Option<u64> {
        gaps.iter()
            .filter(|&&(f, l)| f <= seq && seq <= l)
            .map(|&(_, l)| l)
            .max()
    }

    proptest! {
        #[test]
        fn advance_stops_at_the_first_number_neither_stored_nor_explained(
            acked in 0u64..20,
            stored in proptest::collection::btree_set(1u64..80, 0..60),
            gaps in proptest::collection::vec((1u64..80, 0u64..10), 0..6),
        ) {
            let gaps: Vec<(u64, u64)> = gaps.into_iter().map(|(f, n)| (f, f + n)).collect();
            let got = advance::<()>(
                acked,
                |s| Ok(stored.contains(&s)),
                |s| Ok(explained(&gaps, s)),
            )
            .unwrap();
            prop_assert_eq!(got, model(acked, &stored, &gaps));
            // Never backwards, and what follows is held back by an unexplained number.
            prop_assert!(got >= acked);
            prop_assert!(!stored.contains(&(got + 1)) && explained(&gaps, got + 1).is_none());
        }

        #[test]
        fn missing_and_present_cover_the_span_exactly_once(
            from in 1u64..40,
            len in 0u64..40,
            present in proptest::collection::btree_set(0u64..90, 0..40),
        ) {
            let until = from + len;
            let gaps = missing(from, until, present.iter().copied());
            let mut covered = BTreeSet::new();
            let mut last_end = None;
            for &(f, l) in &gaps {
                prop_assert!(f <= l && from <= f && l < until);
                prop_assert!(last_end.is_none_or(|e| f > e + 1), "ranges are apart and ordered");
                last_end = Some(l);
                for s in f..=l {
                    prop_assert!(!present.contains(&s));
                    covered.insert(s);
                }
            }
            for s in from..until {
                prop_assert!(covered.contains(&s) != present.contains(&s), "{s}");
            }
        }
    }

    #[test]
    fn a_store_error_stops_the_walk() {
        let r = advance(
            3,
            |s| if s == 5 { Err("disk") } else { Ok(true) },
            |_| Ok(None),
        );
        assert_eq!(r, Err("disk"));
    }
}
