//! Real models against llama.cpp on the same files: tests/llama-cpp/NAME.json holds llama.cpp's
//! tokens, 16 greedy tokens with its top two logits at each step, and the perplexity over 512
//! tokens of Hamlet (made by scripts/llama-cpp-refs.mjs). adore must tokenize the prompts as
//! llama.cpp does, render chat prompts as the model's template says, continue greedily the same
//! way except where llama.cpp's own top two logits are within 0.3 of each other at the first
//! difference, and give a perplexity within 2 % of llama.cpp's.
//!
//! The Qwen2.5-Coder files (0.5 and 1.5 GB) are tested by `scripts/test-models.sh`, not by the
//! default test command: `cargo test --release --test llama_cpp -- --ignored`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use adore::generate::{apply_chat_template, perplexity, Message};
use adore::model::gguf::{self, Gguf};
use adore::tensor::{quantize, DType, HostTensor};
use adore::{Model, Session, SessionOptions};
use serde_json::Value;

/// The largest gap between llama.cpp's top two logits at which a different greedy token is
/// taken for a tie rather than an error.
const TIE: f64 = 0.3;
/// Perplexity within this fraction of llama.cpp's.
const PPL_TOLERANCE: f64 = 0.02;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn refs(name: &str) -> Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/llama-cpp");
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap()
}

/// A known model, fetched, against its references.
fn check(name: &str) -> Arc<Model> {
    let known = adore::fetch::known(name).unwrap_or_else(|| panic!("{name} is not a known model"));
    let refs = refs(name);
    assert_eq!(refs["model_sha256"].as_str(), Some(known.sha256), "the references were made from another file");
    let path = adore::fetch::fetch(known, &mut |m| eprintln!("{m}"), &mut |_, _| {}).expect("fetching the model");
    check_file(name, &path, &refs)
}

fn check_file(name: &str, path: &std::path::Path, refs: &Value) -> Arc<Model> {
    let model: Arc<Model> = Arc::new(adore::model::files::load(common::ctx(), path, &mut |_, _| {}).expect("loading the model"));

    let mut report = Vec::new();
    for (i, case) in refs["prompts"].as_array().unwrap().iter().enumerate() {
        let text = case["text"].as_str().unwrap();
        if let Some(chat) = case["chat"].as_str() {
            let rendered =
                apply_chat_template(model.chat_template.as_deref(), &[Message { role: "user".into(), content: chat.into() }]).unwrap();
            assert_eq!(rendered, text, "{name}: the chat template renders {chat:?} otherwise than the reference prompt");
        }
        let prompt = ids(&case["prompt_tokens"]);
        assert_eq!(model.tokenizer.encode(text).unwrap(), prompt, "{name}: token ids of prompt {i} ({text:?})");

        let want = ids(&case["tokens"]);
        let options = SessionOptions { context: 256, chunk: 64, ..Default::default() };
        let mut s = Session::new(model.clone(), options).unwrap();
        let mut next = pollster::block_on(s.prefill(&prompt)).unwrap();
        let mut got = Vec::new();
        for _ in 0..want.len() {
            got.push(next);
            next = pollster::block_on(s.feed(next)).unwrap();
        }
        let decoded = model.tokenizer.decode(&got).unwrap_or_default();
        match got.iter().zip(&want).position(|(a, b)| a != b) {
            None => report.push(format!("prompt {i}: all {} tokens equal ({decoded:?})", want.len())),
            Some(at) => {
                let top2 = &case["top2"][at];
                let gap = top2[0]["logit"].as_f64().unwrap() - top2[1]["logit"].as_f64().unwrap();
                let line = format!(
                    "prompt {i}: first difference at token {at}: adore {} llama.cpp {} (llama.cpp's top-two gap {gap:.3}); adore {decoded:?}",
                    got[at], want[at]
                );
                assert!(gap < TIE, "{name}: {line}");
                report.push(line);
            }
        }
    }

    let tokens = ids(&refs["perplexity"]["tokens"]);
    let want = refs["perplexity"]["value"].as_f64().unwrap();
    let options = SessionOptions { context: tokens.len(), chunk: 256, all_logits: true, ..Default::default() };
    let mut s = Session::new(model.clone(), options).unwrap();
    let r = pollster::block_on(perplexity(&mut s, &tokens, tokens.len(), 1, |_, _| {})).unwrap();
    let line = format!(
        "perplexity over {} predictions: adore {:.4}, llama.cpp {want:.4} ({:+.2} %)",
        r.tokens_scored,
        r.ppl,
        100.0 * (r.ppl / want - 1.0)
    );
    report.push(line.clone());
    eprintln!("{name}:\n  {}", report.join("\n  "));
    assert!((r.ppl / want - 1.0).abs() <= PPL_TOLERANCE, "{name}: {line}");
    model
}

#[test]
#[ignore = "downloads 491 MB: scripts/test-models.sh"]
fn qwen2_5_coder_0_5b_matches_llama_cpp() {
    let model = check("qwen2.5-coder-0.5b");
    let index = adore::index::KeyIndex::builtin(&model.fingerprint).expect("no shipped key index matches qwen2.5-coder-0.5b");
    index.check(&model.config).unwrap();
}

/// Gemma 3 (q/k norms, post-norms, GeGLU, sliding-window layers, scaled embeddings, head_dim
/// 256, SentencePiece), in the default test command: 253 MB, fetched once.
#[test]
fn gemma_3_270m_matches_llama_cpp() {
    let model = check("gemma-3-270m");
    // The adore policy finds the key index shipped for it.
    let index = adore::index::KeyIndex::builtin(&model.fingerprint).expect("no shipped key index matches gemma-3-270m");
    index.check(&model.config).unwrap();
    // A generation ends at the end of a turn too (the file names <eos> as end-of-sequence).
    let stops: Vec<String> = model.tokenizer.stop_ids().iter().filter_map(|&i| model.tokenizer.id_to_token(i)).collect();
    assert_eq!(stops, ["<eos>", "<end_of_turn>"]);
}

/// The default model rewritten by `edit` (its metadata and tensors), written to the test's
/// temporary directory as `file`: a model of a kind no fetchable file has, for llama.cpp's
/// references (made by scripts/llama-cpp-refs.mjs on the written file, with
/// tests/llama-cpp/NAME.prompts.json and Hamlet; the test checks the file's sha256 against them).
fn derived_default(file: &str, edit: impl FnOnce(&mut Vec<(String, gguf::Value)>, &mut Vec<HostTensor>)) -> PathBuf {
    let source = adore::fetch::default_model(&mut |m| eprintln!("{m}")).unwrap();
    let bytes = std::fs::read(&source).unwrap();
    let g = Gguf::parse("default model", &bytes).unwrap();
    let mut metadata: Vec<(String, gguf::Value)> = g.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut tensors: Vec<HostTensor> = g.tensors.iter().map(|t| g.tensor(t)).collect();
    edit(&mut metadata, &mut tensors);
    let metadata: Vec<(&str, gguf::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(file);
    std::fs::write(&out, gguf::write(&metadata, &tensors)).unwrap();
    out
}

fn f32_tensor(name: String, values: &[f32]) -> HostTensor<'static> {
    HostTensor { name, dtype: DType::F32, shape: vec![values.len()], data: bytemuck::cast_slice(values).to_vec().into() }
}

/// The default model with Llama 3's RoPE scaling added: a `rope_freqs.weight` tensor (as
/// llama.cpp's converter writes for Llama 3.1 and 3.2) holding the factors of a Hugging Face
/// `rope_scaling` of type llama3 with factor 4, low and high frequency factors 1 and 4 and an
/// original context of 64, so that most of the 32 frequencies are scaled at the positions tested.
fn llama3_scaled_default(m: &Model) -> (PathBuf, Vec<f32>) {
    let scaling = serde_json::json!({
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64
    });
    let factors = adore::model::config::hf_rope_factors("test", &scaling, m.config.head_dim, m.config.rope_theta).unwrap();
    let path =
        derived_default("smollm2-135m-llama3-rope.gguf", |_, tensors| tensors.push(f32_tensor("rope_freqs.weight".into(), &factors)));
    (path, factors)
}

fn load_default() -> Arc<Model> {
    let path = adore::fetch::default_model(&mut |m| eprintln!("{m}")).unwrap();
    Arc::new(adore::model::files::load(common::ctx(), &path, &mut |_, _| {}).unwrap())
}

/// The default model as a Qwen3 file: architecture `qwen3`, its q and k rows put back in the
/// order of rotate-half RoPE (llama.cpp's Llama converter interleaves them; Qwen's keeps them),
/// and an RMSNorm weight for each layer's q and k heads (1 + 0.5 sin, so that they matter).
fn qwen3_default() -> PathBuf {
    derived_default("smollm2-135m-as-qwen3.gguf", |metadata, tensors| {
        // GGUF row 2i + j of a head is rotate-half row j · d/2 + i.
        let head_dim = 64;
        for t in tensors.iter_mut().filter(|t| t.name.ends_with("attn_q.weight") || t.name.ends_with("attn_k.weight")) {
            let row_bytes = t.data.len() / t.shape[0];
            let mut data = vec![0u8; t.data.len()];
            for r in 0..t.shape[0] {
                let (h, within) = (r / head_dim, r % head_dim);
                let to = h * head_dim + (within % 2) * (head_dim / 2) + within / 2;
                data[to * row_bytes..(to + 1) * row_bytes].copy_from_slice(&t.data[r * row_bytes..(r + 1) * row_bytes]);
            }
            t.data = data.into();
        }
        for (k, v) in metadata.iter_mut() {
            if let Some(rest) = k.strip_prefix("llama.") {
                *k = format!("qwen3.{rest}");
            }
            if k == "general.architecture" {
                *v = gguf::Value::String("qwen3".into());
            }
        }
        let layers = tensors.iter().filter(|t| t.name.ends_with("attn_q.weight")).count();
        for l in 0..layers {
            for (j, part) in ["attn_q_norm", "attn_k_norm"].iter().enumerate() {
                let w: Vec<f32> = (0..head_dim).map(|i| 1.0 + 0.5 * ((i * 7 + l * 3 + j) as f32).sin()).collect();
                tensors.push(f32_tensor(format!("blk.{l}.{part}.weight"), &w));
            }
        }
    })
}

/// The default model with its down projections (rows of 1536, the only weights whose rows are
/// whole 256-weight super-blocks) requantized to Q3_K from their Q4_1 values.
fn q3_k_default() -> PathBuf {
    derived_default("smollm2-135m-q3k.gguf", |_, tensors| {
        for t in tensors.iter_mut().filter(|t| t.name.ends_with("ffn_down.weight")) {
            *t = HostTensor {
                name: t.name.clone(),
                dtype: DType::Q3_K,
                shape: t.shape.clone(),
                data: quantize(DType::Q3_K, &t.to_f32()).into(),
            };
        }
    })
}

/// A model written by [`derived_default`] against its references, which must have been made
/// from the same bytes: the model, and the references.
fn check_derived(name: &str, path: &std::path::Path) -> (Arc<Model>, Value) {
    let refs = refs(name);
    let sha = adore::fetch::sha256_hex(&std::fs::read(path).unwrap());
    assert_eq!(refs["model_sha256"].as_str(), Some(sha.as_str()), "the references were made from another file");
    (check_file(name, path, &refs), refs)
}

/// Qwen3 (per-head q/k RMSNorm, rotate-half RoPE, no biases) against llama.cpp on the same file.
#[test]
fn qwen3_matches_llama_cpp() {
    let (model, _) = check_derived("smollm2-135m-as-qwen3", &qwen3_default());
    assert!(model.config.family.qk_norm && !model.config.rope_interleaved);
}

/// Q3_K weights (read as Q6_K on the GPU) against llama.cpp on the same file.
#[test]
fn q3_k_matches_llama_cpp() {
    let path = q3_k_default();
    let bytes = std::fs::read(&path).unwrap();
    let q3 = Gguf::parse("q3k", &bytes).unwrap().tensors.iter().filter(|t| t.dtype == DType::Q3_K).count();
    assert_eq!(q3, 30, "one Q3_K down projection per layer");
    check_derived("smollm2-135m-q3k", &path);
}

/// Llama 3's RoPE scaling (per-frequency factors from `rope_freqs.weight`) against llama.cpp on
/// the same file; and the factors are what make the difference: without them the perplexity
/// leaves llama.cpp's by far more than the tolerance.
#[test]
fn llama3_rope_scaling_matches_llama_cpp() {
    let name = "smollm2-135m-llama3-rope";
    let plain = load_default();
    let (path, factors) = llama3_scaled_default(&plain);
    // Pairs of short wavelength keep their frequency, long ones are divided by the factor.
    assert_eq!((factors[0], factors[factors.len() - 1]), (1.0, 4.0));
    assert!(factors.iter().filter(|&&f| f > 1.0 && f < 4.0).count() >= 1, "no interpolated factor: {factors:?}");
    let (model, refs) = check_derived(name, &path);
    assert_eq!(model.config.rope_factors, factors);
    let tokens = ids(&refs["perplexity"]["tokens"]);
    let options = SessionOptions { context: tokens.len(), chunk: 256, all_logits: true, ..Default::default() };
    let mut s = Session::new(plain, options).unwrap();
    let unscaled = pollster::block_on(perplexity(&mut s, &tokens, tokens.len(), 1, |_, _| {})).unwrap().ppl;
    let want = refs["perplexity"]["value"].as_f64().unwrap();
    eprintln!("{name}: without the factors, perplexity {unscaled:.4} against llama.cpp's {want:.4}");
    assert!((unscaled / want - 1.0).abs() > 5.0 * PPL_TOLERANCE, "the factors change too little to be tested: {unscaled} vs {want}");
}
