//! ADORE's rebuild on the GPU: the controller's score of every earlier token
//! (shaders/rebuild_rank.wgsl), the cached ones masked out (shaders/rebuild_mask.wgsl), and the
//! rebuild rows filled from the top-R selection (shaders/rebuild_rows.wgsl).

use super::{check_len, controller::GpuController, groups};
use crate::error::Result;
use crate::gpu::{Context, Dispatch};
use crate::ops::attention::INVALID_SLOT;
use crate::shaders;

/// Scores below this are masked (the kernels' `MASKED`).
pub const MASKED: f32 = -1.0e30;

/// Dispatch scoring every position below the current token into `pos_score` (context values).
pub fn build_rank(
    ctx: &Context,
    c: &GpuController,
    state: &wgpu::Buffer,
    keys: &wgpu::Buffer,
    pos_score: &wgpu::Buffer,
    step: &wgpu::Buffer,
    context: usize,
) -> Result<Dispatch> {
    let d = c.params.d_c as usize;
    check_len("rebuild_rank", "state", state, 2 * d)?;
    check_len("rebuild_rank", "keys", keys, context * d)?;
    check_len("rebuild_rank", "pos_score", pos_score, context)?;
    let params = ctx.uniform("controller.params", &c.params);
    let pipeline = ctx.pipeline(&shaders::REBUILD_RANK, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[&c.weights, state, keys, pos_score, &params, step], [groups("rebuild_rank", context, 64)?, 1, 1]))
}

/// Dispatch masking the positions held by valid slots.
pub fn build_mask(ctx: &Context, slot_pos: &wgpu::Buffer, pos_score: &wgpu::Buffer, capacity: usize) -> Result<Dispatch> {
    check_len("rebuild_mask", "slot_pos", slot_pos, capacity)?;
    let pipeline = ctx.pipeline(&shaders::REBUILD_MASK, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[slot_pos, pos_score], [groups("rebuild_mask", capacity, 64)?, 1, 1]))
}

/// Reference of rank + mask: the scores of the released positions below `t`, MASKED elsewhere.
pub fn reference_candidates(pos_score: &[f32], slot_pos: &[u32], t: usize) -> Vec<f32> {
    let mut out: Vec<f32> = pos_score.iter().enumerate().map(|(i, &s)| if i < t { s } else { MASKED }).collect();
    for &p in slot_pos {
        if p != INVALID_SLOT && (p as usize) < out.len() {
            out[p as usize] = MASKED;
        }
    }
    out
}

/// The buffers the rebuild-rows dispatch touches.
pub struct Rows<'a> {
    pub tokens: &'a wgpu::Buffer,
    pub positions: &'a wgpu::Buffer,
    pub ids: &'a wgpu::Buffer,
    pub indices: &'a wgpu::Buffer,
}

/// Dispatch logging the new rows' ids and filling the rebuild rows from `indices`.
pub fn build_rows(ctx: &Context, b: &Rows, step: &wgpu::Buffer, max_rows: usize) -> Result<Dispatch> {
    check_len("rebuild_rows", "tokens", b.tokens, max_rows)?;
    check_len("rebuild_rows", "positions", b.positions, max_rows)?;
    let pipeline = ctx.pipeline(&shaders::REBUILD_ROWS, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[b.tokens, b.positions, b.ids, b.indices, step], [1, 1, 1]))
}
