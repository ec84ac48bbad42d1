//! `adore`: generate, chat, perplexity, bench, eval and more on the command line. Generated
//! text goes to stdout; progress, statistics and the adapter go to stderr. Each command lives
//! in `cmd/<name>.rs`; this file only parses and dispatches.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cmd;
mod options;
mod progress;
#[cfg(feature = "train")]
mod train;

#[derive(Parser)]
#[command(name = "adore", version, about = "WebGPU inference for Llama-family models with adaptive KV-cache token release")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt, streaming the text to stdout.
    Generate(cmd::generate::GenerateArgs),
    /// Interactive chat with the model's chat template (adore keeps the KV cache at a fixed size).
    Chat(cmd::chat::ChatArgs),
    /// Perplexity over non-overlapping windows from the start of a text file.
    Perplexity(cmd::perplexity::PerplexityArgs),
    /// Prefill and decode tokens/s per context length: each policy prefills once, growing
    /// through the contexts in ascending order, and decodes at each.
    Bench(cmd::bench::BenchArgs),
    /// One long generation checked every --every tokens (tokens/s, resident memory, KV size,
    /// finite logits): a budgeted cache should keep all of them flat.
    Soak(cmd::soak::SoakArgs),
    /// Download (if needed) and verify a known model (the default without a name); print its path.
    Fetch(cmd::fetch::FetchArgs),
    /// Serve the browser demo and a model on 127.0.0.1; prints the URL to open.
    Serve(cmd::serve::ServeArgs),
    /// Each policy against full attention on a text, teacher-forced token by token: top-1
    /// agreement, mean KL divergence and perplexity per policy and budget.
    Eval(cmd::eval::EvalArgs),
    /// Teacher data for controller training: full attention over the texts on the CPU, the
    /// attention of sampled queries averaged over heads and layers (feature `train`).
    #[cfg(feature = "train")]
    Collect(cmd::collect::CollectArgs),
    /// Train an ADORE controller on `collect` data (feature `train`).
    #[cfg(feature = "train")]
    TrainController(cmd::train_controller::TrainArgs),
    /// (This build has no training: the commands say how to get it.)
    #[cfg(not(feature = "train"))]
    #[command(hide = true)]
    Collect(NoTraining),
    #[cfg(not(feature = "train"))]
    #[command(hide = true)]
    TrainController(NoTraining),
    /// ADORE controller files.
    Controller {
        #[command(subcommand)]
        action: cmd::controller::Action,
    },
    /// Key indexes: adore's ranking from the model's own queries and keys.
    Index {
        #[command(subcommand)]
        action: cmd::index::Action,
    },
}

fn main() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => cmd::generate::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Perplexity(a) => cmd::perplexity::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Soak(a) => cmd::soak::run(a),
        Command::Fetch(a) => cmd::fetch::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        #[cfg(feature = "train")]
        Command::Collect(a) => cmd::collect::run(a),
        #[cfg(feature = "train")]
        Command::TrainController(a) => cmd::train_controller::run(a),
        #[cfg(not(feature = "train"))]
        Command::Collect(_) | Command::TrainController(_) => {
            anyhow::bail!("this build has no training support: build with `cargo build --release -p adore-cli --features train`")
        }
        Command::Controller { action } => cmd::controller::run(action),
        Command::Index { action } => cmd::index::run(action),
    }
}

/// Any arguments, for a command this build lacks.
#[cfg(not(feature = "train"))]
#[derive(clap::Args)]
struct NoTraining {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<String>,
}
