//! `adore perplexity`: perplexity over non-overlapping windows from the start of a text file.

use std::path::PathBuf;

use adore::generate::perplexity;
use anyhow::{Context as _, Result};
use clap::Args;

use crate::options::{DefaultPolicy, ModelArgs, PolicyArgs};
use crate::progress;

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[arg(long)]
    file: PathBuf,
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Most windows to score (all that fit by default).
    #[arg(long)]
    windows: Option<usize>,
    /// Print {"ppl": .., "tokens_scored": ..} on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let model = a.model.load()?;
    let ids = model.tokenizer.encode(&text)?;
    let context = a.policy.context.unwrap_or(a.window);
    let mut session = a.policy.session(&model, &a.model, DefaultPolicy::FullUnlessBudget, context, true, None)?;
    let n = a.windows.unwrap_or(usize::MAX);
    let bar = progress::count((ids.len() / a.window.max(1)).min(n) as u64, "perplexity", "windows");
    let r = pollster::block_on(perplexity(&mut session, &ids, a.window, n, |done, _| bar.set_position(done as u64)))?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::json!({"ppl": r.ppl, "tokens_scored": r.tokens_scored}));
    } else {
        println!("perplexity {:.4} over {} tokens ({} windows of {})", r.ppl, r.tokens_scored, r.windows, a.window);
    }
    Ok(())
}
