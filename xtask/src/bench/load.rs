//! The load generators: wrk (HTTP/1.1, HTTPS) and h2load (HTTP/2), pinned to the client core,
//! each run bounded in time, their output parsed into requests/s and latency percentiles.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::peers::CLIENT_CORE;
use anyhow::{Context, bail};

/// A load generator and its shape.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// wrk with one thread and `conns` connections; `close` sends `Connection: close`, so every
    /// request opens a new connection (and, over TLS, makes a new handshake; wrk keeps its session
    /// across reconnects, so these resume with a ticket and a fresh key exchange).
    /// `access` requests [`ACCESS_PATH`] with [`ACCESS_AUTHORIZATION`]: the route behind an
    /// allow list and basic auth.
    Wrk { conns: u32, tls: bool, close: bool, access: bool },
    /// h2load with one thread, `conns` connections and `streams` concurrent streams each; over
    /// TLS with `tls` (ALPN h2), else h2c with prior knowledge.
    H2load { conns: u32, streams: u32, tls: bool },
    /// `clients` new HTTPS/1.1 clients with one request each (h2load `--h1 -c N -n N`): every
    /// request pays a full TLS handshake, since h2load's clients keep no session to resume. A
    /// count, not a duration: the run lasts as long as the handshakes take.
    FullHandshakes { clients: u32 },
}

impl Load {
    pub fn describe(self) -> String {
        match self {
            Load::Wrk { conns, tls, close, access } => {
                format!(
                    "wrk -t1 -c{conns}{}{}{}",
                    if close { " -H 'Connection: close'" } else { "" },
                    if access { " -H 'Authorization: Basic ...'" } else { "" },
                    if tls { " https://" } else { " http://" }
                ) + if access { ACCESS_PATH } else { "" }
            }
            Load::H2load { conns, streams, tls } => {
                let how = if tls { "https://, ALPN h2" } else { "h2c, prior knowledge" };
                format!("h2load -t1 -c{conns} -m{streams} ({how})")
            }
            Load::FullHandshakes { clients } => {
                format!(
                    "h2load -t1 --h1 -c{clients} -n{clients} https:// (one request per new client, no resumption)"
                )
            }
        }
    }
}

/// The path every proxy serves behind an allow list (loopback allowed, the rest denied) and
/// basic auth.
pub const ACCESS_PATH: &str = "/access/";
/// `bench:bench-pass`.
pub const ACCESS_AUTHORIZATION: &str = "Basic YmVuY2g6YmVuY2gtcGFzcw==";
/// Its htpasswd line (`openssl passwd -apr1 -salt benchslt bench-pass`): Apache MD5, which
/// nginx verifies itself (bcrypt it leaves to the system's crypt()).
pub const ACCESS_HTPASSWD: &str = "bench:$apr1$benchslt$ygwD/O5TKQCKsh4RVyNzd/";

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    /// Requests completed (any status).
    pub requests: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors, timeouts and non-2xx answers.
    pub errors: u64,
}

/// Runs `load` against `addr` for `seconds`, pinned to the client core; killed if it overruns.
pub fn run(load: Load, addr: SocketAddr, seconds: u64, dir: &Path) -> anyhow::Result<Outcome> {
    match load {
        Load::Wrk { conns, tls, close, access } => {
            let scheme = if tls { "https" } else { "http" };
            let mut command = pinned("wrk");
            command.args([
                "-t1",
                &format!("-c{conns}"),
                &format!("-d{seconds}s"),
                "--timeout",
                "10s",
                "--latency",
            ]);
            if close {
                command.args(["-H", "Connection: close"]);
            }
            if access {
                command.args(["-H", &format!("Authorization: {ACCESS_AUTHORIZATION}")]);
            }
            command.arg(format!("{scheme}://{addr}{}", if access { ACCESS_PATH } else { "/" }));
            let output = bounded(command, seconds, dir)?;
            parse_wrk(&output).with_context(|| format!("cannot read wrk's output:\n{output}"))
        }
        Load::H2load { conns, streams, tls } => {
            let scheme = if tls { "https" } else { "http" };
            let shape = [format!("-c{conns}"), format!("-m{streams}"), "-D".into(), seconds.to_string()];
            h2load(&shape, &format!("{scheme}://{addr}/"), seconds, dir)
        }
        Load::FullHandshakes { clients } => {
            let shape = ["--h1".into(), format!("-c{clients}"), format!("-n{clients}")];
            h2load(&shape, &format!("https://{addr}/"), seconds, dir)
        }
    }
}

/// One h2load run of `shape` against `url`, its latencies from its log.
fn h2load(shape: &[String], url: &str, seconds: u64, dir: &Path) -> anyhow::Result<Outcome> {
    let log = dir.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let mut command = pinned("h2load");
    command.arg("-t1").args(shape).arg(format!("--log-file={}", log.display())).arg(url);
    let output = bounded(command, seconds, dir)?;
    let latencies = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    parse_h2load(&output, &latencies).with_context(|| format!("cannot read h2load's output:\n{output}"))
}

fn pinned(program: &str) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &CLIENT_CORE.to_string(), program]);
    command
}

/// Runs `command` to completion, at most `seconds` plus a margin; returns what it printed
/// (stdout then stderr, through files in `dir`). Killed and reaped if it overruns, on
/// interruption, and on any error.
fn bounded(mut command: Command, seconds: u64, dir: &Path) -> anyhow::Result<String> {
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            if self.0.try_wait().ok().flatten().is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
    let shown = format!("{command:?}");
    let (out_path, err_path) = (dir.join("load.out"), dir.join("load.err"));
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let mut child = Reaped(command.spawn().with_context(|| format!("cannot start {shown}"))?);
    let deadline = Instant::now() + Duration::from_secs(seconds + 20);
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline || super::interrupted() {
            drop(child);
            bail!("{shown} did not finish in time or was interrupted");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default()
        + &std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    let _ = std::fs::remove_file(&err_path);
    if !status.success() {
        bail!("{shown} failed with {status}:\n{output}");
    }
    Ok(output)
}

/// A wrk duration (`581.00us`, `4.30ms`, `1.08s`, `1.02m`) in milliseconds.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => return None,
    };
    Some(value * factor)
}

fn parse_wrk(output: &str) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => outcome.p50_ms = wrk_duration_ms(value).context("p50")?,
            ["99%", value] => outcome.p99_ms = wrk_duration_ms(value).context("p99")?,
            ["Requests/sec:", value] => outcome.rps = value.parse()?,
            [count, "requests", "in", secs, ..] => {
                outcome.requests = count.parse()?;
                outcome.seconds = wrk_duration_ms(secs.trim_end_matches(',')).context("run time")? / 1000.0;
            }
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                outcome.errors +=
                    rest.iter().filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok()).sum::<u64>();
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => outcome.errors += n.parse::<u64>()?,
            _ => {}
        }
    }
    if outcome.requests == 0 || outcome.rps == 0.0 {
        bail!("no request completed");
    }
    Ok(outcome)
}

fn parse_h2load(output: &str, latency_log: &str) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // finished in 6.00s, 52345.67 req/s, 2.0MB/s
            let mut parts = rest.split(", ");
            outcome.seconds =
                wrk_duration_ms(parts.next().context("duration")?).context("duration")? / 1000.0;
            outcome.rps = parts.next().and_then(|p| p.strip_suffix(" req/s")).context("req/s")?.parse()?;
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            // 314074 total, 314574 started, 314074 done, 314074 succeeded, 0 failed, 0 errored, 0 timeout
            for part in rest.split(", ") {
                let (n, what) = part.split_once(' ').context("requests line")?;
                let n: u64 = n.parse()?;
                match what {
                    "done" => outcome.requests = n,
                    "failed" | "timeout" => outcome.errors += n,
                    _ => {}
                }
            }
        }
    }
    // The log has one line per request: start time, status, duration in microseconds.
    let mut durations: Vec<u64> =
        latency_log.lines().filter_map(|l| l.rsplit('\t').next()?.trim().parse().ok()).collect();
    if outcome.requests == 0 || durations.is_empty() {
        bail!("no request completed");
    }
    durations.sort_unstable();
    outcome.p50_ms = percentile(&durations, 50.0) as f64 / 1000.0;
    outcome.p99_ms = percentile(&durations, 99.0) as f64 / 1000.0;
    Ok(outcome)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk() {
        let out = "Running 4s test @ http://127.0.0.1:1/\n  1 threads and 50 connections\n  \
                   Latency Distribution\n     50%  581.00us\n     75%    1.00ms\n     99%    1.08s \n  \
                   240000 requests in 4.00s, 30.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  \
                   Non-2xx or 3xx responses: 5\nRequests/sec:  60134.49\nTransfer/sec: 1MB\n";
        let o = parse_wrk(out).unwrap();
        assert_eq!(o.requests, 240000);
        assert!((o.seconds - 4.0).abs() < 1e-9);
        assert!((o.p50_ms - 0.581).abs() < 1e-9);
        assert!((o.p99_ms - 1080.0).abs() < 1e-9);
        assert_eq!(o.errors, 8);
        assert!((o.rps - 60134.49).abs() < 1e-9);
    }

    #[test]
    fn reads_h2load() {
        let out = "finished in 6.00s, 52345.67 req/s, 2.0MB/s\nrequests: 314074 total, 314574 started, \
                   314074 done, 314070 succeeded, 4 failed, 0 errored, 0 timeout\n";
        let log = (1..=100).map(|i| format!("1700000000\t200\t{}\n", i * 1000)).collect::<String>();
        let o = parse_h2load(out, &log).unwrap();
        assert_eq!(o.requests, 314074);
        assert_eq!(o.errors, 4);
        assert!((o.p50_ms - 50.0).abs() < 1e-9);
        assert!((o.p99_ms - 99.0).abs() < 1e-9);
    }
}
