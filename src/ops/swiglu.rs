//! SwiGLU gate: gate <- silu(gate) · up (shaders/swiglu.wgsl).

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

pub fn build(ctx: &Context, gate: &wgpu::Buffer, up: &wgpu::Buffer, step: &wgpu::Buffer, dim: usize, max_rows: usize) -> Result<Dispatch> {
    check_len("swiglu", "gate", gate, max_rows * dim)?;
    check_len("swiglu", "up", up, max_rows * dim)?;
    let params = ctx.uniform("swiglu.params", &Params { dim: dim as u32, pad0: 0, pad1: 0, pad2: 0 });
    let pipeline = ctx.pipeline(&shaders::SWIGLU, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[gate, up, &params, step], [groups("swiglu", dim, 64)?, groups("swiglu", max_rows, 1)?, 1]))
}

pub fn reference(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(g, u)| ((*g as f64 / (1.0 + (-*g as f64).exp())) * *u as f64) as f32).collect()
}
