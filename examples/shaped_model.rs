//! Writes a GGUF file of the default model's shape (SmolLM2-135M: 30 layers, hidden 576, 9 query
//! and 3 KV heads, feed-forward 1536, vocabulary 49152; Q4_1 matrices, a Q8_0 embedding table
//! shared with the LM head, f32 norms) with seeded random weights and a byte-level tokenizer:
//! `cargo run --release --example shaped_model OUT.gguf [SEED]`.
//!
//! Every kernel reads and computes exactly what it would for the real model, so speed measured
//! on it is the real model's, on a machine where the model cannot be fetched or carried (the
//! prepared GPU script, scripts/gpu-bench.sh). Its text is noise.

use adore::model::gguf::{self, Value};
use adore::tensor::{quantize, DType, HostTensor};

const LAYERS: usize = 30;
const HIDDEN: usize = 576;
const FFN: usize = 1536;
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = HIDDEN / HEADS;
const VOCAB: usize = 49152;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args.next().ok_or("usage: shaped_model OUT.gguf [SEED]")?;
    let seed: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1);
    // xorshift: weights uniform in (-scale, scale).
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut random = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    };
    let mut tensors = Vec::new();
    let mut add = |name: String, dtype: DType, shape: Vec<usize>, values: Vec<f32>| {
        tensors.push(HostTensor { name, dtype, shape, data: quantize(dtype, &values).into() });
    };
    let matrix_scale = 1.0 / (HIDDEN as f32).sqrt();
    add("token_embd.weight".into(), DType::Q8_0, vec![VOCAB, HIDDEN], random(VOCAB * HIDDEN, 1.0));
    add("output_norm.weight".into(), DType::F32, vec![HIDDEN], vec![1.0; HIDDEN]);
    let kv = KV_HEADS * HEAD_DIM;
    for l in 0..LAYERS {
        let t = |s: &str| format!("blk.{l}.{s}.weight");
        add(t("attn_norm"), DType::F32, vec![HIDDEN], vec![1.0; HIDDEN]);
        add(t("ffn_norm"), DType::F32, vec![HIDDEN], vec![1.0; HIDDEN]);
        for (name, rows, cols) in [
            ("attn_q", HIDDEN, HIDDEN),
            ("attn_k", kv, HIDDEN),
            ("attn_v", kv, HIDDEN),
            ("attn_output", HIDDEN, HIDDEN),
            ("ffn_gate", FFN, HIDDEN),
            ("ffn_up", FFN, HIDDEN),
            ("ffn_down", HIDDEN, FFN),
        ] {
            add(t(name), DType::Q4_1, vec![rows, cols], random(rows * cols, matrix_scale));
        }
    }
    // The byte-level alphabet, so that any text encodes (a token per byte).
    let mut chars: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    chars.sort_unstable();
    let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".to_string(), "<|im_end|>".to_string()];
    tokens.extend(chars.iter().map(|c| c.to_string()));
    let bytes_end = tokens.len();
    tokens.extend((bytes_end..VOCAB).map(|i| format!("<|unused{i}|>")));
    let types: Vec<Value> = (0..VOCAB).map(|i| Value::I32(if i < 3 || i >= bytes_end { 3 } else { 1 })).collect();
    let meta = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String(format!("random weights of SmolLM2-135M's shape, seed {seed}"))),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.context_length", Value::U32(8192)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("llama.rope.freq_base", Value::F32(100000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(VOCAB as u32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(Vec::new())),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ];
    std::fs::write(&out, gguf::write(&meta, &tensors))?;
    eprintln!("wrote {out}: SmolLM2-135M's shape, random weights (seed {seed})");
    Ok(())
}
