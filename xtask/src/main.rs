//! `cargo xtask`: Sluice's developer commands. Each subcommand lives in its own module.

mod bench;
mod build;
mod demo;
mod prereqs;
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
    /// Check (and as root on Debian, install) the eBPF toolchain, then build the eBPF object.
    BuildEbpf {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Unit tests, then the privileged end-to-end suites (namespaces, XDP) when run as root.
    Test {
        /// Arguments passed on to the test binaries (a name filter, --nocapture, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build Sluice, start it in a demo topology with XDP, send a bounded batch of requests and
    /// show how connections spread; everything is cleaned up on exit or Ctrl-C.
    Demo(demo::DemoArgs),
    /// Run a benchmark and print its table and `name=value` lines.
    Bench {
        #[command(subcommand)]
        what: bench::BenchTarget,
    },
    /// Build and run `sluice` with the given arguments (default: `run` on the built-in config).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::BuildEbpf { release } => {
            let object = build::build_ebpf(release)?;
            println!("eBPF object: {}", object.display());
            Ok(())
        }
        Task::Test { args } => test::run(&args),
        Task::Demo(args) => demo::run(args),
        Task::Bench { what } => bench::run(what),
        Task::Run { args } => {
            let sluice = build::build_sluice(true)?;
            let args = if args.is_empty() { vec!["run".to_owned()] } else { args };
            let status = std::process::Command::new(sluice).args(&args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}
