use clap::Parser;

fn main() {
    let args = proxyd::cli::Args::parse();
    proxyd::logging::init(args.log_format);
    if let Err(e) = proxyd::server::run(args) {
        eprintln!("proxyd: error: {e:#}");
        std::process::exit(1);
    }
}
