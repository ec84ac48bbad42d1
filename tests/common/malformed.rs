//! Builders of malformed model files: GGUF headers with chosen counts, tensor entries with
//! chosen dims, types and offsets, and edits of the tiny model's metadata and tensors.

use adore::model::gguf::{self, Gguf, Value};
use adore::tensor::HostTensor;

use super::tiny::Tiny;

/// A GGUF header followed by `body`.
pub fn header(version: u32, n_tensors: u64, n_kv: u64, body: &[u8]) -> Vec<u8> {
    let mut v = b"GGUF".to_vec();
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&n_tensors.to_le_bytes());
    v.extend_from_slice(&n_kv.to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// One tensor-info entry.
pub fn tensor_entry(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut v = (name.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(name.as_bytes());
    v.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    dims.iter().for_each(|d| v.extend_from_slice(&d.to_le_bytes()));
    v.extend_from_slice(&ty.to_le_bytes());
    v.extend_from_slice(&offset.to_le_bytes());
    v
}

/// The tiny model (seed 3) as GGUF after `edit` changes its metadata or tensors.
pub fn tiny_with(edit: impl Fn(&mut Vec<(&'static str, Value)>, &mut Vec<HostTensor<'static>>)) -> Vec<u8> {
    let bytes = Tiny::new(3).gguf_bytes();
    let g = Gguf::parse("tiny", &bytes).unwrap();
    let keep = [
        "general.architecture",
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size",
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
    ];
    let mut meta: Vec<(&'static str, Value)> = keep.iter().map(|k| (*k, g.get(k).unwrap().clone())).collect();
    let mut tensors: Vec<HostTensor<'static>> = g
        .tensors
        .iter()
        .map(|t| {
            let h = g.tensor(t);
            HostTensor { name: h.name, dtype: h.dtype, shape: h.shape, data: h.data.into_owned().into() }
        })
        .collect();
    edit(&mut meta, &mut tensors);
    gguf::write(&meta, &tensors)
}
