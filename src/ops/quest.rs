//! Quest's query-aware page selection (Tang et al., 2024), as a baseline that keeps every
//! token: per layer, the elementwise min and max of each page's keys (shaders/quest_bounds.wgsl),
//! and each page's upper bound on the current query's logits (shaders/quest_score.wgsl), from
//! which `cache_update` chooses the attended slots.

use super::{check_len, groups, KvType};
use crate::error::Result;
use crate::gpu::{Context, Dispatch};
use crate::ops::attention::INVALID_SLOT;
use crate::shaders;

/// Consecutive slots summarised together (the kernels' `PAGE`).
pub const PAGE: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub capacity: u32,
}

impl Params {
    fn kv_dim(&self) -> usize {
        (self.n_kv_heads * self.head_dim) as usize
    }

    pub fn pages(&self) -> usize {
        (self.capacity as usize).div_ceil(PAGE)
    }
}

/// Dispatch updating the bounds of the pages that this step's rows (at most `max_rows`, in
/// consecutive slots) fall in.
#[allow(clippy::too_many_arguments)]
pub fn build_bounds(
    ctx: &Context,
    k_cache: &wgpu::Buffer,
    kv: KvType,
    slot_pos: &wgpu::Buffer,
    slots: &wgpu::Buffer,
    bounds: &wgpu::Buffer,
    step: &wgpu::Buffer,
    p: Params,
    max_rows: usize,
) -> Result<Dispatch> {
    let cap = p.capacity as usize;
    check_len("quest_bounds", "k_cache", k_cache, kv.words(cap * p.kv_dim()))?;
    check_len("quest_bounds", "slot_pos", slot_pos, cap)?;
    check_len("quest_bounds", "slots", slots, max_rows)?;
    check_len("quest_bounds", "bounds", bounds, p.pages() * 2 * p.kv_dim())?;
    let params = ctx.uniform("quest_bounds.params", &p);
    let pipeline = ctx.pipeline_with(&shaders::QUEST_BOUNDS, "main", &[], &[("HALF", kv.half())])?;
    // Rows in consecutive slots touch at most this many pages.
    let touched = max_rows.div_ceil(PAGE) + 1;
    Ok(ctx.dispatch(
        pipeline,
        &[k_cache, slot_pos, slots, bounds, &params, step],
        [groups("quest_bounds", p.kv_dim(), 64)?, touched.min(p.pages()) as u32, 1],
    ))
}

/// Dispatch writing each slot its page's bound on the last new row's logits.
pub fn build_score(
    ctx: &Context,
    q: &wgpu::Buffer,
    bounds: &wgpu::Buffer,
    score: &wgpu::Buffer,
    step: &wgpu::Buffer,
    p: Params,
    max_rows: usize,
) -> Result<Dispatch> {
    check_len("quest_score", "q", q, max_rows * (p.n_heads * p.head_dim) as usize)?;
    check_len("quest_score", "bounds", bounds, p.pages() * 2 * p.kv_dim())?;
    check_len("quest_score", "score", score, p.capacity as usize)?;
    let params = ctx.uniform("quest_score.params", &p);
    let pipeline = ctx.pipeline(&shaders::QUEST_SCORE, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[q, bounds, score, &params, step], [groups("quest_score", p.pages(), 64)?, 1, 1]))
}

/// Reference: the bounds of page `page` (2, kv_dim) from the cache's valid slots.
pub fn reference_bounds(k_cache: &[f32], slot_pos: &[u32], p: Params, page: usize) -> Vec<f32> {
    let kv_dim = p.kv_dim();
    let (mut lo, mut hi) = (vec![3.0e38f32; kv_dim], vec![-3.0e38f32; kv_dim]);
    for j in page * PAGE..((page + 1) * PAGE).min(p.capacity as usize) {
        if slot_pos[j] != INVALID_SLOT {
            for i in 0..kv_dim {
                lo[i] = lo[i].min(k_cache[j * kv_dim + i]);
                hi[i] = hi[i].max(k_cache[j * kv_dim + i]);
            }
        }
    }
    lo.extend(hi);
    lo
}

/// Reference: the score of a page with bounds `page_bounds` (2, kv_dim) for one row's query
/// (n_heads, head_dim), in f64.
pub fn reference_score(q: &[f32], page_bounds: &[f32], p: Params) -> f64 {
    let (hd, kv_dim) = (p.head_dim as usize, p.kv_dim());
    let group = (p.n_heads / p.n_kv_heads) as usize;
    let mut s = 0.0;
    for h in 0..p.n_heads as usize {
        for d in 0..hd {
            let qd = q[h * hd + d] as f64;
            let k = (h / group) * hd + d;
            s += (qd * page_bounds[k] as f64).max(qd * page_bounds[kv_dim + k] as f64);
        }
    }
    s
}
