use clap::Parser;

fn main() {
    let cli = posterior::cli::Cli::parse();
    if let Err(e) = posterior::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
