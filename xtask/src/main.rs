//! `cargo xtask`: Sluice's developer commands. Each subcommand lives in its own module.

mod bench;
mod build;
mod demo;
mod fuzz;
mod prereqs;
mod soak;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Sluice developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install (as root on Debian) every package and tool that building, `test` and `demo`
    /// need, or print the exact commands to run; `--bench` adds the benchmarks' peers.
    Setup {
        /// Also nginx, HAProxy, wrk and h2load for `cargo xtask bench l7|tls`.
        #[arg(long)]
        bench: bool,
    },
    /// Check (and as root on Debian, install) the eBPF toolchain, then build the eBPF object.
    BuildEbpf {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Install what the suites need, then run the unit tests and every end-to-end suite. The
    /// tests that need root (namespaces, XDP) run as root; without root they are reported as
    /// ignored and the command fails, unless SLUICE_SKIP_PRIVILEGED_TESTS=1 is set.
    Test {
        /// Arguments passed on to the test binaries (a name filter, --nocapture, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build Sluice, start it in a demo topology with XDP, send a bounded batch of requests and
    /// show how connections spread; everything is cleaned up on exit or Ctrl-C.
    Demo(demo::DemoArgs),
    /// Build the cargo-fuzz targets of tests/fuzz/ (installing cargo-fuzz when missing) and run each,
    /// or TARGET, for a bounded time on one core; prints executions and coverage per target.
    Fuzz {
        /// One target (`cargo xtask fuzz --list` names them); all when left out.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Print the targets and exit.
        #[arg(long)]
        list: bool,
    },
    /// Run a benchmark and print its table and `name=value` lines.
    Bench {
        #[command(subcommand)]
        what: bench::BenchTarget,
    },
    /// Run the binary under mixed HTTP/1.1, HTTP/2, HTTPS and WebSocket traffic with a reload
    /// every 3 s for N minutes; report failed requests, RSS and open descriptors.
    Soak {
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Build and run `sluice` with the given arguments (default: `run` on the built-in config).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Setup { bench } => prereqs::ensure(&prereqs::setup_groups(bench)),
        Task::BuildEbpf { release } => {
            let object = build::build_ebpf(release)?;
            println!("eBPF object: {}", object.display());
            Ok(())
        }
        Task::Test { args } => test::run(&args),
        Task::Demo(args) => demo::run(args),
        Task::Bench { what } => bench::run(what),
        Task::Soak { minutes } => soak::run(minutes),
        Task::Fuzz { list: true, .. } => {
            prereqs::ensure(&[prereqs::Group::Fuzz])?;
            fuzz::targets()?.iter().for_each(|t| println!("{t}"));
            Ok(())
        }
        Task::Fuzz { target, seconds, .. } => fuzz::run(target.as_deref(), seconds),
        Task::Run { args } => {
            let sluice = build::build_sluice(true)?;
            let args = if args.is_empty() { vec!["run".to_owned()] } else { args };
            let status = std::process::Command::new(sluice).args(&args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}
