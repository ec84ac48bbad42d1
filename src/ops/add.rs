//! Residual add: x <- x + y (shaders/add.wgsl).

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

pub fn build(ctx: &Context, x: &wgpu::Buffer, y: &wgpu::Buffer, step: &wgpu::Buffer, dim: usize, max_rows: usize) -> Result<Dispatch> {
    check_len("add", "x", x, max_rows * dim)?;
    check_len("add", "y", y, max_rows * dim)?;
    let params = ctx.uniform("add.params", &Params { dim: dim as u32, pad0: 0, pad1: 0, pad2: 0 });
    let pipeline = ctx.pipeline(&shaders::ADD, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[x, y, &params, step], [groups("add", dim, 64)?, groups("add", max_rows, 1)?, 1]))
}

pub fn reference(x: &[f32], y: &[f32]) -> Vec<f32> {
    x.iter().zip(y).map(|(a, b)| a + b).collect()
}
