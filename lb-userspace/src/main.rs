use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lb_userspace::cli::Cli::parse();
    match lb_userspace::cli::execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
