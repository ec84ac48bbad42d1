//! Stores a step's keys and values in their cache slots (shaders/kv_write.wgsl).

use super::{check_len, groups, KvType};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub kv_dim: u32,
    pub write_table: u32,
    pub capacity: u32,
    pub pad: u32,
}

/// The buffers a KV write touches.
pub struct KvWrite<'a> {
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    /// None: keys only (`v` is not read).
    pub v_cache: Option<&'a wgpu::Buffer>,
    pub slots: &'a wgpu::Buffer,
    pub slot_pos: &'a wgpu::Buffer,
    pub positions: &'a wgpu::Buffer,
}

/// The write of `max_rows` rows of `kv_dim` into caches of `capacity` slots that store `kv`
/// (kv_dim even for f16).
#[allow(clippy::too_many_arguments)]
pub fn build(
    ctx: &Context,
    b: &KvWrite,
    step: &wgpu::Buffer,
    kv_dim: usize,
    capacity: usize,
    max_rows: usize,
    write_table: bool,
    kv: KvType,
) -> Result<Dispatch> {
    if kv == KvType::F16 && kv_dim % 2 != 0 {
        return Err(Error::Shape { op: "kv_write", what: format!("an f16 cache needs an even kv_dim, not {kv_dim}") });
    }
    check_len("kv_write", "k", b.k, max_rows * kv_dim)?;
    check_len("kv_write", "k_cache", b.k_cache, kv.words(capacity * kv_dim))?;
    if let Some(v_cache) = b.v_cache {
        check_len("kv_write", "v", b.v, max_rows * kv_dim)?;
        check_len("kv_write", "v_cache", v_cache, kv.words(capacity * kv_dim))?;
    }
    check_len("kv_write", "slots", b.slots, max_rows)?;
    check_len("kv_write", "slot_pos", b.slot_pos, capacity)?;
    check_len("kv_write", "positions", b.positions, max_rows)?;
    let params = ctx
        .uniform("kv_write.params", &Params { kv_dim: kv_dim as u32, write_table: write_table as u32, capacity: capacity as u32, pad: 0 });
    let pipeline = ctx.pipeline_with(&shaders::KV_WRITE, "main", &[], &[("HALF", kv.half()), ("VALUES", b.v_cache.is_some() as u32)])?;
    // Keys only: a word of scratch stands for the value cache (a writable binding may not alias k_cache).
    let unused;
    let (v, v_cache) = match b.v_cache {
        Some(v_cache) => (b.v, v_cache),
        None => {
            unused = ctx.storage("kv_write.unused", 4)?;
            (b.k, &unused)
        }
    };
    Ok(ctx.dispatch(
        pipeline,
        &[b.k, v, b.k_cache, v_cache, b.slots, b.slot_pos, b.positions, &params, step],
        [groups("kv_write", kv.words(kv_dim), 64)?, groups("kv_write", max_rows, 1)?, 1],
    ))
}
