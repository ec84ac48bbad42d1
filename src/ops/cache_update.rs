//! The release decision of score-driven policies on the GPU (shaders/cache_update.wgsl), the
//! per-slot scores it reads (shaders/slot_score.wgsl) and the placement of new rows in free
//! slots (shaders/slot_assign.wgsl).

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
    pub sinks: u32,
    pub recent: u32,
    /// 1: the step's new rows stay and do not count against the budget (oracle selection).
    pub in_flight: u32,
    /// [`build_chosen`]: this choice's entry in the hints after the list (see [`list_len`]);
    /// each choice of a step (a layer's, say) keeps one of its own.
    pub hint: u32,
    pub pad: [u32; 2],
}

impl Params {
    pub fn new(capacity: usize, policy: &crate::policy::Policy) -> Self {
        Params {
            capacity: capacity as u32,
            budget: policy.budget as u32,
            sinks: policy.sinks as u32,
            recent: policy.recent as u32,
            in_flight: 0,
            hint: 0,
            pad: [0; 2],
        }
    }
}

/// Lanes of the decision's one workgroup: 256 on GPUs; on CPU devices fewer, since there the
/// lanes take turns in SIMD registers at each of the decision's barriers (on lavapipe 8 lanes
/// chose 128 of 256 slots in 0.16–0.18 ms against 1.0–1.7 for 256, and of 8178 in 2.8–3.2 ms
/// against 3.5–5.5).
fn lanes(ctx: &Context) -> u32 {
    match ctx.kernel_shape {
        crate::gpu::KernelShape::Gpu => 256,
        crate::gpu::KernelShape::Cpu => 8,
    }
}

/// Entries of the slot tables and scores the decision reads for `capacity` slots: padded to a
/// multiple of 4, since it reads them four slots a load.
pub fn table_len(capacity: usize) -> usize {
    capacity.next_multiple_of(4)
}

/// Dispatch freeing slots down to `budget` by score, protecting sinks and recent positions.
pub fn build(ctx: &Context, slot_pos: &wgpu::Buffer, score: &wgpu::Buffer, step: &wgpu::Buffer, p: Params) -> Result<Dispatch> {
    let padded = table_len(p.capacity as usize);
    check_len("cache_update", "slot_pos", slot_pos, padded)?;
    check_len("cache_update", "score", score, padded)?;
    let params = ctx.uniform("cache_update.params", &p);
    let pipeline = ctx.pipeline_with(&shaders::CACHE_UPDATE, "main", &[], &[("WG", lanes(ctx))])?;
    Ok(ctx.dispatch(pipeline, &[slot_pos, score, &params, step], [1, 1, 1]))
}

/// Entries of the list buffer of [`build_chosen`] for `capacity` slots and `hints` choices a
/// step: the count, a slot each, then each choice's hint (the first radix round's byte it found
/// last time: where the next step's falls in the same byte, as it mostly does, that round
/// counts two numbers instead of building a histogram). Zeroed is a valid start.
pub fn list_len(capacity: usize, hints: usize) -> usize {
    1 + capacity + hints
}

/// Dispatch choosing the attended slots: the decision of [`build`] on `table`, after copying it
/// from `src` when given (in place otherwise), and the valid slots below `Step::n_slots` listed
/// into `list` (count first; [`crate::ops::attention::reference_list`]); the choice's hint is
/// `list`'s entry `1 + capacity + p.hint` ([`list_len`]).
pub fn build_chosen(
    ctx: &Context,
    src: Option<&wgpu::Buffer>,
    table: &wgpu::Buffer,
    score: &wgpu::Buffer,
    list: &wgpu::Buffer,
    step: &wgpu::Buffer,
    p: Params,
) -> Result<Dispatch> {
    let cap = p.capacity as usize;
    check_len("cache_update", "table", table, table_len(cap))?;
    check_len("cache_update", "score", score, table_len(cap))?;
    check_len("cache_update", "list", list, list_len(cap, p.hint as usize + 1))?;
    let params = ctx.uniform("cache_update.params", &p);
    Ok(match src {
        Some(src) => {
            check_len("cache_update", "src", src, table_len(cap))?;
            let pipeline = ctx.pipeline_with(&shaders::CACHE_UPDATE, "choose", &[], &[("WG", lanes(ctx)), ("HINT", 1)])?;
            ctx.dispatch(pipeline, &[table, score, &params, step, list, src], [1, 1, 1])
        }
        None => {
            let pipeline = ctx.pipeline_with(&shaders::CACHE_UPDATE, "narrow", &[], &[("WG", lanes(ctx)), ("HINT", 1)])?;
            ctx.dispatch(pipeline, &[table, score, &params, step, list], [1, 1, 1])
        }
    })
}

/// Reference: the hint [`build_chosen`] leaves (None: unchanged, the cache within budget).
pub fn reference_hint(slot_pos: &[u32], score: &[f32], p: Params, n_seen: u32, n_new: u32) -> Option<u32> {
    let protected = |pos: u32| pos < p.sinks || pos + p.recent >= n_seen;
    let counted = |pos: u32| pos != INVALID_SLOT && !(p.in_flight != 0 && pos + n_new >= n_seen);
    let valid = slot_pos.iter().filter(|&&s| counted(s)).count();
    if valid <= p.budget as usize {
        return None;
    }
    let n_prot = slot_pos.iter().filter(|&&s| counted(s) && protected(s)).count();
    let keep = (p.budget as usize).saturating_sub(n_prot);
    let mut keys: Vec<u32> =
        (0..slot_pos.len()).filter(|&j| counted(slot_pos[j]) && !protected(slot_pos[j])).map(|j| super::order_key(score[j])).collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    Some(if keep == 0 { 255 } else { keys[keep - 1] >> 24 })
}

/// Reference: the slot table after the decision, for `n_seen` tokens of which the last
/// `n_new` came in this step.
pub fn reference(slot_pos: &[u32], score: &[f32], p: Params, n_seen: u32, n_new: u32) -> Vec<u32> {
    let protected = |pos: u32| pos < p.sinks || pos + p.recent >= n_seen;
    let counted = |pos: u32| pos != INVALID_SLOT && !(p.in_flight != 0 && pos + n_new >= n_seen);
    let valid = slot_pos.iter().filter(|&&s| counted(s)).count();
    if valid <= p.budget as usize {
        return slot_pos.to_vec();
    }
    let n_prot = slot_pos.iter().filter(|&&s| counted(s) && protected(s)).count();
    let keep = (p.budget as usize).saturating_sub(n_prot);
    let key = super::order_key;
    let mut cands: Vec<usize> = (0..slot_pos.len()).filter(|&j| counted(slot_pos[j]) && !protected(slot_pos[j])).collect();
    cands.sort_by(|&a, &b| key(score[b]).cmp(&key(score[a])).then(slot_pos[a].cmp(&slot_pos[b])));
    let mut out = slot_pos.to_vec();
    for &j in &cands[keep.min(cands.len())..] {
        out[j] = INVALID_SLOT;
    }
    out
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ScoreParams {
    pub capacity: u32,
    pub n_heads: u32,
    pub accumulate: u32,
    pub scale: f32,
}

/// Dispatch reducing attention probabilities (rows, n_heads, capacity) to one score per slot.
pub fn build_score(
    ctx: &Context,
    mass: &wgpu::Buffer,
    slots: &wgpu::Buffer,
    score: &wgpu::Buffer,
    step: &wgpu::Buffer,
    p: ScoreParams,
    max_rows: usize,
) -> Result<Dispatch> {
    check_len("slot_score", "mass", mass, max_rows * p.n_heads as usize * p.capacity as usize)?;
    check_len("slot_score", "slots", slots, max_rows)?;
    check_len("slot_score", "score", score, p.capacity as usize)?;
    let params = ctx.uniform("slot_score.params", &p);
    let pipeline = ctx.pipeline(&shaders::SLOT_SCORE, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[mass, slots, score, &params, step], [groups("slot_score", p.capacity as usize, 64)?, 1, 1]))
}

/// Reference of [`build_score`] for `rows` rows.
pub fn reference_score(mass: &[f32], slots: &[u32], old: &[f32], p: ScoreParams, rows: usize) -> Vec<f32> {
    let (cap, heads) = (p.capacity as usize, p.n_heads as usize);
    (0..cap)
        .map(|j| {
            let first = if p.accumulate != 0 { 0 } else { rows - 1 };
            let s: f64 =
                (first..rows).flat_map(|r| (0..heads).map(move |h| (r, h))).map(|(r, h)| mass[(r * heads + h) * cap + j] as f64).sum();
            let s = (s * p.scale as f64) as f32;
            if p.accumulate != 0 {
                s + if slots[..rows].contains(&(j as u32)) { 0.0 } else { old[j] }
            } else {
                s
            }
        })
        .collect()
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AssignParams {
    pub capacity: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// Dispatch writing the lowest free slots into `slots` for the step's rows.
pub fn build_assign(
    ctx: &Context,
    slot_pos: &wgpu::Buffer,
    slots: &wgpu::Buffer,
    step: &wgpu::Buffer,
    capacity: usize,
    max_rows: usize,
) -> Result<Dispatch> {
    check_len("slot_assign", "slot_pos", slot_pos, capacity)?;
    check_len("slot_assign", "slots", slots, max_rows)?;
    let params = ctx.uniform("slot_assign.params", &AssignParams { capacity: capacity as u32, pad0: 0, pad1: 0, pad2: 0 });
    let pipeline = ctx.pipeline(&shaders::SLOT_ASSIGN, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[slot_pos, slots, &params, step], [1, 1, 1]))
}

/// Reference: the lowest `rows` free slots.
pub fn reference_assign(slot_pos: &[u32], rows: usize) -> Vec<u32> {
    (0..slot_pos.len() as u32).filter(|&j| slot_pos[j as usize] == INVALID_SLOT).take(rows).collect()
}
