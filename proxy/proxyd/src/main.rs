use clap::Parser;

fn main() {
    let args = proxyd::cli::Args::parse();
    proxyd::logging::init(args.log_format);
    if let Err(e) = proxyd::server::run(args) {
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
