//! Exact top-k selection with ties to the lower index (shaders/topk.wgsl).

use super::check_len;
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n: u32,
    pub k: u32,
    pub bounded: u32,
    pub pad: u32,
}

/// Dispatch selecting the `k` largest of `n` scores: a 0/1 mask and the ascending index list.
/// With `seen` (a Step uniform), only the first min(n, step.n_seen) scores take part.
pub fn build(
    ctx: &Context,
    scores: &wgpu::Buffer,
    selected: &wgpu::Buffer,
    indices: &wgpu::Buffer,
    n: usize,
    k: usize,
    seen: Option<&wgpu::Buffer>,
) -> Result<Dispatch> {
    if n == 0 || n > u32::MAX as usize / 2 {
        return Err(Error::Shape { op: "topk", what: format!("{n} scores") });
    }
    check_len("topk", "scores", scores, n)?;
    check_len("topk", "selected", selected, n)?;
    check_len("topk", "indices", indices, k.min(n))?;
    let params = ctx.uniform("topk.params", &Params { n: n as u32, k: k as u32, bounded: seen.is_some() as u32, pad: 0 });
    let unbounded;
    let step = match seen {
        Some(s) => s,
        None => {
            unbounded = ctx.uniform("step", &super::Step::default());
            &unbounded
        }
    };
    let pipeline = ctx.pipeline(&shaders::TOPK, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[scores, selected, indices, &params, step], [1, 1, 1]))
}

/// Reference: indices of the k largest scores (ties to the lower index), ascending.
/// NaN scores order as the kernel orders them (by their bit pattern).
pub fn reference(scores: &[f32], k: usize) -> Vec<u32> {
    let key = super::order_key;
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| key(scores[b as usize]).cmp(&key(scores[a as usize])).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_unstable();
    order
}
