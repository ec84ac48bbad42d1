//! Embedding lookup from a (possibly quantized) table, whole or in row ranges
//! (shaders/embed.wgsl).

use super::{check_len, groups};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;
use crate::tensor::{GpuWeight, RowSplit};

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub dim: u32,
    pub vocab: u32,
    /// The table part's first row (token id).
    pub first: u32,
    /// 1 for the last part, which writes zeros for ids past the table.
    pub last: u32,
    /// Every value times this (Gemma 3: sqrt(dim)).
    pub scale: f32,
    pub pad: [u32; 3],
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
    build_part(ctx, table, 0, true, 1.0, tokens, x, step, max_rows)
}

/// Dispatches of [`build`] for a table uploaded in row ranges: each writes the rows whose token
/// falls in its range, times `scale`.
#[allow(clippy::too_many_arguments)]
pub fn build_split(
    ctx: &Context,
    table: &RowSplit,
    scale: f32,
    tokens: &wgpu::Buffer,
    x: &wgpu::Buffer,
    step: &wgpu::Buffer,
    max_rows: usize,
) -> Result<Vec<Dispatch>> {
    let last = table.parts.len().saturating_sub(1);
    table
        .parts
        .iter()
        .enumerate()
        .map(|(i, (first, part))| build_part(ctx, part, *first, i == last, scale, tokens, x, step, max_rows))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn build_part(
    ctx: &Context,
    table: &GpuWeight,
    first: usize,
    last: bool,
    scale: f32,
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
    let p = Params { dim: dim as u32, vocab: vocab as u32, first: first as u32, last: last as u32, scale, pad: [0; 3] };
    let params = ctx.uniform("embed.params", &p);
    let pipeline =
        ctx.pipeline(&shaders::EMBED, "main", &[("WTYPE", table.wtype as u32 as f64), ("LAYOUT", table.layout as u32 as f64)])?;
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
