//! Next-token choice on the GPU: greedy, or seeded sampling with temperature, top-k and top-p
//! (shaders/sample.wgsl). Only the chosen id is read back.

use super::{check_len, order_key};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub vocab: u32,
    pub top_k: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = no top-k filter.
    pub top_k: u32,
    /// 1 = no top-p filter.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl Sampling {
    /// Rejects nonsense values with a message that says what is allowed.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::arg(format!("temperature must be a finite number >= 0 (0 = greedy), got {}", self.temperature)));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::arg(format!("top-p must be in (0, 1], got {}", self.top_p)));
        }
        Ok(())
    }

    pub(crate) fn params(&self, vocab: usize) -> Params {
        // Fold the 64-bit seed into the kernel's 32 bits.
        let seed = (self.seed ^ (self.seed >> 32)) as u32;
        Params { vocab: vocab as u32, top_k: self.top_k, temperature: self.temperature, top_p: self.top_p, seed, pad0: 0, pad1: 0, pad2: 0 }
    }
}

/// The uniform buffer holding sampling parameters, rewritten when they change.
pub fn params_buffer(ctx: &Context, s: &Sampling, vocab: usize) -> wgpu::Buffer {
    ctx.uniform("sample.params", &s.params(vocab))
}

pub fn build(
    ctx: &Context,
    logits: &wgpu::Buffer,
    tokens: &wgpu::Buffer,
    params: &wgpu::Buffer,
    step: &wgpu::Buffer,
    vocab: usize,
) -> Result<Dispatch> {
    check_len("sample", "logits", logits, vocab)?;
    check_len("sample", "tokens", tokens, 1)?;
    let pipeline = ctx.pipeline(&shaders::SAMPLE, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[logits, tokens, params, step], [1, 1, 1]))
}

fn pcg_hash(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// The draw in [0, 1) the kernel makes for (seed, counter).
pub fn uniform01(seed: u32, counter: u32) -> f32 {
    (pcg_hash(seed ^ pcg_hash(counter)) >> 8) as f32 / 16777216.0
}

/// Reference: the set of ids the filters keep (ascending), and the id drawn for `counter`.
pub fn reference(logits: &[f32], s: &Sampling, counter: u32) -> (Vec<u32>, u32) {
    let p = s.params(logits.len());
    let (mut best, mut best_v) = (0u32, f32::NEG_INFINITY);
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i as u32;
        }
    }
    if p.temperature <= 0.0 || p.top_k == 1 {
        return (vec![best], best);
    }
    let inv_t = 1.0 / p.temperature as f64;
    let keys: Vec<u32> = logits.iter().map(|v| order_key(*v)).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let mut thr = 0u32;
    if p.top_k > 0 && (p.top_k as usize) < logits.len() {
        thr = sorted[p.top_k as usize - 1];
    }
    let weight = |i: usize| ((logits[i] - best_v) as f64 * inv_t).exp();
    if p.top_p < 1.0 {
        let z: f64 = (0..logits.len()).filter(|&i| keys[i] >= thr).map(weight).sum();
        let target = p.top_p as f64 * z;
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| keys[i] >= thr).collect();
        order.sort_by(|&a, &b| keys[b].cmp(&keys[a]));
        let mut mass = 0.0;
        for &i in &order {
            mass += weight(i);
            if mass >= target {
                thr = thr.max(keys[i]);
                break;
            }
        }
    }
    let kept: Vec<u32> = (0..logits.len()).filter(|&i| keys[i] >= thr).map(|i| i as u32).collect();
    let total: f64 = kept.iter().map(|&i| weight(i as usize)).sum();
    let u = uniform01(p.seed, counter) as f64 * total;
    let mut run = 0.0;
    let mut pick = best;
    for &i in &kept {
        run += weight(i as usize);
        if u < run {
            pick = i;
            break;
        }
    }
    (kept, pick)
}
