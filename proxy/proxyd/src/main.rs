/// jemalloc, as pingora is run in production: per request ~12 % fewer instructions than
/// glibc's malloc, and memory given back after load (glibc's arenas keep it). Measured in
/// benches/RESULTS.md.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser;

fn main() {
    let config = match proxyd::config::Config::from_args(proxyd::cli::Args::parse()) {
        Ok(config) => config,
        Err(errors) => {
            // `error: --flag: what`, one per line, then the count.
            eprintln!("{errors}");
            std::process::exit(1);
        }
    };
    proxyd::observe::logging::init(config.log_format);
    if let Err(e) = proxyd::server::run(config) {
        // Routes-file problems already read `error: file:line:col: ...`, one per line.
        let msg = format!("{e:#}");
        if msg.starts_with("error: ") {
            eprintln!("{msg}");
        } else {
            eprintln!("proxyd: error: {msg}");
        }
        std::process::exit(1);
    }
}
