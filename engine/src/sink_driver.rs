//! Sink drivers: one thread per sink that takes closed windows from the merger and writes them,
//! retrying while the sink is down, so that a slow or dead backend never stops the data plane.
//!
//! # Buffering and loss
//!
//! The merger hands each window to every driver through a bounded crossbeam channel of
//! `sink_queue_windows` windows ([`SinkHandle::dispatch`] never blocks). When the channel is
//! full, the merger takes the *oldest* queued window out and drops it (counted in
//! `windows_dropped`, logged at most once per 10 s), then queues the new one: while a sink is
//! down the buffer keeps the most recent windows, which is what an operator looking at the last
//! five minutes wants when it comes back.
//!
//! The driver sends one window at a time. A failed `send` is counted (`send_failures`), logged
//! (rate limited) and retried with a backoff from 100 ms doubling to 5 s; newer windows wait in
//! the channel meanwhile and go out in order once the sink answers again, so the driver catches
//! up by itself.
//!
//! # Shutdown
//!
//! When the merger has handed over the last windows it drops its handles; a driver then drains
//! its channel and exits. If the sink is still failing when the shutdown deadline set by
//! [`SinkHandle::set_deadline`] passes, the window being retried and everything still queued
//! are counted as dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded};
use tracing::{info, warn};

use crate::counters::{SinkCounters, SinkCountersSnapshot};
use crate::output::{Sink, SinkError, WindowBatch};
use crate::ratelimit::RateLimit;

/// The merger's end of one sink driver.
#[derive(Debug, Clone)]
pub(crate) struct SinkHandle {
    name: &'static str,
    tx: Sender<Arc<WindowBatch>>,
    /// A receiver clone, used only to take the oldest window out when the queue is full.
    oldest: Receiver<Arc<WindowBatch>>,
    counters: Arc<SinkCounters>,
    deadline_ms: Arc<AtomicU64>,
    drop_log: Arc<std::sync::Mutex<RateLimit>>,
}

impl SinkHandle {
    /// Queues `batch` for the sink without blocking; drops (and counts) the oldest queued
    /// window when the queue is full.
    pub(crate) fn dispatch(&self, batch: Arc<WindowBatch>) {
        let mut batch = batch;
        loop {
            match self.tx.try_send(batch) {
                Ok(()) => return,
                Err(TrySendError::Disconnected(_)) => {
                    // The driver is gone (it panicked); nobody will write this window.
                    self.counters
                        .windows_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(TrySendError::Full(b)) => {
                    batch = b;
                    if let Ok(old) = self.oldest.try_recv() {
                        self.counters
                            .windows_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        self.log_drop(old.window_start);
                    }
                }
            }
        }
    }

    /// Counters as of now.
    pub(crate) fn snapshot(&self) -> SinkCountersSnapshot {
        self.counters.snapshot(self.name, self.tx.len())
    }

    /// The sink's name and counters, to read after the handle is gone.
    pub(crate) fn counters(&self) -> (&'static str, Arc<SinkCounters>) {
        (self.name, Arc::clone(&self.counters))
    }

    /// Sets the moment (Unix ms) after which the driver stops retrying and drops what is left.
    pub(crate) fn set_deadline(&self, unix_ms: u64) {
        self.deadline_ms.store(unix_ms.max(1), Ordering::Relaxed);
    }

    fn log_drop(&self, window: u64) {
        let Ok(mut rl) = self.drop_log.lock() else {
            return;
        };
        if let Some(held_back) = rl.check(Instant::now()) {
            warn!(
                sink = self.name,
                window,
                held_back,
                "Sink buffer full; dropped the oldest window (raise engine.sink_queue_windows, \
                 or check the sink)."
            );
        }
    }
}

/// Starts the driver thread of `sink` with a queue of `queue_windows` windows, pinned to
/// `core` when one is given (threads the sink starts inherit it).
///
/// # Errors
///
/// The thread could not be started.
pub(crate) fn spawn(
    mut sink: Box<dyn Sink>,
    queue_windows: usize,
    core: Option<usize>,
) -> std::io::Result<(SinkHandle, std::thread::JoinHandle<()>)> {
    let name = sink.name();
    let (tx, rx) = bounded::<Arc<WindowBatch>>(queue_windows.max(1));
    let counters = Arc::new(SinkCounters::default());
    let deadline_ms = Arc::new(AtomicU64::new(0));
    let handle = SinkHandle {
        name,
        tx,
        oldest: rx.clone(),
        counters: Arc::clone(&counters),
        deadline_ms: Arc::clone(&deadline_ms),
        drop_log: Arc::new(std::sync::Mutex::new(RateLimit::new(LOG_EVERY))),
    };
    let join = std::thread::Builder::new()
        .name(format!("fp-sink-{name}"))
        .spawn(move || {
            crate::placement::pin_current(core, &format!("fp-sink-{name}"));
            drive(&mut *sink, &rx, &counters, &deadline_ms);
        })?;
    Ok((handle, join))
}

/// The driver loop: send each window until it goes through or the shutdown deadline passes.
fn drive(
    sink: &mut dyn Sink,
    rx: &Receiver<Arc<WindowBatch>>,
    counters: &SinkCounters,
    deadline_ms: &AtomicU64,
) {
    let name = sink.name();
    let mut fail_log = RateLimit::new(LOG_EVERY);
    let mut failing_since: Option<Instant> = None;
    loop {
        let batch = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(b) => b,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut backoff = BACKOFF_MIN;
        let mut rejects = 0;
        loop {
            match sink.send(&batch) {
                Ok(()) => {
                    counters.windows_sent.fetch_add(1, Ordering::Relaxed);
                    if let Some(t) = failing_since.take() {
                        info!(
                            sink = name,
                            down_secs = t.elapsed().as_secs(),
                            queued = rx.len(),
                            "Sink is back; catching up."
                        );
                    }
                    break;
                }
                Err(error) => {
                    counters.send_failures.fetch_add(1, Ordering::Relaxed);
                    if let SinkError::Rejected { .. } = error {
                        rejects += 1;
                        if rejects >= REJECTS_PER_WINDOW {
                            // The same batch will be refused again: give it up rather than
                            // hold every later window behind it.
                            counters.windows_dropped.fetch_add(1, Ordering::Relaxed);
                            warn!(
                                sink = name,
                                window = batch.window_start,
                                attempts = rejects,
                                %error,
                                "Sink keeps rejecting this window; dropped it."
                            );
                            break;
                        }
                    }
                    failing_since.get_or_insert_with(Instant::now);
                    if let Some(held_back) = fail_log.check(Instant::now()) {
                        warn!(
                            sink = name,
                            window = batch.window_start,
                            queued = rx.len(),
                            held_back,
                            %error,
                            "Sink send failed; will retry."
                        );
                    }
                }
            }
            if past_deadline(deadline_ms) {
                let left = 1 + rx.try_iter().count() as u64;
                counters.windows_dropped.fetch_add(left, Ordering::Relaxed);
                warn!(
                    sink = name,
                    windows = left,
                    "Shutdown timeout reached with the sink still failing; dropped what was left."
                );
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

fn past_deadline(deadline_ms: &AtomicU64) -> bool {
    let d = deadline_ms.load(Ordering::Relaxed);
    d != 0 && crate::merger::unix_ms() >= d
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Sends of one window the backend may reject (it answered, and refused this batch) before
/// the window is dropped and counted. A backend that cannot be reached is retried without
/// limit instead: the bounded queue decides what is lost while it is away.
const REJECTS_PER_WINDOW: u32 = 3;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::output::SinkError;

    /// A sink that fails while `down` is set and records what it accepted.
    struct Flaky {
        down: Arc<Mutex<bool>>,
        got: Arc<Mutex<Vec<u64>>>,
    }

    impl Sink for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn send(&mut self, batch: &WindowBatch) -> Result<(), SinkError> {
            if *self.down.lock().unwrap() {
                return Err(SinkError::Unavailable {
                    sink: "flaky",
                    reason: "down".into(),
                });
            }
            self.got.lock().unwrap().push(batch.window_start);
            Ok(())
        }
    }

    fn batch(w: u64) -> Arc<WindowBatch> {
        Arc::new(WindowBatch {
            window_start: w,
            closed_unix_ms: 0,
            dimensions: Vec::new(),
            alerts: Vec::new(),
            counters: Vec::new(),
        })
    }

    #[test]
    fn buffers_while_down_drops_oldest_and_catches_up() {
        let down = Arc::new(Mutex::new(true));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Flaky {
            down: Arc::clone(&down),
            got: Arc::clone(&got),
        };
        let (h, join) = spawn(Box::new(sink), 3, None).unwrap();
        h.dispatch(batch(1));
        // Let the driver take window 1 and start failing on it.
        while h.counters.send_failures.load(Ordering::Relaxed) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        for w in 2..=6 {
            h.dispatch(batch(w));
        }
        // Queue of 3 while window 1 is retried: 2 and 3 were pushed out by 5 and 6.
        assert_eq!(h.snapshot().windows_dropped, 2);
        assert_eq!(h.snapshot().windows_queued, 3);

        *down.lock().unwrap() = false;
        let snap = loop {
            let s = h.snapshot();
            if s.windows_sent == 4 {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            *got.lock().unwrap(),
            vec![1, 4, 5, 6],
            "in order, newest kept"
        );
        assert!(snap.send_failures >= 1);
        drop(h);
        join.join().unwrap();
    }

    /// A sink that rejects one window every time and accepts the others.
    struct Picky {
        refuse: u64,
        got: Arc<Mutex<Vec<u64>>>,
    }

    impl Sink for Picky {
        fn name(&self) -> &'static str {
            "picky"
        }
        fn send(&mut self, batch: &WindowBatch) -> Result<(), SinkError> {
            if batch.window_start == self.refuse {
                return Err(SinkError::Rejected {
                    sink: "picky",
                    reason: "too large".into(),
                });
            }
            self.got.lock().unwrap().push(batch.window_start);
            Ok(())
        }
    }

    #[test]
    fn a_window_rejected_every_time_is_dropped_and_the_rest_go_through() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = Picky {
            refuse: 2,
            got: Arc::clone(&got),
        };
        let (h, join) = spawn(Box::new(sink), 10, None).unwrap();
        for w in 1..=3 {
            h.dispatch(batch(w));
        }
        let snap = loop {
            let s = h.snapshot();
            if s.windows_sent == 2 {
                break s;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(*got.lock().unwrap(), vec![1, 3]);
        assert_eq!(snap.windows_dropped, 1);
        assert_eq!(snap.send_failures, u64::from(REJECTS_PER_WINDOW));
        drop(h);
        join.join().unwrap();
    }

    #[test]
    fn deadline_drops_what_is_left() {
        let sink = Flaky {
            down: Arc::new(Mutex::new(true)),
            got: Arc::new(Mutex::new(Vec::new())),
        };
        let (h, join) = spawn(Box::new(sink), 10, None).unwrap();
        for w in 1..=4 {
            h.dispatch(batch(w));
        }
        h.set_deadline(crate::merger::unix_ms());
        let counters = Arc::clone(&h.counters);
        drop(h);
        join.join().unwrap();
        assert_eq!(counters.windows_dropped.load(Ordering::Relaxed), 4);
        assert_eq!(counters.windows_sent.load(Ordering::Relaxed), 0);
    }
}
