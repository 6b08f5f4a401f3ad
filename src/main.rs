use clap::Parser;

fn main() {
    // Activations are reused instead of mapped afresh per layer (see the function's docs).
    posterior::nn::keep_freed_memory();
    let cli = posterior::cli::Cli::parse();
    if let Err(e) = posterior::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
