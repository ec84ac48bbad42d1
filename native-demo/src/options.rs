//! The option groups commands share: the model (and loading it), the release policy, sampling.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use adore::controller::Controller;
use adore::index::{KeyIndex, FIT_MAX_TOKENS, FIT_MIN_TOKENS};
use adore::ops::KvType;
use adore::policy::{CacheUpdate, Policy, PolicyKind, PolicyParts, Ranking, RebuildFrom, DEFAULT_BUDGET, DEFAULT_SINKS};
use adore::{Context, ContextOptions, Model, Sampling, Session, SessionOptions};
use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::progress;

#[derive(Args)]
pub struct ModelPath {
    /// A .gguf file, a Hugging Face directory (config.json, *.safetensors, tokenizer.json), or
    /// the name of a known model (`adore fetch --list`), fetched once into the cache directory.
    /// Without it the default model is fetched.
    #[arg(long)]
    pub model: Option<PathBuf>,
}

impl ModelPath {
    /// The model path given, a known model's (fetched once), or the default model's.
    pub fn path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) if p.exists() => Ok(p.clone()),
            Some(p) => match p.to_str().and_then(adore::fetch::known) {
                Some(m) => crate::cmd::fetch::fetch(m),
                // Neither a file nor a name: loading it gives the error that says so.
                None => Ok(p.clone()),
            },
            None => crate::cmd::fetch::default_model(),
        }
    }
}

#[derive(Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub path: ModelPath,
    /// Prompt tokens per GPU submit.
    #[arg(long, default_value_t = 256)]
    pub chunk: usize,
    /// How the KV cache stores keys and values: f16 takes half the memory and half the bytes
    /// read per step.
    #[arg(long, value_enum, default_value_t = KvCache::F32)]
    pub kv_cache: KvCache,
    /// Leave the adapter's subgroup operations unused (the kernels' workgroup-memory path), to
    /// compare the two.
    #[arg(long)]
    pub no_subgroups: bool,
}

/// `--kv-cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KvCache {
    F16,
    F32,
}

impl From<KvCache> for KvType {
    fn from(k: KvCache) -> Self {
        match k {
            KvCache::F16 => KvType::F16,
            KvCache::F32 => KvType::F32,
        }
    }
}

impl ModelArgs {
    /// Loads the model onto the first adapter, with progress; says which adapter and model.
    pub fn load(&self) -> Result<Arc<Model>> {
        let path = self.path.path()?;
        let options = ContextOptions { subgroups: Some(!self.no_subgroups), ..ContextOptions::default() };
        let ctx = Arc::new(Context::new_blocking(options)?);
        eprintln!("adapter: {}, subgroups {}", ctx.describe(), ctx.subgroup_use());
        let bar = progress::bytes("loading");
        let t = std::time::Instant::now();
        let model = adore::model::files::load(ctx, &path, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .with_context(|| format!("loading {}", path.display()))?;
        bar.finish_and_clear();
        let c = &model.config;
        eprintln!(
            "model: {} ({} layers, hidden {}, {} heads / {} KV heads, vocab {}{}), loaded in {:.2} s",
            display_name(&path),
            c.layers,
            c.hidden,
            c.n_heads,
            c.n_kv_heads,
            c.vocab,
            if c.rope_factors.is_empty() { "" } else { ", RoPE scaled" },
            t.elapsed().as_secs_f64()
        );
        Ok(Arc::new(model))
    }
}

fn display_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The parts of a release policy besides its budget, shared by every policy a command runs.
#[derive(Args)]
pub struct PartsArgs {
    /// Protected first tokens (sink, h2o, tova, adore).
    #[arg(long, default_value_t = DEFAULT_SINKS)]
    pub sinks: usize,
    /// Protected most recent tokens (h2o, tova, adore) [default: half the budget for h2o, three
    /// quarters for adore, 16 for tova].
    #[arg(long)]
    pub recent: Option<usize>,
    /// Where adore gets released tokens back from: `store` keeps every token's K/V on the GPU
    /// and re-chooses the attended budget among all of them at every step (memory grows with
    /// the sequence, the K/V read per token does not); `recompute` drops released K/V (memory
    /// stays at the budget) and recomputes up to --rebuild of them per generated token.
    #[arg(long, value_enum, default_value = "store")]
    pub rebuild_from: RebuildFrom,
    /// What adore from its store ranks past tokens by: `keys`, each layer its own choice by
    /// its attention over short keys fitted to the model's queries and keys (the key index
    /// shipped for the model, or --index); `controller`, the learned controller's score, one
    /// choice for every layer.
    #[arg(long, value_enum, default_value = "keys")]
    pub ranking: Ranking,
    /// adore ranked by keys (ignored by the other policies): each layer's short keys nominate
    /// this many past tokens and its exact attention over them chooses the budget (0 = the
    /// short keys choose). With --sparse-prefill the prompt then runs one token per step, each
    /// choosing its own set.
    #[arg(long, default_value_t = 0)]
    pub candidates: usize,
    /// adore ranked by keys (ignored by the other policies): indexed layers per choice. 1 =
    /// each layer ranks by its own short keys; N = the first of every N ranks and the next
    /// N - 1 attend to its choice (fewer dispatches and short keys, lower fidelity: see
    /// docs/results.md).
    #[arg(long, default_value_t = 1)]
    pub layers_per_choice: usize,
    /// adore ranked by keys (ignored by the other policies): each layer after the first ranks
    /// with a query predicted from the residual stream before the previous layer's
    /// feed-forward, not its own (a query product more a layer today; see docs/results.md).
    #[arg(long)]
    pub rank_ahead: bool,
    /// adore ranked by keys: the prompt's rows attend to the budget as generated tokens do, a
    /// chunk's rows sharing one choice (by default they attend to every token held, as full
    /// attention's; the store holds them all anyway).
    #[arg(long)]
    pub sparse_prefill: bool,
    /// Released tokens recomputed with each generated token (adore with --rebuild-from
    /// recompute; 0 = release only).
    #[arg(long, default_value_t = 0)]
    pub rebuild: usize,
    /// ADORE controller file (safetensors) for the adore policy [default: the one shipped for
    /// the model].
    #[arg(long)]
    pub controller: Option<PathBuf>,
    /// Key index file (safetensors, `adore index fit`) for rankings by the model's keys
    /// [default: the one shipped for the model].
    #[arg(long)]
    pub index: Option<PathBuf>,
}

impl PartsArgs {
    pub fn parts(&self, budget: usize) -> PolicyParts {
        PolicyParts {
            budget,
            sinks: self.sinks,
            recent: self.recent,
            rebuild: self.rebuild,
            rebuild_from: self.rebuild_from,
            ranking: self.ranking,
            candidates: self.candidates,
            layers_per_choice: self.layers_per_choice,
            rank_ahead: self.rank_ahead,
        }
    }

    /// `kind` with these parts at `budget`, as one of several policies compared.
    pub fn compared(&self, kind: PolicyKind, budget: usize) -> Result<Policy> {
        Ok(Policy::shared(kind, self.parts(budget))?)
    }

    /// The controller named by --controller, checked against the model.
    pub fn controller(&self, model: &Model) -> Result<Option<Arc<Controller>>> {
        let Some(path) = &self.controller else { return Ok(None) };
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(Arc::new(Controller::from_bytes(&path.display().to_string(), &bytes, &model.fingerprint)?)))
    }

    /// The key index named by --index, checked against the model.
    pub fn index(&self, model: &Model) -> Result<Option<Arc<KeyIndex>>> {
        let Some(path) = &self.index else { return Ok(None) };
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        // Its shape is checked against the model where a session ranks by it.
        Ok(Some(Arc::new(KeyIndex::from_bytes(&path.display().to_string(), &bytes, &model.fingerprint)?)))
    }
}

/// What a command runs when --policy is not given.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Full attention, or adore when a budget is asked for.
    FullUnlessBudget,
    /// adore: a long conversation is what it is for.
    Adore,
}

#[derive(Args)]
pub struct PolicyArgs {
    /// KV-cache policy: full, window, sink (StreamingLLM), h2o, tova, adore, or oracle
    /// (evaluation: full memory, two passes per step) [default: adore for chat; otherwise
    /// full, or adore when --budget is given].
    #[arg(long, value_enum, hide_possible_values = true)]
    pub policy: Option<PolicyKind>,
    /// KV slots kept by a budgeted policy [default: 256].
    #[arg(long)]
    pub budget: Option<usize>,
    #[command(flatten)]
    pub parts: PartsArgs,
    /// Longest sequence (prompt and generated tokens); defaults to what the job needs, at most
    /// the model's context.
    #[arg(long)]
    pub context: Option<usize>,
}

impl PolicyArgs {
    /// Whether the policy asked for, or the command's default, is adore.
    fn wants_adore(&self, default: DefaultPolicy) -> bool {
        match (self.policy, default) {
            (Some(kind), _) => kind == PolicyKind::Adore,
            (None, DefaultPolicy::FullUnlessBudget) => self.budget.is_some(),
            (None, DefaultPolicy::Adore) => true,
        }
    }

    /// The key index to rank by: --index; else, where adore would rank by keys and the model
    /// has no shipped index, one fitted to this model earlier (kept in the cache), or one
    /// fitted now to `fit_text` (the prompt) when it has at least [`FIT_MIN_TOKENS`] tokens.
    fn key_index(
        &self,
        model: &Arc<Model>,
        default: DefaultPolicy,
        context: usize,
        fit_text: Option<&[u32]>,
    ) -> Result<Option<Arc<KeyIndex>>> {
        if let Some(index) = self.parts.index(model)? {
            return Ok(Some(index));
        }
        let parts = self.parts.parts(self.budget.unwrap_or(DEFAULT_BUDGET));
        let ranks_by_keys = Policy::new(PolicyKind::Adore, parts).is_ok_and(|p| p.ranks_by_keys());
        if !self.wants_adore(default) || !ranks_by_keys || KeyIndex::builtin(&model.fingerprint).is_some() {
            return Ok(None);
        }
        let Ok(dir) = adore::fetch::cache_dir() else { return Ok(None) };
        let path = dir.join("indexes").join(format!("{}.index.safetensors", model.fingerprint));
        if let Ok(bytes) = std::fs::read(&path) {
            match KeyIndex::from_bytes(&path.display().to_string(), &bytes, &model.fingerprint) {
                Ok(index) => {
                    eprintln!("index: {} ({})", path.display(), index.fitting);
                    return Ok(Some(Arc::new(index)));
                }
                Err(e) => eprintln!("index: ignoring {}: {e}", path.display()),
            }
        }
        // (A prompt longer than the session's context is refused when it is run.)
        let Some(ids) = fit_text.filter(|ids| ids.len() >= FIT_MIN_TOKENS && ids.len() <= context) else { return Ok(None) };
        let ids = &ids[..ids.len().min(FIT_MAX_TOKENS)];
        eprintln!("index: no key index is shipped for this model; fitting one to the prompt's first {} tokens", ids.len());
        let bar = crate::progress::count(ids.len() as u64, "index", "tokens");
        let index = pollster::block_on(adore::index::fit_to_prompt(model, ids, 256, |n| bar.set_position(n as u64)))?;
        bar.finish_and_clear();
        eprintln!("index: {}", index.fitting);
        let bytes = index.to_bytes()?;
        let saved = std::fs::create_dir_all(path.parent().expect("a file in a directory")).and_then(|_| std::fs::write(&path, bytes));
        match saved {
            Ok(()) => eprintln!("index: kept in {} for later runs", path.display()),
            Err(e) => eprintln!("index: not kept ({e}); it is used for this run"),
        }
        Ok(Some(Arc::new(index)))
    }

    /// The policy asked for, or the command's default. adore needs what it ranks by for the
    /// model (a key index, or a controller ranking by the controller or recomputing): given,
    /// shipped for the model, or (a key index, `has_index`) kept or fitted for it; without it
    /// the default falls back to sink.
    fn policy(&self, model: &Model, default: DefaultPolicy, has_index: bool) -> Result<Policy> {
        let parts = self.parts.parts(self.budget.unwrap_or(DEFAULT_BUDGET));
        let kind = match self.policy {
            Some(kind) => kind,
            None if !self.wants_adore(default) => PolicyKind::Full,
            None => {
                let adore = Policy::new(PolicyKind::Adore, parts)?;
                let (has, what, flag) = match adore.ranks_by_keys() {
                    true => (has_index || KeyIndex::builtin(&model.fingerprint).is_some(), "key index", "--index"),
                    false => (
                        self.parts.controller.is_some() || Controller::builtin(&model.fingerprint).is_some(),
                        "ADORE controller",
                        "--controller",
                    ),
                };
                if has {
                    PolicyKind::Adore
                } else {
                    let fit = match adore.ranks_by_keys() {
                        true => format!(", a prompt of {FIT_MIN_TOKENS} tokens or more gets one fitted to it,"),
                        false => String::new(),
                    };
                    eprintln!("policy: no {what} is shipped for this model, so sink (StreamingLLM){fit} and {flag} FILE gives adore one");
                    PolicyKind::Sink
                }
            }
        };
        Ok(Policy::new(kind, parts)?)
    }

    /// A session of `context` tokens for this policy (the command's default when not given).
    /// `fit_text` (a prompt's ids) is what a key index is fitted to for a model without one.
    pub fn session(
        &self,
        model: &Arc<Model>,
        m: &ModelArgs,
        default: DefaultPolicy,
        context: usize,
        all_logits: bool,
        fit_text: Option<&[u32]>,
    ) -> Result<Session> {
        let index = self.key_index(model, default, context, fit_text)?;
        let policy = self.policy(model, default, index.is_some())?;
        if policy.kind != PolicyKind::Full || self.policy.is_some() {
            eprintln!("policy: {}", describe(&policy));
        }
        let controller = self.parts.controller(model)?;
        let kv_cache = m.kv_cache.into();
        let dense_prefill = !self.parts.sparse_prefill;
        let options = SessionOptions {
            context,
            chunk: m.chunk,
            all_logits,
            policy,
            controller,
            index,
            kv_cache,
            dense_prefill,
            ..Default::default()
        };
        Ok(Session::new(model.clone(), options)?)
    }
}

/// Refuses a cache update other than scatter when none of `kinds` is decided on the GPU (it
/// would apply to no run).
pub fn check_cache_updates(updates: &[CacheUpdate], kinds: &[PolicyKind]) -> Result<()> {
    if let Some(u) = updates.iter().find(|&&u| u != CacheUpdate::Scatter) {
        if !kinds.iter().any(|k| k.on_gpu()) {
            bail!(
                "cache update {} applies to the policies whose releases the GPU decides (h2o, tova, adore), and none is listed",
                u.name()
            );
        }
    }
    Ok(())
}

/// A policy in words, for the log.
pub fn describe(p: &Policy) -> String {
    match p.kind {
        PolicyKind::Full => "full".to_string(),
        PolicyKind::Window => format!("window, budget {}", p.budget),
        PolicyKind::Sink => format!("sink, budget {} ({} sinks)", p.budget, p.sinks),
        PolicyKind::Adore if p.stores() => {
            let by = match p.ranking {
                Ranking::Keys if p.candidates > 0 => {
                    &format!("by each layer's exact attention over the {} its short keys nominate", p.candidates)
                }
                Ranking::Keys if p.layers_per_choice > 1 => &format!(
                    "by the first of every {} layers over its short keys, the layers after it sharing its choice",
                    p.layers_per_choice
                ),
                Ranking::Keys if p.rank_ahead => {
                    "by each layer over its short keys, with a query predicted before the layer before it ends"
                }
                Ranking::Keys => "by each layer over its short keys",
                Ranking::Controller => "by the controller",
            };
            format!(
                "{}, budget {} ({} sinks, {} recent, the rest re-chosen from the store every step {by})",
                p.name(),
                p.budget,
                p.sinks,
                p.recent
            )
        }
        _ => format!("{}, budget {} ({} sinks, {} recent, rebuild {})", p.name(), p.budget, p.sinks, p.recent, p.rebuild),
    }
}

#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    pub top_k: u32,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    pub fn sampling(&self) -> Result<Sampling> {
        let s = Sampling { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed };
        s.validate()?;
        Ok(s)
    }
}
