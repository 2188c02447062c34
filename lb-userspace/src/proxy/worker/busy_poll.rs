//! Busy polling (`busy_poll_us`, HAProxy's `busy-polling`): after its last piece of network
//! work, a worker keeps polling for events for a while instead of going to sleep at once.
//!
//! A sleeping worker is woken by the CPU that received the packet, with an inter-processor
//! interrupt; inside a VM sending one costs that CPU a VM exit. When a worker's core has idle
//! moments between events (new TLS handshakes: the client thinks between flights, the backend
//! answers a moment later), those wake-ups are paid by the CPUs that run the clients and the
//! backends. Polling through the gap avoids them, at the price of the worker's own CPU for up to
//! the window after each burst of work: worth it on a node whose cores belong to Sluice, not on
//! one shared with other pods, hence off by default.
//!
//! The spinner is a task that yields in a loop: each yield makes the runtime poll its I/O driver
//! without blocking and run whatever became ready. It stops once a window has passed without
//! network work (accepts and client connection I/O, see [`worked`]); the runtime's park hook
//! starts it again when the runtime is about to sleep after new work, so an idle worker sleeps.

use std::{
    cell::Cell,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::Notify;

thread_local! {
    /// Accepts and client connection reads and writes done on this thread (wrapping).
    static WORK: Cell<u64> = const { Cell::new(0) };
}

/// Notes that this thread accepted a connection or moved bytes on one.
pub fn worked() {
    WORK.with(|work| work.set(work.get().wrapping_add(1)));
}

fn work_count() -> u64 {
    WORK.with(Cell::get)
}

/// State shared by the runtime's park hook and the spinner task.
#[derive(Default)]
struct Shared {
    start: Notify,
    /// The work count when the spinner last stopped: the hook restarts it only after more.
    stopped_at: AtomicU64,
}

/// The spinner of one worker runtime.
pub struct Spinner {
    shared: Arc<Shared>,
    window: Duration,
}

impl Spinner {
    /// Hooks busy polling into the runtime being built; `None` when `window` is zero (off).
    /// The returned spinner must run as a task of that runtime.
    pub fn install(builder: &mut tokio::runtime::Builder, window: Duration) -> Option<Spinner> {
        if window.is_zero() {
            return None;
        }
        let shared = Arc::new(Shared::default());
        let hook = shared.clone();
        // Runs on the worker thread just before it would sleep.
        builder.on_thread_park(move || {
            if work_count() != hook.stopped_at.load(Ordering::Relaxed) {
                hook.start.notify_one();
            }
        });
        Some(Spinner { shared, window })
    }

    pub async fn run(self) {
        loop {
            self.shared.start.notified().await;
            let mut seen = work_count();
            let mut last_work = Instant::now();
            while last_work.elapsed() < self.window {
                tokio::task::yield_now().await;
                let now = work_count();
                if now != seen {
                    seen = now;
                    last_work = Instant::now();
                }
            }
            self.shared.stopped_at.store(seen, Ordering::Relaxed);
        }
    }
}
