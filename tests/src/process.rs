//! Child processes that cannot outlive the test: killed and reaped on drop, and asked to die
//! with their parent (PR_SET_PDEATHSIG) if the test process is killed outright.

use std::{
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context;

/// A running child whose stderr and stdout are captured line by line.
///
/// The kernel's parent-death signal follows the *thread* that spawned the child, so spawn from
/// the test's own thread, not from a short-lived one such as `Netns::run`.
pub struct ChildGuard {
    child: Child,
    output: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl ChildGuard {
    pub fn spawn(mut command: Command) -> anyhow::Result<ChildGuard> {
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches only the child's own state.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().with_context(|| format!("cannot start {command:?}"))?;
        let output = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            readers.push(collect(stdout, output.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            readers.push(collect(stderr, output.clone()));
        }
        Ok(ChildGuard { child, output, readers })
    }

    /// Everything the child printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the child has exited, without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGKILL and reaps the child.
    pub fn kill(mut self) -> anyhow::Result<ExitStatus> {
        self.child.kill()?;
        Ok(self.child.wait()?)
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit; SIGKILL after that. Returns
    /// the exit status and everything the child printed.
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, String)> {
        // SAFETY: signalling our own child by pid; it has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = match crate::wait_for(timeout, "the child to exit after SIGTERM", || self.try_status()) {
            Ok(status) => status,
            Err(_) => {
                let _ = self.child.kill();
                self.child.wait()?
            }
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ok((status, self.output()))
    }
}

fn collect(stream: impl Read + Send + 'static, output: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut out) = output.lock() {
                out.push_str(&line);
                out.push('\n');
            }
        }
    })
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
