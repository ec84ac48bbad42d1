//! Rotary position embedding, interleaved-pair or rotate-half layout (shaders/rope.wgsl).

use super::{check_len, groups};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n_heads: u32,
    pub head_dim: u32,
    pub theta: f32,
    pub interleaved: u32,
}

/// Dispatch rotating x (rows, n_heads, head_dim) in place at positions[r].
#[allow(clippy::too_many_arguments)]
pub fn build(
    ctx: &Context,
    x: &wgpu::Buffer,
    positions: &wgpu::Buffer,
    step: &wgpu::Buffer,
    n_heads: usize,
    head_dim: usize,
    theta: f32,
    interleaved: bool,
    max_rows: usize,
) -> Result<Dispatch> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) || n_heads == 0 || !(theta > 0.0) {
        return Err(Error::Shape { op: "rope", what: format!("n_heads {n_heads}, head_dim {head_dim} (must be even), theta {theta}") });
    }
    check_len("rope", "x", x, max_rows * n_heads * head_dim)?;
    check_len("rope", "positions", positions, max_rows)?;
    let params =
        ctx.uniform("rope.params", &Params { n_heads: n_heads as u32, head_dim: head_dim as u32, theta, interleaved: interleaved as u32 });
    let pipeline = ctx.pipeline(&shaders::ROPE, "main", &[])?;
    Ok(ctx.dispatch(
        pipeline,
        &[x, positions, &params, step],
        [groups("rope", n_heads * head_dim / 2, 64)?, groups("rope", max_rows, 1)?, 1],
    ))
}

/// Reference, in f64.
pub fn reference(x: &[f32], positions: &[u32], n_heads: usize, head_dim: usize, theta: f32, interleaved: bool) -> Vec<f32> {
    let mut y = x.to_vec();
    let half = head_dim / 2;
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..n_heads {
            let base = (r * n_heads + h) * head_dim;
            for i in 0..half {
                let (a, b) = if interleaved { (base + 2 * i, base + 2 * i + 1) } else { (base + i, base + i + half) };
                let angle = pos as f64 * (theta as f64).powf(-2.0 * i as f64 / head_dim as f64);
                let (s, c) = angle.sin_cos();
                let (xa, xb) = (x[a] as f64, x[b] as f64);
                y[a] = (xa * c - xb * s) as f32;
                y[b] = (xa * s + xb * c) as f32;
            }
        }
    }
    y
}
