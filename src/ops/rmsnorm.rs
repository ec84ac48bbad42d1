//! RMSNorm (shaders/rmsnorm.wgsl).

use super::{check_len, groups};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub dim: u32,
    pub eps: f32,
    pub last_only: u32,
    pub pad: u32,
}

/// Dispatch normalising x (rows, dim) into y; with `last_only`, only the step's last row, into row 0.
#[allow(clippy::too_many_arguments)]
pub fn build(
    ctx: &Context,
    x: &wgpu::Buffer,
    g: &wgpu::Buffer,
    y: &wgpu::Buffer,
    step: &wgpu::Buffer,
    dim: usize,
    eps: f32,
    max_rows: usize,
    last_only: bool,
) -> Result<Dispatch> {
    build_into(ctx, x, g, y, step, dim, eps, max_rows, last_only, false)
}

/// [`build`], adding into y where `add` (Gemma 3's post-attention and post-feed-forward norms).
#[allow(clippy::too_many_arguments)]
pub fn build_into(
    ctx: &Context,
    x: &wgpu::Buffer,
    g: &wgpu::Buffer,
    y: &wgpu::Buffer,
    step: &wgpu::Buffer,
    dim: usize,
    eps: f32,
    max_rows: usize,
    last_only: bool,
    add: bool,
) -> Result<Dispatch> {
    if dim == 0 || !(eps >= 0.0) {
        return Err(Error::Shape { op: "rmsnorm", what: format!("dim {dim}, eps {eps}") });
    }
    check_len("rmsnorm", "x", x, max_rows * dim)?;
    check_len("rmsnorm", "g", g, dim)?;
    check_len("rmsnorm", "y", y, if last_only { dim } else { max_rows * dim })?;
    let params = ctx.uniform("rmsnorm.params", &Params { dim: dim as u32, eps, last_only: last_only as u32, pad: 0 });
    let pipeline = ctx.pipeline(&shaders::RMSNORM, "main", &[("ADD", add as u32 as f64)])?;
    let rows = if last_only { 1 } else { max_rows };
    Ok(ctx.dispatch(pipeline, &[x, g, y, &params, step], [1, groups("rmsnorm", rows, 1)?, 1]))
}

/// Reference over `rows` rows, accumulated in f64.
pub fn reference(x: &[f32], g: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    x.chunks_exact(dim)
        .flat_map(|row| {
            let ms: f64 = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / dim as f64;
            let scale = 1.0 / (ms + eps as f64).sqrt();
            row.iter().zip(g).map(move |(v, w)| (*v as f64 * scale * *w as f64) as f32)
        })
        .collect()
}
