//! `adore bench`: prefill and decode tokens/s per context length. Each policy prefills once,
//! growing through the contexts in ascending order, and decodes at each: one warm-up token,
//! then the median of the measured repeats, the policies' repeats interleaved (with
//! `--interleave-contexts`, each context's too, every one in a session of its own). JSON for
//! machines, a markdown table for people.

use std::path::PathBuf;

use adore::policy::{CacheUpdate, Policy, PolicyKind, RebuildFrom, DEFAULT_BUDGET};
use adore::profile::{KernelRow, StepProfile, Timing};
use adore::{Session, SessionOptions};
use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::options::{check_cache_updates, KvCache, ModelArgs, PartsArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Policies to compare, each at --budget.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "full")]
    policies: Vec<PolicyKind>,
    /// KV slots kept by the budgeted policies.
    #[arg(long, default_value_t = DEFAULT_BUDGET)]
    budget: usize,
    #[command(flatten)]
    parts: PartsArgs,
    /// Where adore gets released tokens back from, one adore run each (store, recompute; the
    /// --rebuild rows go to recompute) [default: --rebuild-from].
    #[arg(long, value_enum, value_delimiter = ',')]
    adore_modes: Vec<RebuildFrom>,
    /// Cache updates to compare for h2o, tova and adore: scatter (rows written into free
    /// slots) and matmul (staged, then moved by a selection-matrix product: the paper's
    /// technique, as an ablation).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "scatter")]
    cache_updates: Vec<CacheUpdate>,
    /// Context lengths (prompt tokens before the measured decode).
    #[arg(long, value_delimiter = ',', default_value = "256,2048")]
    contexts: Vec<usize>,
    /// Decode tokens measured per repeat.
    #[arg(long, default_value_t = 16)]
    decode_tokens: usize,
    /// Measured decode repeats per context (after one warm-up token).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// After the measured repeats at each context, time one more decode step kernel by kernel
    /// (GPU timestamps where the adapter has them, else each dispatch submitted alone and timed
    /// on the CPU) and print where its time goes.
    #[arg(long)]
    profile: bool,
    /// Decode one step at a time, each submitted after the previous token was read. By default
    /// the bench decodes as generation does: where the session can undo a step, the next step
    /// is queued before the previous token is read.
    #[arg(long)]
    sequential: bool,
    /// Give every policy a session per context, each prefilled to its length, and interleave
    /// the decode repeats of all of them, so that a change in the machine's speed falls on every
    /// context alike: how flat decode stays is then measured in one run, as the ratios between
    /// policies are. Holds a KV cache per policy and context.
    #[arg(long)]
    interleave_contexts: bool,
}

/// A session being measured: its run (policy and cache update), its context, and the prefill
/// that grew it there.
struct Cell<'s> {
    run: usize,
    context: usize,
    session: &'s mut Session,
    /// Tokens prefilled to reach the context, and their tokens/s.
    prefill: (usize, Option<f64>),
}

#[derive(serde::Serialize)]
struct Row {
    policy: &'static str,
    budget: Option<usize>,
    rebuild: usize,
    cache_update: &'static str,
    /// How the KV cache stores K and V (`--kv-cache`).
    kv_cache: &'static str,
    context: usize,
    /// Prompt tokens of the prefill that grew the sequence to this context (all of them in a
    /// session of its own; the growth since the last context otherwise), and their tokens/s.
    prefill_tokens: usize,
    prefill_tokens_per_s: Option<f64>,
    decode_tokens_per_s: f64,
    /// Each repeat's decode tokens/s, in the order measured.
    decode_repeats: Vec<f64>,
    /// With --interleave-contexts: the median, over the repeats, of this context's decode
    /// tokens/s over that of the same policy's smallest context in the same repeat (each pair
    /// measured back to back, so the machine's drift between repeats cancels).
    #[serde(skip_serializing_if = "Option::is_none")]
    decode_vs_first_context: Option<f64>,
    /// Whether decode queued each step before the previous token was read.
    overlap: bool,
    /// K/V bytes the session holds (its KV buffers).
    kv_bytes: u64,
    /// K/V bytes one decode step reads (the slots it attends to, every layer).
    attended_kv_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<ProfileJson>,
}

#[derive(serde::Serialize)]
struct ProfileJson {
    timing: &'static str,
    dispatches_per_step: usize,
    seconds_per_step: f64,
    /// Weight bytes of the matrices the step reads whole.
    weight_bytes_per_step: u64,
    kv_bytes_per_step: u64,
    kernels: Vec<KernelRow>,
}

/// Decode tokens/s over `tokens` steps. With `overlap` (where the session can undo a step),
/// each step is queued before the previous token is read, as generation does.
fn decode(session: &mut Session, tokens: usize, overlap: bool) -> Result<f64> {
    let overlap = overlap && session.can_rewind_step();
    let t = std::time::Instant::now();
    if overlap {
        session.submit_step()?;
    }
    for i in 0..tokens {
        match overlap {
            true if i + 1 < tokens => session.submit_step()?,
            true => {}
            false => session.submit_step()?,
        }
        pollster::block_on(session.read_step())?;
    }
    Ok(tokens as f64 / t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Each policy with each cache update that applies to it.
fn runs(policies: &[Policy], updates: &[CacheUpdate]) -> Vec<(Policy, CacheUpdate)> {
    policies
        .iter()
        .flat_map(|p| {
            let ups: Vec<CacheUpdate> = if p.releases_on_gpu() { updates.to_vec() } else { vec![CacheUpdate::Scatter] };
            ups.into_iter().map(move |u| (*p, u))
        })
        .collect()
}

pub fn run(a: BenchArgs) -> Result<()> {
    let modes = if a.adore_modes.is_empty() { vec![a.parts.rebuild_from] } else { a.adore_modes.clone() };
    let mut policies = Vec::new();
    for &kind in &a.policies {
        let base = a.parts.parts(a.budget);
        match kind {
            PolicyKind::Adore => {
                // Rebuild rows go to the run that recomputes.
                for &rebuild_from in &modes {
                    let rebuild = if rebuild_from == RebuildFrom::Recompute { base.rebuild } else { 0 };
                    policies.push(Policy::shared(kind, adore::policy::PolicyParts { rebuild_from, rebuild, ..base })?);
                }
            }
            _ => policies.push(Policy::shared(kind, base)?),
        }
    }
    check_cache_updates(&a.cache_updates, &a.policies)?;
    let runs = runs(&policies, &a.cache_updates);
    if a.contexts.is_empty() || a.contexts.contains(&0) || a.repeats == 0 || a.decode_tokens == 0 {
        bail!("--contexts must list positive lengths; --repeats and --decode-tokens must be at least 1");
    }
    let (repeats, decode_tokens) = (a.repeats, a.decode_tokens);
    let model = a.model.load()?;
    let mut contexts = a.contexts.clone();
    contexts.sort_unstable();
    contexts.dedup();
    let longest = contexts.last().copied().unwrap_or(0);
    // Decoding at each context adds tokens: the warm-up token, the measured ones and the
    // profiled one.
    let per_context = 1 + repeats * decode_tokens + usize::from(a.profile);
    let max_ctx = longest + per_context;
    if max_ctx > model.config.context {
        bail!(
            "context {longest} plus the {per_context} tokens decoded there exceeds the model's context of {} tokens; \
             the longest context that fits is {}",
            model.config.context,
            model.config.context.saturating_sub(per_context)
        );
    }
    eprintln!(
        "bench: adapter {} (subgroups {}); {:?} KV cache; at each context 1 warm-up token, then {repeats} x {decode_tokens} decode tokens, median reported",
        model.ctx.describe(),
        model.ctx.subgroup_use(),
        a.model.kv_cache
    );
    // A deterministic prompt: the vocabulary walked with a stride, skipping control tokens.
    let prompt: Vec<u32> = (0..max_ctx).map(|i| (100 + (i * 7919) % (model.config.vocab - 100)) as u32).collect();
    let chunk = a.model.chunk;
    let controller = a.parts.controller(&model)?;
    let index = a.parts.index(&model)?;
    // Every run's session lives through the whole bench, and each repeat decodes every run in
    // turn, so that a change in the machine's speed falls on all of them alike: their ratios
    // are measured in one run, interleaved. (Each session holds its KV cache meanwhile.) With
    // --interleave-contexts every run has a session per context.
    let per_run = if a.interleave_contexts { contexts.len() } else { 1 };
    let mut sessions = Vec::new();
    for (policy, update) in &runs {
        for _ in 0..per_run {
            let options = SessionOptions {
                context: max_ctx,
                chunk,
                all_logits: false,
                policy: *policy,
                controller: controller.clone(),
                index: index.clone(),
                cache_update: *update,
                kv_cache: a.model.kv_cache.into(),
                dense_prefill: !a.parts.sparse_prefill,
                ..Default::default()
            };
            let mut session = Session::new(model.clone(), options)?;
            // Warm-up: compile the pipelines of a chunk-sized prefill and of a decode step.
            pollster::block_on(session.prefill(&prompt[..chunk.min(contexts[0])]))?;
            pollster::block_on(session.step())?;
            session.reset();
            sessions.push(session);
        }
    }
    let mut rows = Vec::new();
    if a.interleave_contexts {
        let mut cells = Vec::new();
        for (k, session) in sessions.iter_mut().enumerate() {
            let (run, context) = (k / per_run, contexts[k % per_run]);
            let prefill = grow(session, &prompt, context)?;
            cells.push(Cell { run, context, session, prefill });
        }
        measure(&a, &model, &runs, cells, &mut rows)?;
    } else {
        for &context in &contexts {
            let mut cells = Vec::new();
            for (run, session) in sessions.iter_mut().enumerate() {
                let prefill = grow(session, &prompt, context)?;
                cells.push(Cell { run, context, session, prefill });
            }
            measure(&a, &model, &runs, cells, &mut rows)?;
        }
    }
    // Grouped by run, contexts ascending within each, as each run's rows read best.
    rows.sort_by_key(|(i, r)| (*i, r.context));
    let rows: Vec<Row> = rows.into_iter().map(|(_, r)| r).collect();
    print!("{}", table(&rows));
    // (Interleaved, every run measures every context, the smallest first.)
    for r in &rows {
        if let Some(share) = r.decode_vs_first_context {
            println!(
                "{} at context {}: {share:.3} of its decode speed at context {} (median of {repeats} repeats, each pair measured back to back)",
                r.policy, r.context, contexts[0]
            );
        }
    }
    for r in &rows {
        if let Some(p) = &r.profile {
            print!("\n{}", profile_table(r, p));
        }
    }
    if let Some(path) = &a.json {
        let doc = serde_json::json!({"adapter": model.ctx.describe(), "subgroups": model.ctx.subgroups, "decode_tokens": decode_tokens, "repeats": repeats, "interleave_contexts": a.interleave_contexts, "rows": rows});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// Grows the session's sequence to `context` tokens with the prompt (generated tokens stay in
/// it), then decodes one warm-up token; the tokens prefilled and their tokens/s (None if none).
fn grow(session: &mut Session, prompt: &[u32], context: usize) -> Result<(usize, Option<f64>)> {
    let have = session.len();
    let mut prefill = (0, None);
    if context > have {
        let t = std::time::Instant::now();
        pollster::block_on(session.prefill(&prompt[have..context]))?;
        prefill = (context - have, Some((context - have) as f64 / t.elapsed().as_secs_f64()));
    }
    pollster::block_on(session.step())?;
    Ok(prefill)
}

/// The cells' decode repeats, each repeat decoding every cell in turn; then each one's row (and
/// profiled step) into `rows`, with its run's index.
fn measure(
    a: &BenchArgs,
    model: &adore::Model,
    runs: &[(Policy, CacheUpdate)],
    mut cells: Vec<Cell>,
    rows: &mut Vec<(usize, Row)>,
) -> Result<()> {
    let mut dec = vec![Vec::new(); cells.len()];
    for _ in 0..a.repeats {
        for (cell, dec) in cells.iter_mut().zip(&mut dec) {
            dec.push(decode(cell.session, a.decode_tokens, !a.sequential)?);
        }
    }
    // Per repeat, each cell against its run's smallest context (interleaved contexts only).
    let paired: Vec<Option<f64>> = cells
        .iter()
        .zip(&dec)
        .map(|(cell, d)| {
            let first = cells.iter().zip(&dec).filter(|(c, _)| c.run == cell.run).min_by_key(|(c, _)| c.context)?;
            (a.interleave_contexts && first.0.context != cell.context).then(|| median(d.iter().zip(first.1).map(|(x, y)| x / y).collect()))
        })
        .collect();
    for ((cell, dec), vs_first) in cells.into_iter().zip(dec).zip(paired) {
        let session = cell.session;
        let (policy, update) = runs[cell.run];
        let profile = if a.profile {
            let (_, p) = pollster::block_on(session.profile_step(Timing::best(&model.ctx)))?;
            Some(profile_json(&p, model.weights.matrix_bytes(), session.attended_kv_bytes()))
        } else {
            None
        };
        let row = Row {
            policy: policy.name(),
            budget: (policy.kind != PolicyKind::Full).then_some(policy.budget),
            rebuild: policy.rebuild,
            cache_update: update.name(),
            kv_cache: match a.model.kv_cache {
                KvCache::F16 => "f16",
                KvCache::F32 => "f32",
            },
            context: cell.context,
            prefill_tokens: cell.prefill.0,
            prefill_tokens_per_s: cell.prefill.1,
            decode_tokens_per_s: median(dec.clone()),
            decode_repeats: dec,
            decode_vs_first_context: vs_first,
            overlap: !a.sequential && session.can_rewind_step(),
            kv_bytes: session.kv_bytes(),
            attended_kv_bytes: session.attended_kv_bytes(),
            profile,
        };
        eprintln!(
            "{:>6} ({}) context {:>6}: prefill {:>9} tokens/s, decode {:>8.2} tokens/s",
            row.policy,
            row.cache_update,
            row.context,
            row.prefill_tokens_per_s.map_or("-".to_string(), |p| format!("{p:.1}")),
            row.decode_tokens_per_s
        );
        rows.push((cell.run, row));
    }
    Ok(())
}

/// The rows as a markdown table, each with its ratio to full attention at the same context.
fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| policy | budget | rebuild | cache update | context | prefill tokens/s | decode tokens/s | decode vs full | KV bytes held | KV bytes read per step |\n",
    );
    s += "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n";
    for r in rows {
        let budget = r.budget.map_or("-".to_string(), |b| b.to_string());
        let full = rows.iter().find(|f| f.policy == "full" && f.context == r.context);
        let ratio = full.map_or("-".to_string(), |f| format!("{:.2}", r.decode_tokens_per_s / f.decode_tokens_per_s));
        let prefill = r.prefill_tokens_per_s.map_or("-".to_string(), |p| format!("{p:.1}"));
        s += &format!(
            "| {} | {budget} | {} | {} | {} | {prefill} | {:.2} | {ratio} | {} | {} |\n",
            r.policy, r.rebuild, r.cache_update, r.context, r.decode_tokens_per_s, r.kv_bytes, r.attended_kv_bytes
        );
    }
    s
}

fn profile_json(p: &StepProfile, weight_bytes: u64, kv_bytes: u64) -> ProfileJson {
    ProfileJson {
        timing: p.timing.name(),
        dispatches_per_step: p.dispatches.len(),
        seconds_per_step: p.seconds(),
        weight_bytes_per_step: weight_bytes,
        kv_bytes_per_step: kv_bytes,
        kernels: p.by_kernel(),
    }
}

/// One decode step of one row, kernel by kernel.
fn profile_table(r: &Row, p: &ProfileJson) -> String {
    let mut s = format!(
        "Profile: {} at context {}, one decode step, {}: {} dispatches, {:.2} ms in kernels; reads {:.1} MB of weights and {:.1} MB of K/V\n\n",
        r.policy,
        r.context,
        p.timing,
        p.dispatches_per_step,
        p.seconds_per_step * 1e3,
        p.weight_bytes_per_step as f64 / 1e6,
        p.kv_bytes_per_step as f64 / 1e6
    );
    s += "| kernel | dispatches per step | workgroups per dispatch | ms per step | share |\n|---|---:|---:|---:|---:|\n";
    for k in &p.kernels {
        let groups = if k.workgroups_min == k.workgroups_max {
            k.workgroups_min.to_string()
        } else {
            format!("{}-{}", k.workgroups_min, k.workgroups_max)
        };
        let share = if p.seconds_per_step > 0.0 { 100.0 * k.seconds / p.seconds_per_step } else { 0.0 };
        s += &format!("| {} | {} | {groups} | {:.3} | {share:.1}% |\n", k.kernel, k.dispatches, k.seconds * 1e3);
    }
    s
}
