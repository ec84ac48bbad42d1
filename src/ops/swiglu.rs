//! SwiGLU: out = silu(gate) · up, from the stacked product of gate and up (shaders/swiglu.wgsl).

use super::{check_len, groups};
use crate::error::Result;
use crate::gpu::{Context, Dispatch};
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub dim: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// out (rows, dim) from gate_up (rows, 2 dim): gate in its first `dim` columns, up in the rest.
pub fn build(
    ctx: &Context,
    gate_up: &wgpu::Buffer,
    out: &wgpu::Buffer,
    step: &wgpu::Buffer,
    dim: usize,
    max_rows: usize,
) -> Result<Dispatch> {
    build_act(ctx, gate_up, out, step, dim, max_rows, false)
}

/// [`build`] with GELU (tanh) instead of SiLU where `gelu` (GeGLU, Gemma's feed-forward).
pub fn build_act(
    ctx: &Context,
    gate_up: &wgpu::Buffer,
    out: &wgpu::Buffer,
    step: &wgpu::Buffer,
    dim: usize,
    max_rows: usize,
    gelu: bool,
) -> Result<Dispatch> {
    check_len("swiglu", "gate_up", gate_up, max_rows * 2 * dim)?;
    check_len("swiglu", "out", out, max_rows * dim)?;
    let params = ctx.uniform("swiglu.params", &Params { dim: dim as u32, pad0: 0, pad1: 0, pad2: 0 });
    let pipeline = ctx.pipeline(&shaders::SWIGLU, "main", &[("ACT", gelu as u32 as f64)])?;
    Ok(ctx.dispatch(pipeline, &[gate_up, out, &params, step], [groups("swiglu", dim, 64)?, groups("swiglu", max_rows, 1)?, 1]))
}

/// Reference, in f64, on gate and up apart.
pub fn reference(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| ((*g as f64 / (1.0 + (-*g as f64).exp())) * *u as f64) as f32).collect()
}

/// GELU (tanh approximation) in f64.
pub fn gelu_tanh(v: f64) -> f64 {
    0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
}

/// [`reference`] with GELU gating (GeGLU).
pub fn reference_gelu(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| (gelu_tanh(*g as f64) * *u as f64) as f32).collect()
}
