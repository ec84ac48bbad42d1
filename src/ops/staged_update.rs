//! The staged cache update of `CacheUpdate::Matmul` (the paper's selection-matrix
//! technique): slots 0..budget hold the cache, budget..capacity stage a step's rows; after the
//! release decision, surviving staged rows move into freed cache slots through a one-hot
//! selection matrix multiplied with every layer's K and V (shaders/staged_moves.wgsl,
//! select_matrix.wgsl, select_matmul.wgsl, select_store.wgsl).

use super::{check_len, groups};
use crate::error::Result;
use crate::gpu::{Context, Dispatch};
use crate::ops::attention::INVALID_SLOT;
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub capacity: u32,
    pub budget: u32,
    pub kv_dim: u32,
    pub pad: u32,
}

/// Dispatch computing the moves (`src`, capacity entries) and moving the slot table and scores.
pub fn build_moves(ctx: &Context, slot_pos: &wgpu::Buffer, score: &wgpu::Buffer, src: &wgpu::Buffer, p: Params) -> Result<Dispatch> {
    let cap = p.capacity as usize;
    check_len("staged_moves", "slot_pos", slot_pos, cap)?;
    check_len("staged_moves", "score", score, cap)?;
    check_len("staged_moves", "src", src, cap)?;
    let params = ctx.uniform("staged_moves.params", &[p.capacity, p.budget, 0, 0]);
    let pipeline = ctx.pipeline(&shaders::STAGED_MOVES, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[slot_pos, score, src, &params], [1, 1, 1]))
}

/// Dispatch writing the one-hot selection matrix (budget, capacity) from `src`.
pub fn build_selection(ctx: &Context, src: &wgpu::Buffer, sel: &wgpu::Buffer, p: Params) -> Result<Dispatch> {
    let (cap, budget) = (p.capacity as usize, p.budget as usize);
    check_len("select_matrix", "src", src, budget)?;
    check_len("select_matrix", "sel", sel, budget * cap)?;
    let params = ctx.uniform("select.params", &p);
    let pipeline = ctx.pipeline(&shaders::SELECT_MATRIX, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[src, sel, &params], [groups("select_matrix", cap, 64)?, groups("select_matrix", budget, 1)?, 1]))
}

/// Dispatches applying the selection to one layer's K and V: the product into `out`, then
/// back into the cache proper.
pub fn build_move_rows(
    ctx: &Context,
    sel: &wgpu::Buffer,
    k_cache: &wgpu::Buffer,
    v_cache: &wgpu::Buffer,
    out: &wgpu::Buffer,
    p: Params,
) -> Result<[Dispatch; 2]> {
    let (cap, budget, kvd) = (p.capacity as usize, p.budget as usize, p.kv_dim as usize);
    check_len("select_matmul", "sel", sel, budget * cap)?;
    check_len("select_matmul", "k_cache", k_cache, cap * kvd)?;
    check_len("select_matmul", "v_cache", v_cache, cap * kvd)?;
    check_len("select_matmul", "out", out, 2 * budget * kvd)?;
    let params = ctx.uniform("select.params", &p);
    let grid = [groups("select_matmul", kvd, 64)?, groups("select_matmul", budget, 1)?, 1];
    let product = ctx.dispatch(ctx.pipeline(&shaders::SELECT_MATMUL, "main", &[])?, &[sel, k_cache, v_cache, out, &params], grid);
    let store = ctx.dispatch(ctx.pipeline(&shaders::SELECT_STORE, "main", &[])?, &[out, k_cache, v_cache, &params], grid);
    Ok([product, store])
}

/// Reference of the whole staged update as a scatter: the slot table after it, and each
/// cache's rows moved (slots without a row keep what they held).
pub fn reference(slot_pos: &[u32], caches: &mut [&mut Vec<f32>], budget: usize, kv_dim: usize) -> Vec<u32> {
    let mut table = slot_pos.to_vec();
    let staged: Vec<usize> = (budget..slot_pos.len()).filter(|&s| slot_pos[s] != INVALID_SLOT).collect();
    let free = (0..budget).filter(|&j| slot_pos[j] == INVALID_SLOT);
    for (j, s) in free.zip(staged) {
        table[j] = slot_pos[s];
        for c in caches.iter_mut() {
            c.copy_within(s * kv_dim..(s + 1) * kv_dim, j * kv_dim);
        }
    }
    table[budget..].iter_mut().for_each(|x| *x = INVALID_SLOT);
    table
}
