//! Worker health flowing down to the kernel: each worker writes a heartbeat into a BPF array;
//! a supervisor thread takes workers whose heartbeat is older than the bound out of the Maglev
//! tables, and puts them back when they beat again.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{Array, MapData};

use super::{Error, Result, steering::Steering};

/// CLOCK_MONOTONIC in nanoseconds: the clock both the workers and the supervisor read.
pub fn monotonic_ns() -> u64 {
    crate::clock_now(libc::CLOCK_MONOTONIC).as_nanos() as u64
}

/// One worker's handle on the heartbeat array: its own file descriptor, so workers share no
/// lock and no handle.
pub struct HeartbeatWriter {
    worker: u32,
    heartbeats: Array<MapData, u64>,
}

impl HeartbeatWriter {
    pub(super) fn open(map_id: u32, worker: u32) -> Result<HeartbeatWriter> {
        let map_error = |source| Error::Map { name: lb_common::HEARTBEATS_MAP, source };
        let data = MapData::from_id(map_id).map_err(map_error)?;
        let heartbeats = Array::try_from(aya::maps::Map::Array(data)).map_err(map_error)?;
        Ok(HeartbeatWriter { worker, heartbeats })
    }

    /// Records that this worker is alive now.
    pub fn beat(&mut self) {
        if let Err(e) = self.heartbeats.set(self.worker, monotonic_ns(), 0) {
            tracing::warn!(worker = self.worker, error = %e, "heartbeat write failed");
        }
    }
}

/// Timing of health supervision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthTiming {
    /// A worker whose last heartbeat is older than this is taken out of steering.
    pub stall_after: Duration,
}

impl HealthTiming {
    /// How often workers beat and the supervisor looks: a quarter of the bound, so one late
    /// beat is not a stall.
    pub fn period(&self) -> Duration {
        (self.stall_after / 4).max(Duration::from_millis(5))
    }
}

impl Default for HealthTiming {
    fn default() -> Self {
        HealthTiming { stall_after: Duration::from_millis(300) }
    }
}

/// The healthy set given each worker's last heartbeat (0 = never beat).
pub fn healthy_workers(heartbeats: &[u64], now_ns: u64, stall_after: Duration) -> BTreeSet<u32> {
    let bound = stall_after.as_nanos() as u64;
    heartbeats
        .iter()
        .enumerate()
        .filter(|&(_, &beat)| beat != 0 && now_ns.saturating_sub(beat) <= bound)
        .map(|(worker, _)| worker as u32)
        .collect()
}

/// The supervisor thread. Dropping it stops the thread.
pub struct Supervisor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Steering>>,
}

impl Supervisor {
    /// Starts watching `workers` heartbeats and keeps `steering` in line with them.
    pub(super) fn start(
        mut steering: Steering,
        mut heartbeats: Array<MapData, u64>,
        workers: u32,
        timing: HealthTiming,
    ) -> std::io::Result<Supervisor> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new().name("sluice-health".into()).spawn(move || {
                // A fresh start: no worker has beaten yet; give them one bound to do so.
                let start = monotonic_ns();
                for worker in 0..workers {
                    let _ = heartbeats.set(worker, start, 0);
                }
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(timing.period());
                    let beats: Vec<u64> = (0..workers).map(|w| heartbeats.get(&w, 0).unwrap_or(0)).collect();
                    let healthy = healthy_workers(&beats, monotonic_ns(), timing.stall_after);
                    let before = steering.healthy().clone();
                    if healthy == before {
                        continue;
                    }
                    for gone in before.difference(&healthy) {
                        tracing::warn!(worker = gone, "worker stalled or exited; new connections avoid it");
                    }
                    for back in healthy.difference(&before) {
                        tracing::info!(worker = back, "worker healthy again; back in steering");
                    }
                    if let Err(e) = steering.set_healthy(healthy) {
                        tracing::error!(error = %e, "updating the steering tables failed");
                    }
                }
                steering
            })?
        };
        Ok(Supervisor { stop, thread: Some(thread) })
    }

    /// Stops the thread and returns the steering tables it owned.
    pub fn stop(mut self) -> Option<Steering> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<Steering> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_means_beat_within_the_bound() {
        let bound = Duration::from_millis(300);
        let now = 10_000_000_000;
        let beats = [now - 100_000_000, now - 400_000_000, 0, now];
        assert_eq!(healthy_workers(&beats, now, bound), BTreeSet::from([0, 3]));
    }

    #[test]
    fn period_is_a_quarter_of_the_bound() {
        assert_eq!(HealthTiming::default().period(), Duration::from_millis(75));
        assert_eq!(HealthTiming { stall_after: Duration::from_millis(4) }.period(), Duration::from_millis(5));
    }
}
