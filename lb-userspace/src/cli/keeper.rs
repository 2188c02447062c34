//! PID 1 for upgrades in a container. When `sluice run --instance NAME` is the container's first
//! process, an upgrade's old process could not exit without ending the container (and the new
//! process with it), so it stays PID 1 as a keeper: it starts the serving process (itself, with
//! the same arguments), reaps every process that ends (the new process of an upgrade becomes
//! its child when the old one exits), forwards SIGTERM, SIGINT, SIGHUP and SIGUSR2 to every
//! process of the container, and exits with the last status once none is left. Envoy's
//! hot-restarter.py and HAProxy's master process play this part.

use std::{ffi::OsString, os::unix::process::CommandExt, process::ExitCode};

/// Set in the serving process a keeper starts, so it serves instead of keeping.
const KEEPER_CHILD_ENV: &str = "SLUICE_KEEPER_CHILD";

const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2];

/// Whether this process should keep rather than serve: PID 1, and not started by a keeper.
pub fn wanted() -> bool {
    std::process::id() == 1 && std::env::var_os(KEEPER_CHILD_ENV).is_none()
}

/// Runs the keeper until no process is left; its exit status is the last one reaped.
pub fn run() -> anyhow::Result<ExitCode> {
    // SAFETY: sigset operations on a set we own; blocking the forwarded signals (and SIGCHLD)
    // so `sigwait` receives them instead of handlers.
    let mask = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in FORWARDED.into_iter().chain([libc::SIGCHLD]) {
            libc::sigaddset(&mut set, signal);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut command = std::process::Command::new("/proc/self/exe");
    command.args(&args).env(KEEPER_CHILD_ENV, "1");
    // SAFETY: between fork and exec; sigprocmask is async-signal-safe. The serving process
    // must not inherit the keeper's blocked signals.
    unsafe {
        command.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    let first = command.spawn()?;
    eprintln!(
        "sluice: PID 1 keeps the serving process {} (upgrades replace it without ending the container)",
        first.id()
    );
    let mut last = 0;
    loop {
        let mut signal = 0;
        // SAFETY: waits for one of the blocked signals in `mask`.
        unsafe { libc::sigwait(&mask, &mut signal) };
        if signal == libc::SIGCHLD {
            match reap_all(&mut last) {
                Some(()) => continue,
                None => return Ok(ExitCode::from(last)),
            }
        }
        // -1: every process this one may signal, itself excepted (kill(2)).
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(-1, signal) };
    }
}

/// Reaps every ended child, recording the last status; `None` when no child is left.
fn reap_all(last: &mut u8) -> Option<()> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into the int we own.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            *last = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status) as u8
            } else {
                128 + libc::WTERMSIG(status) as u8
            };
            continue;
        }
        // 0: children remain, none ended; -1 (ECHILD): none left.
        return (pid == 0).then_some(());
    }
}
