//! `adore eval`: each policy against full attention on a text, teacher-forced token by token
//! (top-1 agreement, mean KL divergence, perplexity per policy and budget); optionally greedy
//! generations from prompts compared with full attention's (ROUGE-L, BLEU); JSON, a markdown
//! table and SVG charts.

mod chart;
mod measure;
mod overlap;

use std::path::PathBuf;

use adore::policy::{CacheUpdate, Oracle, Policy, PolicyKind, DEFAULT_BUDGET};
use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::options::{check_cache_updates, ModelArgs, PartsArgs};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Plain text to score (its first --tokens tokens).
    #[arg(long)]
    text: PathBuf,
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "full,window,sink,h2o,tova,adore,quest,oracle")]
    policies: Vec<PolicyKind>,
    #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
    budgets: Vec<usize>,
    /// Diagnostic oracles, each run at every budget: ranked by `attention` (the oracle's own
    /// ranking), `controller` (the adore controller's score), `layer-L` (layer L's attention
    /// alone, layers up to L attending densely), `per-layer` (each layer its own choice),
    /// `keys` (adore's short keys), `quest` or `quest-dense-N` (Quest with its first N layers
    /// attending densely, as the Quest paper runs it with N = 2); with `-protected`, adore's sinks and recent window are protected (`--recent` or adore's
    /// default) and the rest re-chosen every step.
    #[arg(long, value_delimiter = ',')]
    oracles: Vec<Oracle>,
    #[command(flatten)]
    parts: PartsArgs,
    /// How kept rows reach their slots for h2o, tova and adore: scatter, or matmul (the
    /// paper's selection-matrix product, as an ablation).
    #[arg(long, value_enum, default_value = "scatter")]
    cache_update: CacheUpdate,
    /// JSON lines with a "prompt" each: greedy generations compared with full attention's
    /// (ROUGE-L, BLEU).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Tokens generated per prompt.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Write the rows as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG chart of top-1 agreement against budget per policy.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// With --speed-plot: an `adore bench --json` file to chart decode tokens/s against context.
    #[arg(long)]
    bench: Option<PathBuf>,
    #[arg(long)]
    speed_plot: Option<PathBuf>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    if a.budgets.is_empty() || a.budgets.contains(&0) || a.tokens < 2 {
        bail!("--budgets must list positive budgets and --tokens be at least 2");
    }
    if a.speed_plot.is_some() != a.bench.is_some() {
        bail!("--speed-plot and --bench go together");
    }
    check_cache_updates(&[a.cache_update], &a.policies)?;
    let m = a.model.load()?;
    let body = std::fs::read_to_string(&a.text).with_context(|| format!("reading {}", a.text.display()))?;
    let mut ids = m.tokenizer.encode(&body)?;
    if ids.len() < a.tokens {
        eprintln!("eval: {} holds {} tokens, fewer than --tokens {}; scoring them all", a.text.display(), ids.len(), a.tokens);
    }
    ids.truncate(a.tokens.min(m.config.context));
    let mut runs = Vec::new();
    for &kind in &a.policies {
        if kind == PolicyKind::Full {
            runs.push(measure::Run::new(a.parts.compared(kind, DEFAULT_BUDGET)?));
            continue;
        }
        for &b in &a.budgets {
            runs.push(measure::Run::new(a.parts.compared(kind, b)?));
        }
    }
    for &oracle in &a.oracles {
        for &b in &a.budgets {
            // A protected oracle protects what adore does.
            let recent = a.parts.recent.unwrap_or_else(|| Policy::default_recent(PolicyKind::Adore, b, a.parts.sinks));
            let parts = adore::policy::PolicyParts { recent: Some(recent), ..a.parts.parts(b) };
            runs.push(measure::Run { policy: Policy::shared(PolicyKind::Oracle, parts)?, oracle });
        }
    }
    let e = measure::Eval {
        model: &m,
        runs: &runs,
        controller: a.parts.controller(&m)?,
        index: a.parts.index(&m)?,
        cache_update: a.cache_update,
        kv_cache: a.model.kv_cache.into(),
    };
    eprintln!("eval: {} tokens of {}, {} policy runs", ids.len(), a.text.display(), runs.len());
    let mut rows = e.teacher_forced(&ids)?;
    if let Some(path) = &a.prompts {
        let lines = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut list = Vec::new();
        for (i, line) in lines.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
            let Some(p) = v["prompt"].as_str() else { bail!("{}:{}: no \"prompt\" string", path.display(), i + 1) };
            list.push(m.tokenizer.encode(p)?);
        }
        e.generations(&list, a.max_tokens, &mut rows)?;
    }
    print!("{}", measure::markdown(&rows));
    let write = |path: &PathBuf, bytes: String| std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()));
    if let Some(path) = &a.json {
        let doc = serde_json::json!({"model": m.name, "text": a.text.display().to_string(), "tokens": ids.len(), "rows": rows});
        write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    if let Some(path) = &a.plot {
        let title = format!("Agreement with full attention, {} tokens", ids.len());
        write(path, chart::svg_chart(&title, "budget m (KV slots)", "top-1 agreement", &chart::fidelity_series(&rows), true))?;
    }
    if let (Some(path), Some(b)) = (&a.speed_plot, &a.bench) {
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(b).with_context(|| format!("reading {}", b.display()))?)
            .with_context(|| format!("{} is not JSON", b.display()))?;
        write(path, chart::svg_chart("Decode speed", "context (tokens)", "decode tokens/s", &chart::speed_series(&doc)?, true))?;
    }
    Ok(())
}
