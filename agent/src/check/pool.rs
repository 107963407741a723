//! Work on every core with results handed out in order: a pipelined pool whose writer
//! works when nothing is ready, and which ends (instead of hanging) when a worker panics.

use std::sync::Mutex;

/// Files checked ahead of the one the writer waits for, per core: bounds the memory a check
/// of a huge directory takes (and keeps it the same few pages, warm) while the cores stay
/// busy.
pub(super) const AHEAD_PER_CORE: usize = 128;

/// Files a worker takes at once: checking a copy of a known manifest takes a few
/// microseconds, so one lock per file would cost as much as the file.
pub(super) const CHUNK: usize = 4;

/// `work` on every item, on all cores, with the results handed to `emit` in the items' order
/// as soon as each and those before it are done. Workers take [`CHUNK`] items at a time,
/// each with its own state `S`; at most [`AHEAD_PER_CORE`] items per core are in flight or
/// waiting to be handed on. The calling thread is one of the workers: it hands results on
/// when the next are done and works items when they are not. Stops at the first error of
/// `emit`.
pub(super) fn in_parallel<T: Send, R: Send, S: Default>(
    items: Vec<T>,
    work: impl Fn(&mut S, T) -> R + Sync,
    emit: &mut dyn FnMut(R) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores == 1 || items.len() <= CHUNK {
        let mut state = S::default();
        return items
            .into_iter()
            .try_for_each(|t| emit(work(&mut state, t)));
    }
    let mut chunks = Vec::with_capacity(items.len().div_ceil(CHUNK));
    let mut items = items.into_iter();
    loop {
        let chunk: Vec<T> = items.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    let total = chunks.len();
    let window = (cores * AHEAD_PER_CORE / CHUNK).max(cores);
    let work = |state: &mut S, chunk: Vec<T>| -> Vec<R> {
        chunk.into_iter().map(|t| work(state, t)).collect()
    };
    let pool = Pool {
        state: Mutex::new(PoolState {
            items: chunks.into_iter().enumerate(),
            handed_on: 0,
            done: std::collections::VecDeque::new(),
            stopped: false,
            writer_waits: false,
            workers_waiting: 0,
        }),
        room: std::sync::Condvar::new(),
        ready: std::sync::Condvar::new(),
    };
    let mut emit_all = |results: Vec<R>| results.into_iter().try_for_each(&mut *emit);
    std::thread::scope(|s| {
        for _ in 1..cores.min(total) {
            s.spawn(|| pool.work(window, &work));
        }
        let result = pool.hand_on(total, window, &work, &mut emit_all);
        // On an error of `emit` the workers stop at their next chunk.
        pool.lock().stopped = true;
        pool.room.notify_all();
        result
    })
}

/// A worker (or the writer) that panics stops the pool rather than leave the others waiting
/// for it (the panic then surfaces when the scope ends).
struct StopOnPanic<'p, T, R>(&'p Pool<T, R>);

impl<T, R> Drop for StopOnPanic<'_, T, R> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().stopped = true;
            self.0.ready.notify_all();
            self.0.room.notify_all();
        }
    }
}

/// What the workers and the writer of [`in_parallel`] share.
struct Pool<T, R> {
    state: Mutex<PoolState<T, R>>,
    /// An item may start (the writer handed results on).
    room: std::sync::Condvar,
    /// The result the writer waits for is there.
    ready: std::sync::Condvar,
}

struct PoolState<T, R> {
    /// Items not started, with their index.
    items: std::iter::Enumerate<std::vec::IntoIter<T>>,
    /// Results handed on so far (the index of the next one).
    handed_on: usize,
    /// Results from `handed_on` on, in order (`None`: not done yet).
    done: std::collections::VecDeque<Option<R>>,
    /// The writer has stopped.
    stopped: bool,
    /// The writer waits for the result at `handed_on`.
    writer_waits: bool,
    /// Workers waiting for room.
    workers_waiting: usize,
}

impl<T, R> Pool<T, R> {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState<T, R>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Works item `i` without the lock and puts its result in its place: the lock again,
    /// and where the result went (0: the one the writer hands on next).
    fn work_one<'p, S>(
        &'p self,
        mut state: std::sync::MutexGuard<'p, PoolState<T, R>>,
        (i, item): (usize, T),
        own: &mut S,
        work: &impl Fn(&mut S, T) -> R,
    ) -> (std::sync::MutexGuard<'p, PoolState<T, R>>, usize) {
        state.done.push_back(None);
        drop(state);
        let r = work(own, item);
        let mut state = self.lock();
        let at = i - state.handed_on;
        state.done[at] = Some(r);
        (state, at)
    }

    /// A worker: takes the next item while it is within `window` of the writer, works it and
    /// puts the result in its place.
    fn work<S: Default>(&self, window: usize, work: &impl Fn(&mut S, T) -> R) {
        let _guard = StopOnPanic(self);
        let mut own = S::default();
        let mut state = self.lock();
        loop {
            while !state.stopped && state.done.len() >= window {
                state.workers_waiting += 1;
                state = self.room.wait(state).unwrap_or_else(|e| e.into_inner());
                state.workers_waiting -= 1;
            }
            if state.stopped {
                return;
            }
            let Some(next) = state.items.next() else {
                return;
            };
            let at;
            (state, at) = self.work_one(state, next, &mut own, work);
            // Waking costs a system call: only when the writer sleeps on this one.
            if at == 0 && state.writer_waits {
                self.ready.notify_one();
            }
        }
    }

    /// The writer: hands every result on in order, `total` in all.
    fn hand_on<S: Default>(
        &self,
        total: usize,
        window: usize,
        work: &impl Fn(&mut S, T) -> R,
        emit: &mut dyn FnMut(R) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let _guard = StopOnPanic(self);
        let mut own = S::default();
        let mut batch = Vec::new();
        let mut state = self.lock();
        while state.handed_on < total {
            while let Some(Some(_)) = state.done.front() {
                batch.extend(state.done.pop_front().flatten());
            }
            if batch.is_empty() {
                if state.stopped {
                    return Err(std::io::Error::other("a worker stopped"));
                }
                // Nothing to hand on yet: work the next item rather than wait.
                if state.done.len() < window
                    && let Some(next) = state.items.next()
                {
                    (state, _) = self.work_one(state, next, &mut own, work);
                    continue;
                }
                state.writer_waits = true;
                state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
                state.writer_waits = false;
                continue;
            }
            state.handed_on += batch.len();
            let wake = state.workers_waiting > 0;
            drop(state);
            if wake {
                self.room.notify_all();
            }
            for r in batch.drain(..) {
                emit(r)?;
            }
            state = self.lock();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Uneven work: some items take far longer than their neighbours.
    fn uneven(i: usize) -> usize {
        let mut x = i;
        for _ in 0..(i % 7) * 2000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        std::hint::black_box(x);
        i * 2
    }

    #[test]
    fn results_are_handed_on_in_order_whatever_finishes_first() {
        let mut seen = Vec::new();
        in_parallel((0..2000).collect(), |_: &mut (), i| uneven(i), &mut |r| {
            seen.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..2000).map(|i| i * 2).collect::<Vec<_>>());
    }

    #[test]
    fn an_error_of_emit_stops_the_work() {
        let worked = AtomicUsize::new(0);
        let mut handed = 0;
        let r = in_parallel(
            (0..5000).collect(),
            |_: &mut (), i| {
                worked.fetch_add(1, Ordering::Relaxed);
                uneven(i)
            },
            &mut |_| {
                handed += 1;
                if handed == 10 {
                    Err(std::io::Error::other("stdout gone"))
                } else {
                    Ok(())
                }
            },
        );
        assert_eq!(r.unwrap_err().to_string(), "stdout gone");
        assert_eq!(handed, 10);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The window bounds what runs ahead of the writer (plus a chunk per worker).
        assert!(
            worked.load(Ordering::Relaxed) <= CHUNK + cores * AHEAD_PER_CORE + cores * CHUNK,
            "{} items worked",
            worked.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn a_panicking_item_ends_the_pool_instead_of_hanging_it() {
        for bad in [0, 1, 37, 999] {
            let r = std::panic::catch_unwind(|| {
                in_parallel(
                    (0..1000).collect(),
                    |_: &mut (), i| {
                        assert_ne!(i, bad, "item {bad}");
                        uneven(i)
                    },
                    &mut |_| Ok(()),
                )
            });
            assert!(r.is_err(), "the panic of item {bad} surfaces");
        }
    }
}
