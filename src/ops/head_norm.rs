//! RMSNorm of each q and k head in place, in the stacked q/k/v rows (shaders/head_norm.wgsl).

use super::{check_len, groups};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub head_dim: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub width: u32,
    pub eps: f32,
    pub pad: [u32; 3],
}

/// Dispatch normalising every q head (weight g[..head_dim]) and k head (g[head_dim..]) of up
/// to `max_rows` rows of qkv (rows, (n_heads + 2 n_kv_heads) head_dim) in place.
pub fn build(
    ctx: &Context,
    qkv: &wgpu::Buffer,
    g: &wgpu::Buffer,
    step: &wgpu::Buffer,
    (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
    eps: f32,
    max_rows: usize,
) -> Result<Dispatch> {
    if head_dim == 0 || n_heads == 0 || n_kv_heads == 0 || !(eps >= 0.0) {
        return Err(Error::Shape { op: "head_norm", what: format!("heads {n_heads}/{n_kv_heads} of {head_dim}, eps {eps}") });
    }
    let width = (n_heads + 2 * n_kv_heads) * head_dim;
    check_len("head_norm", "qkv", qkv, max_rows * width)?;
    check_len("head_norm", "g", g, 2 * head_dim)?;
    let p =
        Params { head_dim: head_dim as u32, n_heads: n_heads as u32, n_kv_heads: n_kv_heads as u32, width: width as u32, eps, pad: [0; 3] };
    let params = ctx.uniform("head_norm.params", &p);
    let pipeline = ctx.pipeline(&shaders::HEAD_NORM, "main", &[])?;
    Ok(ctx.dispatch(
        pipeline,
        &[qkv, g, &params, step],
        [groups("head_norm", n_heads + n_kv_heads, 1)?, groups("head_norm", max_rows, 1)?, 1],
    ))
}

/// Reference in f64 on rows of qkv (a copy, normalised).
pub fn reference(qkv: &[f32], g: &[f32], (n_heads, n_kv_heads, head_dim): (usize, usize, usize), eps: f32) -> Vec<f32> {
    let width = (n_heads + 2 * n_kv_heads) * head_dim;
    let mut out = qkv.to_vec();
    for row in out.chunks_exact_mut(width) {
        for h in 0..n_heads + n_kv_heads {
            let x = &mut row[h * head_dim..(h + 1) * head_dim];
            let w = &g[if h < n_heads { 0 } else { head_dim }..][..head_dim];
            let ms = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / head_dim as f64;
            let scale = 1.0 / (ms + eps as f64).sqrt();
            x.iter_mut().zip(w).for_each(|(v, w)| *v = (*v as f64 * scale * *w as f64) as f32);
        }
    }
    out
}
