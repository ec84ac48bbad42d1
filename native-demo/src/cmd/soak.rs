//! `adore soak`: one long generation, checked at intervals — tokens/s over the interval, the
//! process's resident memory, the KV cache's size, and whether the last logits are finite —
//! to show that a budgeted cache keeps memory and speed flat over thousands of tokens.

use std::path::PathBuf;

use adore::generate::{GenerateOptions, Generation};
use adore::{Sampling, Session};
use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use web_time::Instant;

use crate::options::{DefaultPolicy, ModelArgs, PolicyArgs, SamplingArgs};

#[derive(Args)]
pub struct SoakArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Tokens to generate (end-of-sequence does not stop the soak).
    #[arg(long, default_value_t = 8192)]
    tokens: usize,
    /// Tokens between samples.
    #[arg(long, default_value_t = 256)]
    every: usize,
    #[arg(long, default_value = "Once upon a time")]
    prompt: String,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Write the samples as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(a: SoakArgs) -> Result<()> {
    let m = a.model.load()?;
    let ids = m.tokenizer.encode(&a.prompt)?;
    let context = a.policy.context.unwrap_or(ids.len() + a.tokens);
    let mut session = a.policy.session(&m, &a.model, DefaultPolicy::FullUnlessBudget, context, false, None)?;
    soak(&mut session, &ids, a.tokens, a.every, a.sampling.sampling()?, a.json)
}

#[derive(Serialize)]
pub struct Sample {
    /// Tokens in the sequence (prompt included) at this sample.
    pub tokens: usize,
    /// Generated tokens per second over the interval since the previous sample.
    pub tokens_per_s: f64,
    pub kv_bytes: u64,
    /// Resident set size of this process (host memory; with a software GPU, its memory too).
    pub rss_bytes: Option<u64>,
    pub finite_logits: bool,
}

/// Resident memory from /proc (Linux); None elsewhere.
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn soak(session: &mut Session, prompt: &[u32], tokens: usize, every: usize, sampling: Sampling, json: Option<PathBuf>) -> Result<()> {
    if every == 0 || tokens < every {
        bail!("--every must be at least 1 and at most --tokens");
    }
    let opts = GenerateOptions { max_tokens: tokens, sampling, stop_at_eos: false, overlap: true };
    let mut g = pollster::block_on(Generation::start(session, prompt, &opts))?;
    let mut samples: Vec<Sample> = Vec::new();
    let (mut t, mut since) = (Instant::now(), 0usize);
    let mut generated = 0usize;
    println!("| tokens | tokens/s | KV MB | RSS MB | logits finite |\n|---:|---:|---:|---:|---|");
    while pollster::block_on(g.next(session))?.is_some() {
        generated += 1;
        since += 1;
        if generated.is_multiple_of(every) || generated == tokens {
            let logits = pollster::block_on(session.last_logits())?;
            let s = Sample {
                // The tokens fed so far (session.len() also counts a step queued ahead).
                tokens: prompt.len() + generated - 1,
                tokens_per_s: since as f64 / t.elapsed().as_secs_f64().max(1e-9),
                kv_bytes: session.kv_bytes(),
                rss_bytes: rss_bytes(),
                finite_logits: logits.iter().all(|x| x.is_finite()),
            };
            println!(
                "| {} | {:.2} | {:.1} | {} | {} |",
                s.tokens,
                s.tokens_per_s,
                s.kv_bytes as f64 / 1e6,
                s.rss_bytes.map_or("-".into(), |b| format!("{:.0}", b as f64 / 1e6)),
                if s.finite_logits { "yes" } else { "NO" }
            );
            samples.push(s);
            (t, since) = (Instant::now(), 0);
        }
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&samples)?)?;
    }
    if samples.iter().any(|s| !s.finite_logits) {
        bail!("non-finite logits during the soak");
    }
    Ok(())
}
