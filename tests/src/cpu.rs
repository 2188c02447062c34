//! Which CPUs a test thread runs on: BPF_PROG_TEST_RUN runs a program on the caller's CPU, so
//! timing runs pin to one CPU and concurrency tests spread threads over several.

use anyhow::{Context, ensure};

/// The CPUs this thread may run on, in order.
pub fn allowed() -> anyhow::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is a plain bit array for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes of size_of::<cpu_set_t>() bytes; 0 means this thread.
    let read = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    ensure!(read == 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
    // SAFETY: `set` was filled by the kernel; every index below CPU_SETSIZE is in range.
    Ok((0..libc::CPU_SETSIZE as usize).filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) }).collect())
}

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: usize) -> anyhow::Result<()> {
    ensure!(cpu < libc::CPU_SETSIZE as usize, "CPU {cpu} is past CPU_SETSIZE");
    // SAFETY: as in `allowed`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is valid for reads of size_of::<cpu_set_t>() bytes; 0 means this thread.
    let pinned = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    ensure!(pinned == 0, "sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Pins the calling thread to the CPU it is on now; returns that CPU.
pub fn pin_to_current() -> anyhow::Result<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    let cpu = usize::try_from(cpu)
        .ok()
        .with_context(|| format!("sched_getcpu: {}", std::io::Error::last_os_error()))?;
    pin_to(cpu)?;
    Ok(cpu)
}
