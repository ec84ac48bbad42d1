//! One Rust wrapper per WGSL kernel: its params struct (field for field the WGSL struct), shape
//! checks, dispatch construction and a plain-Rust reference that the tests compare against.

pub mod attention;
pub mod cache_update;
pub mod controller;
pub mod embed;
pub mod head_norm;
pub mod key_score;
pub mod kv_write;
pub mod matmul;
pub mod quest;
pub mod rebuild;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod staged_update;
pub mod swiglu;
pub mod topk;

use crate::error::{Error, Result};

/// Per-step values shared by every kernel of a plan (the WGSL `Step` struct in the prelude).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    pub n_rows: u32,
    pub n_slots: u32,
    pub counter: u32,
    /// Tokens in the sequence after this step.
    pub n_seen: u32,
    /// Rows 0..n_new are new tokens (the last of them feeds the LM head); the rows after them
    /// recompute released tokens (ADORE's rebuild).
    pub n_new: u32,
    pub pad: [u32; 3],
}

impl Step {
    /// A step of `n_rows` new tokens.
    pub fn new(n_rows: u32, n_slots: u32, counter: u32, n_seen: u32) -> Self {
        Step { n_rows, n_slots, counter, n_seen, n_new: n_rows, pad: [0; 3] }
    }
}

/// How a KV cache stores its elements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvType {
    #[default]
    F32,
    /// f16, two to a 4-byte word (WGSL's `pack2x16float`): half the bytes.
    F16,
}

impl KvType {
    /// 4-byte words holding `elems` elements (an even count for f16).
    pub fn words(self, elems: usize) -> usize {
        match self {
            KvType::F32 => elems,
            KvType::F16 => elems.div_ceil(2),
        }
    }

    /// The kernels' `HALF` / `KV_HALF` define.
    pub(crate) fn half(self) -> u32 {
        (self == KvType::F16) as u32
    }

    /// `x` as the cache holds it (rounded to f16 and back for f16): for CPU references.
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvType::F32 => x,
            KvType::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    /// Elements as the cache's 4-byte words (f16 rounded to nearest, ties to even).
    pub fn encode(self, elems: &[f32]) -> Vec<u32> {
        match self {
            KvType::F32 => elems.iter().map(|x| x.to_bits()).collect(),
            KvType::F16 => elems
                .chunks(2)
                .map(|p| {
                    let h = |x: Option<&f32>| half::f16::from_f32(x.copied().unwrap_or(0.0)).to_bits() as u32;
                    h(p.first()) | h(p.get(1)) << 16
                })
                .collect(),
        }
    }

    /// The cache's 4-byte words read back as f32 elements.
    pub fn decode(self, words: &[u32]) -> Vec<f32> {
        match self {
            KvType::F32 => words.iter().map(|&w| f32::from_bits(w)).collect(),
            KvType::F16 => words
                .iter()
                .flat_map(|&w| [half::f16::from_bits(w as u16).to_f32(), half::f16::from_bits((w >> 16) as u16).to_f32()])
                .collect(),
        }
    }
}

/// Workgroups needed to cover `n` items with groups of `size`, checked against the device's
/// per-dimension limit.
pub(crate) fn groups(op: &'static str, n: usize, size: usize) -> Result<u32> {
    let g = n.div_ceil(size).max(1);
    if g > 65535 {
        return Err(Error::Shape { op, what: format!("{n} items need {g} workgroups, over the limit of 65535") });
    }
    Ok(g as u32)
}

/// Fails unless `buffer` holds at least `elems` 4-byte values.
pub(crate) fn check_len(op: &'static str, what: &str, buffer: &wgpu::Buffer, elems: usize) -> Result<()> {
    if buffer.size() < (elems * 4) as u64 {
        return Err(Error::Shape { op, what: format!("{what} holds {} bytes but needs {}", buffer.size(), elems * 4) });
    }
    Ok(())
}

/// The kernels' `order_key` (prelude.wgsl): an f32 as a u32 with the same ordering.
pub(crate) fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}
