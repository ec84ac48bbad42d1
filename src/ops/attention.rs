//! Grouped-query attention over the slot-based KV cache (shaders/attention.wgsl); for decode
//! rows on GPUs at long capacities, split across workgroups (shaders/attention_split.wgsl, then
//! shaders/attention_merge.wgsl).

use super::{check_len, groups, KvType};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, KernelShape};
use crate::shaders;

/// Marks a free slot in the slot table.
pub const INVALID_SLOT: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub scale: f32,
    pub capacity: u32,
    pub write_mass: u32,
    /// 1: visit the slots of `Buffers::list` only.
    pub listed: u32,
    /// Sliding window: keys at positions window or more before the query's are not seen (0: none).
    pub window: u32,
}

/// attention_split.wgsl's and attention_merge.wgsl's parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct SplitParams {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub scale: f32,
    /// Workgroups along the slots.
    pub splits: u32,
    /// 1: visit the slots of `Buffers::list` only.
    pub listed: u32,
    /// As [`Params::window`].
    pub window: u32,
    pub pad: u32,
}

/// Whether attention also records per-slot probabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mass {
    None,
    /// mass[r, h, slot] = p
    Write,
    /// mass[r, h, slot] += p (summing over layers)
    Add,
}

/// Head geometry.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Sliding window of a local-attention layer: keys `window` or more positions before the
    /// query are not attended (0: every earlier key).
    pub window: usize,
}

impl Heads {
    pub fn check(&self) -> Result<()> {
        let Heads { n_heads, n_kv_heads, head_dim, .. } = *self;
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || head_dim == 0 || head_dim > 256 || head_dim % 4 != 0 {
            return Err(Error::Shape {
                op: "attention",
                what: format!(
                    "{n_heads} query heads, {n_kv_heads} KV heads, head_dim {head_dim}: heads must divide evenly and head_dim be a multiple of 4 up to 256"
                ),
            });
        }
        Ok(())
    }

    /// Query heads handled by one workgroup: the most heads sharing one KV head whose vectors
    /// fit 64 vec4 registers (the kernel reads each K and V row once for all of them).
    pub fn per_workgroup(&self) -> usize {
        let group = self.n_heads / self.n_kv_heads.max(1);
        let hd4 = (self.head_dim / 4).max(1);
        (1..=group).rev().find(|d| group % d == 0 && d * hd4 <= 64).unwrap_or(1)
    }
}

pub struct Buffers<'a> {
    pub q: &'a wgpu::Buffer,
    pub k_cache: &'a wgpu::Buffer,
    /// None: only the probabilities are wanted (mass recorded, `out` left as it was).
    pub v_cache: Option<&'a wgpu::Buffer>,
    /// How the caches store K and V.
    pub kv: KvType,
    pub slot_pos: &'a wgpu::Buffer,
    pub positions: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    /// (rows, n_heads, capacity) f32 when mass is recorded; any small buffer otherwise.
    pub mass: &'a wgpu::Buffer,
    /// The valid slots of `slot_pos` as a compact list (`cache_update::build_chosen`), when few of many are
    /// valid; None scans every slot below `Step::n_slots`.
    pub list: Option<&'a wgpu::Buffer>,
}

/// The heads' geometry and the buffers' lengths for `max_rows` rows over `capacity` slots.
fn check_buffers(b: &Buffers, heads: Heads, capacity: usize, max_rows: usize) -> Result<()> {
    heads.check()?;
    let qd = heads.n_heads * heads.head_dim;
    let kvd = heads.n_kv_heads * heads.head_dim;
    check_len("attention", "q", b.q, max_rows * qd)?;
    check_len("attention", "out", b.out, max_rows * qd)?;
    check_len("attention", "k_cache", b.k_cache, b.kv.words(capacity * kvd))?;
    if let Some(v) = b.v_cache {
        check_len("attention", "v_cache", v, b.kv.words(capacity * kvd))?;
    }
    check_len("attention", "slot_pos", b.slot_pos, capacity)?;
    check_len("attention", "positions", b.positions, max_rows)
}

pub fn build(
    ctx: &Context,
    b: &Buffers,
    step: &wgpu::Buffer,
    heads: Heads,
    capacity: usize,
    max_rows: usize,
    mass: Mass,
) -> Result<Dispatch> {
    check_buffers(b, heads, capacity, max_rows)?;
    if mass != Mass::None {
        check_len("attention", "mass", b.mass, max_rows * heads.n_heads * capacity)?;
    } else if b.v_cache.is_none() {
        return Err(Error::Shape { op: "attention", what: "no values and no probabilities: nothing to compute".into() });
    }
    let write_mass = match mass {
        Mass::None => 0,
        Mass::Write => 1,
        Mass::Add => 2,
    };
    let params = ctx.uniform(
        "attention.params",
        &Params {
            n_heads: heads.n_heads as u32,
            n_kv_heads: heads.n_kv_heads as u32,
            head_dim: heads.head_dim as u32,
            scale: 1.0 / (heads.head_dim as f32).sqrt(),
            capacity: capacity as u32,
            write_mass,
            listed: b.list.is_some() as u32,
            window: heads.window as u32,
        },
    );
    let hpw = heads.per_workgroup();
    let defines = [
        ("HD4", (heads.head_dim / 4) as u32),
        ("HPW", hpw as u32),
        ("KV_HALF", b.kv.half()),
        ("VALUES", b.v_cache.is_some() as u32),
        ("WG", lanes(ctx) as u32),
    ];
    let pipeline = ctx.pipeline_with(&shaders::ATTENTION, "main", &[], &defines)?;
    Ok(ctx.dispatch(
        pipeline,
        &[
            b.q,
            b.k_cache,
            b.v_cache.unwrap_or(b.k_cache),
            b.slot_pos,
            b.positions,
            b.out,
            &params,
            step,
            b.mass,
            b.list.unwrap_or(b.slot_pos),
        ],
        [groups("attention", heads.n_heads / hpw, 1)?, groups("attention", max_rows, 1)?, 1],
    ))
}

/// Lanes of a workgroup of the one-pass kernel: 64 on GPUs; on CPU devices one SIMD register's
/// worth, 8, since there a workgroup of 64 is 8 registers' lanes taking turns at each barrier of
/// the merge (on lavapipe 8 lanes ran a decode row over 512 slots 1.6 to 1.9 times faster than
/// 64, and 64 prompt rows 1.5 times faster; at 4096 slots alike).
fn lanes(ctx: &Context) -> usize {
    match ctx.kernel_shape {
        KernelShape::Gpu => 64,
        KernelShape::Cpu => 8,
    }
}

/// Slots per workgroup of split attention (attention_split.wgsl's CHUNK).
pub const SPLIT_CHUNK: usize = 64;

/// Capacity from which decode attention on GPUs is split across workgroups. Below it the
/// one-pass kernel's lanes see at most 16 slots each, and the merge pass would cost a dispatch
/// more than the split saves.
pub const SPLIT_FROM: usize = 1024;

/// Whether [`build_split`] serves `max_rows` rows over `capacity` slots on this device: GPUs
/// (a CPU-backed adapter has few cores to fill, and pays for the barriers), decode rows.
pub fn splits(ctx: &Context, capacity: usize, max_rows: usize) -> bool {
    ctx.kernel_shape == KernelShape::Gpu && capacity >= SPLIT_FROM && max_rows <= super::matmul::MATVEC_MAX_ROWS
}

/// f32 values of split attention's scratch buffer (the partial softmaxes) for up to `max_rows` rows.
pub fn split_scratch_len(heads: Heads, capacity: usize, max_rows: usize) -> usize {
    max_rows * heads.n_heads * capacity.div_ceil(SPLIT_CHUNK) * (heads.head_dim / 4 + 1) * 4
}

/// The two dispatches of split attention (no probabilities recorded): each split's partial
/// softmax into `part` ([`split_scratch_len`] values), then their merge into `b.out`.
pub fn build_split(
    ctx: &Context,
    b: &Buffers,
    part: &wgpu::Buffer,
    step: &wgpu::Buffer,
    heads: Heads,
    capacity: usize,
    max_rows: usize,
) -> Result<Vec<Dispatch>> {
    check_buffers(b, heads, capacity, max_rows)?;
    check_len("attention", "part", part, split_scratch_len(heads, capacity, max_rows))?;
    let Some(v_cache) = b.v_cache else {
        return Err(Error::Shape { op: "attention", what: "split attention computes values: it needs a V cache".into() });
    };
    let splits = capacity.div_ceil(SPLIT_CHUNK);
    let params = ctx.uniform(
        "attention_split.params",
        &SplitParams {
            n_heads: heads.n_heads as u32,
            n_kv_heads: heads.n_kv_heads as u32,
            head_dim: heads.head_dim as u32,
            scale: 1.0 / (heads.head_dim as f32).sqrt(),
            splits: splits as u32,
            listed: b.list.is_some() as u32,
            window: heads.window as u32,
            pad: 0,
        },
    );
    let hd4 = heads.head_dim / 4;
    // Heads per workgroup: the most sharing one KV head, up to 8 (workgroup memory holds 8).
    let group = heads.n_heads / heads.n_kv_heads;
    let hpw = (1..=group.min(8)).rev().find(|d| group % d == 0).unwrap_or(1);
    let lanes = hd4.next_power_of_two();
    let defines = [("HD4", hd4 as u32), ("HPW", hpw as u32), ("LD", lanes as u32), ("CHUNK", SPLIT_CHUNK as u32), ("KV_HALF", b.kv.half())];
    let first = ctx.pipeline_with(&shaders::ATTENTION_SPLIT, "partial", &[], &defines)?;
    let merge = ctx.pipeline_with(&shaders::ATTENTION_MERGE, "main", &[], &[("HD4", hd4 as u32)])?;
    let rows = groups("attention", max_rows, 1)?;
    Ok(vec![
        ctx.dispatch(
            first,
            &[b.q, b.k_cache, v_cache, b.slot_pos, b.positions, part, &params, step, b.list.unwrap_or(b.slot_pos)],
            [groups("attention", heads.n_heads / hpw, 1)?, rows, groups("attention", splits, 1)?],
        ),
        ctx.dispatch(merge, &[part, b.out, &params, step], [groups("attention", heads.n_heads, 1)?, rows, 1]),
    ])
}

/// Reference of the compact list of a table's valid slots below `n_slots`
/// ([`crate::ops::cache_update::build_chosen`] writes it).
pub fn reference_list(table: &[u32], n_slots: usize) -> Vec<u32> {
    let valid: Vec<u32> = (0..n_slots.min(table.len()) as u32).filter(|&j| table[j as usize] != INVALID_SLOT).collect();
    std::iter::once(valid.len() as u32).chain(valid).collect()
}

/// Reference in f64: q (rows, n_heads·hd), caches (n_slots, n_kv·hd), slot_pos (n_slots).
pub fn reference(q: &[f32], k: &[f32], v: &[f32], slot_pos: &[u32], positions: &[u32], heads: Heads) -> Vec<f32> {
    reference_with_mass(q, k, v, slot_pos, positions, heads).0
}

/// [`reference`], also returning the probabilities (rows, n_heads, n_slots).
pub fn reference_with_mass(q: &[f32], k: &[f32], v: &[f32], slot_pos: &[u32], positions: &[u32], heads: Heads) -> (Vec<f32>, Vec<f32>) {
    let Heads { n_heads, n_kv_heads, head_dim: hd, window } = heads;
    let group = n_heads / n_kv_heads;
    let kvd = n_kv_heads * hd;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f32; positions.len() * n_heads * hd];
    let mut mass = vec![0f32; positions.len() * n_heads * slot_pos.len()];
    for (r, &pos) in positions.iter().enumerate() {
        for h in 0..n_heads {
            let kvh = h / group;
            let qv = &q[(r * n_heads + h) * hd..(r * n_heads + h + 1) * hd];
            let scores: Vec<Option<f64>> = slot_pos
                .iter()
                .enumerate()
                .map(|(j, &sp)| {
                    (sp != INVALID_SLOT && sp <= pos && (window == 0 || ((pos - sp) as usize) < window)).then(|| {
                        let kr = &k[j * kvd + kvh * hd..j * kvd + (kvh + 1) * hd];
                        qv.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                    })
                })
                .collect();
            let m = scores.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                continue;
            }
            let w: Vec<f64> = scores.iter().map(|s| s.map_or(0.0, |s| (s - m).exp())).collect();
            let z: f64 = w.iter().sum();
            for (j, wj) in w.iter().enumerate() {
                mass[(r * n_heads + h) * slot_pos.len() + j] = (wj / z) as f32;
            }
            for d in 0..hd {
                let s: f64 = w.iter().enumerate().map(|(j, wj)| wj * v[j * kvd + kvh * hd + d] as f64).sum();
                out[(r * n_heads + h) * hd + d] = (s / z) as f32;
            }
        }
    }
    (out, mass)
}
