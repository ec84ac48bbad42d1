//! `adore generate`: continue a prompt, streaming the text to stdout (or one JSON object).

use std::io::Write;

use adore::GenerateOptions;
use anyhow::{bail, Result};
use clap::Args;

use crate::options::{DefaultPolicy, ModelArgs, PolicyArgs, SamplingArgs};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// The prompt text (special tokens such as <|im_start|> are recognised).
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object at the end (text, token ids, statistics) instead of streaming.
    #[arg(long)]
    json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let sampling = a.sampling.sampling()?;
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let model = a.model.load()?;
    let ids = model.tokenizer.encode(&a.prompt)?;
    let context = a.policy.context.unwrap_or((ids.len() + a.max_tokens).min(model.config.context));
    let mut session = a.policy.session(&model, &a.model, DefaultPolicy::FullUnlessBudget, context, false, Some(&ids))?;
    let opts = GenerateOptions { max_tokens: a.max_tokens, sampling, stop_at_eos: true, overlap: true };
    let mut stdout = std::io::stdout();
    let mut text = String::new();
    let (tokens, stats) = pollster::block_on(adore::generate(&mut session, &ids, &opts, |_, piece| {
        if a.json {
            text.push_str(piece);
        } else {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        }
        true
    }))?;
    if a.json {
        println!("{}", serde_json::json!({ "text": text, "tokens": tokens, "stats": stats }));
    } else {
        println!();
    }
    eprintln!(
        "prompt {} tokens, {:.1} tokens/s prefill; generated {} tokens, {:.1} tokens/s decode; stop: {:?}",
        stats.prompt_tokens,
        stats.prefill_tokens_per_s(),
        stats.generated_tokens,
        stats.decode_tokens_per_s(),
        stats.stop
    );
    Ok(())
}
