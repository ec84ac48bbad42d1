//! Rotary position embedding (interleaved-pair or rotate-half layout) on a step's stacked q, k
//! and v, after their biases where the model has them, with the store of k and v in their KV
//! slots (shaders/rope.wgsl).

use super::{check_len, groups, KvType};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub theta: f32,
    pub interleaved: u32,
    pub write_table: u32,
    pub capacity: u32,
    pub pad: u32,
    /// Divisors of the pairs' frequencies (RoPE scaling; 1 where the model has none), 4 a vec4.
    pub factors: [[f32; 4]; MAX_PAIRS / 4],
}

/// Pairs a head may have (head_dim ≤ 256).
pub const MAX_PAIRS: usize = 128;

/// The buffers the dispatch touches: it reads `qkv` (rows, q_dim + 2 kv_dim) and writes the
/// rest.
pub struct Qkv<'a> {
    pub qkv: &'a wgpu::Buffer,
    pub q: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    pub v_cache: &'a wgpu::Buffer,
    /// How the caches store K and V.
    pub kv: KvType,
    pub slots: &'a wgpu::Buffer,
    pub slot_pos: &'a wgpu::Buffer,
    pub positions: &'a wgpu::Buffer,
    /// Biases of q, k and v stacked (q_dim + 2 kv_dim), added before the rotation.
    pub bias: Option<&'a wgpu::Buffer>,
}

/// The heads' shape and rotation.
#[derive(Clone, Copy, Debug)]
pub struct Rope<'a> {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub theta: f32,
    /// RoPE scaling: the divisors of the head_dim / 2 pairs' frequencies (empty: none).
    pub factors: &'a [f32],
    pub interleaved: bool,
}

/// Dispatch rotating q and k of rows (from `qkv`) at positions[r] into `q` and `k`, and storing
/// k and v at `slots[r]` of caches of `capacity` slots (with `write_table`, positions[r] too).
pub fn build(
    ctx: &Context,
    b: &Qkv,
    step: &wgpu::Buffer,
    r: Rope,
    capacity: usize,
    max_rows: usize,
    write_table: bool,
) -> Result<Dispatch> {
    let (nh, nkv, hd) = (r.n_heads, r.n_kv_heads, r.head_dim);
    // f16 caches: each k invocation rotates two pairs, so head_dim / 2 must be even.
    let multiple = if b.kv == KvType::F16 { 4 } else { 2 };
    if hd == 0 || hd / 2 > MAX_PAIRS || !hd.is_multiple_of(multiple) || nh == 0 || nkv == 0 || !(r.theta > 0.0) {
        return Err(Error::Shape {
            op: "rope",
            what: format!(
                "n_heads {nh}, n_kv_heads {nkv}, head_dim {hd} (at most {} and a multiple of {multiple} for {:?} caches), theta {}",
                2 * MAX_PAIRS,
                b.kv,
                r.theta
            ),
        });
    }
    let (q_dim, kv_dim) = (nh * hd, nkv * hd);
    check_len("rope", "qkv", b.qkv, max_rows * (q_dim + 2 * kv_dim))?;
    check_len("rope", "q", b.q, max_rows * q_dim)?;
    check_len("rope", "k", b.k, max_rows * kv_dim)?;
    check_len("rope", "k_cache", b.k_cache, b.kv.words(capacity * kv_dim))?;
    check_len("rope", "v_cache", b.v_cache, b.kv.words(capacity * kv_dim))?;
    check_len("rope", "slots", b.slots, max_rows)?;
    check_len("rope", "slot_pos", b.slot_pos, capacity)?;
    check_len("rope", "positions", b.positions, max_rows)?;
    if let Some(bias) = b.bias {
        check_len("rope", "bias", bias, q_dim + 2 * kv_dim)?;
    }
    if !r.factors.is_empty() && r.factors.len() != hd / 2 {
        return Err(Error::Shape { op: "rope", what: format!("{} frequency factors for head_dim {hd}", r.factors.len()) });
    }
    let mut factors = [[1.0f32; 4]; MAX_PAIRS / 4];
    for (i, &f) in r.factors.iter().enumerate() {
        factors[i / 4][i % 4] = f;
    }
    let p = Params {
        n_heads: nh as u32,
        n_kv_heads: nkv as u32,
        head_dim: hd as u32,
        theta: r.theta,
        interleaved: r.interleaved as u32,
        write_table: write_table as u32,
        capacity: capacity as u32,
        pad: 0,
        factors,
    };
    let params = ctx.uniform("rope.params", &p);
    let pipeline = ctx.pipeline_with(&shaders::ROPE, "main", &[("BIAS", b.bias.is_some() as u32 as f64)], &[("HALF", b.kv.half())])?;
    let items = nh * hd / 2 + (nkv * hd / 2 + kv_dim) / (1 + b.kv.half() as usize);
    Ok(ctx.dispatch(
        pipeline,
        &[b.qkv, b.q, b.k, b.k_cache, b.v_cache, b.slots, b.slot_pos, b.positions, &params, step, b.bias.unwrap_or(b.qkv)],
        [groups("rope", items, 64)?, groups("rope", max_rows, 1)?, 1],
    ))
}

/// Reference rotation of x (rows, n_heads, head_dim), in f64; pair i's frequency divided by
/// factors[i] where factors are given (empty: none).
pub fn reference(
    x: &[f32],
    positions: &[u32],
    n_heads: usize,
    head_dim: usize,
    theta: f32,
    factors: &[f32],
    interleaved: bool,
) -> Vec<f32> {
    let mut y = x.to_vec();
    let half = head_dim / 2;
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..n_heads {
            let base = (r * n_heads + h) * head_dim;
            for i in 0..half {
                let (a, b) = if interleaved { (base + 2 * i, base + 2 * i + 1) } else { (base + i, base + i + half) };
                let factor = factors.get(i).map_or(1.0, |&f| f as f64);
                let angle = pos as f64 * (theta as f64).powf(-2.0 * i as f64 / head_dim as f64) / factor;
                let (s, c) = angle.sin_cos();
                let (xa, xb) = (x[a] as f64, x[b] as f64);
                y[a] = (xa * c - xb * s) as f32;
                y[b] = (xa * s + xb * c) as f32;
            }
        }
    }
    y
}
