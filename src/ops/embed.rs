//! Embedding lookup from a (possibly quantized) table (shaders/embed.wgsl).

use super::{check_len, groups};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;
use crate::tensor::GpuWeight;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub dim: u32,
    pub vocab: u32,
    pub pad0: u32,
    pub pad1: u32,
}

/// Dispatch writing x (rows, dim) = table[tokens[r]] for up to `max_rows` rows.
pub fn build(
    ctx: &Context,
    table: &GpuWeight,
    tokens: &wgpu::Buffer,
    x: &wgpu::Buffer,
    step: &wgpu::Buffer,
    max_rows: usize,
) -> Result<Dispatch> {
    let (vocab, dim) = (table.rows, table.cols);
    if dim == 0 || vocab == 0 {
        return Err(Error::Shape { op: "embed", what: format!("{}: empty table", table.name) });
    }
    check_len("embed", "tokens", tokens, max_rows)?;
    check_len("embed", "x", x, max_rows * dim)?;
    let params = ctx.uniform("embed.params", &Params { dim: dim as u32, vocab: vocab as u32, pad0: 0, pad1: 0 });
    let pipeline = ctx.pipeline(&shaders::EMBED, "main", &[("WTYPE", table.wtype as u32 as f64)])?;
    Ok(ctx.dispatch(
        pipeline,
        &[&table.buffer, tokens, x, &params, step],
        [groups("embed", dim.div_ceil(8), 64)?, groups("embed", max_rows, 1)?, 1],
    ))
}

/// Reference: the rows of `table` (vocab, dim) named by `tokens`.
pub fn reference(table: &[f32], dim: usize, tokens: &[u32]) -> Vec<f32> {
    tokens.iter().flat_map(|&t| table[t as usize * dim..(t as usize + 1) * dim].iter().copied()).collect()
}
