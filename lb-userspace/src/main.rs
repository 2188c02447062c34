use clap::Parser;

/// Requests allocate and free many small buffers and header maps across worker threads;
/// mimalloc's thread-local free lists do that without glibc's arena locking and consolidation
/// passes (10% of a keep-alive profile under glibc malloc).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = lb_userspace::cli::Cli::parse();
    match lb_userspace::cli::execute(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {}", lb_userspace::cli::render_error(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
