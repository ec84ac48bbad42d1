//! The key index's ranking of every slot: the last new row's attention over the short keys,
//! each query head's probabilities summed (shaders/key_logits.wgsl, then shaders/key_score.wgsl).
//! The slots are cut into ranges that keep their own softmax, so that many workgroups share
//! the scan; the second dispatch merges the ranges and normalises.

use super::{check_len, groups, KvType};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, KernelShape};
use crate::ops::attention::{reference_with_mass, Heads};
use crate::shaders;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct LogitParams {
    n_heads: u32,
    n_kv_heads: u32,
    rank: u32,
    scale: f32,
    capacity: u32,
    chunks: u32,
    window: u32,
    pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ScoreParams {
    n_heads: u32,
    capacity: u32,
    chunks: u32,
    scale: f32,
    merged: u32,
    pad: [u32; 3],
}

/// The short keys' geometry.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// Floats per short key (a multiple of 4, at most 64).
    pub rank: usize,
    /// As [`crate::ops::attention::Heads::window`].
    pub window: usize,
    pub capacity: usize,
    /// Slot ranges scanned by workgroups of their own ([`chunks`]).
    pub chunks: usize,
}

/// Slot ranges for `capacity` slots: on GPUs one per 256 slots, so that a long cache fills many
/// workgroups; on CPU-backed adapters one, a workgroup per KV head (two, for three KV heads on
/// two cores, was no faster).
pub fn chunks(ctx: &Context, capacity: usize) -> usize {
    match ctx.kernel_shape {
        KernelShape::Gpu => capacity.div_ceil(256).max(1),
        KernelShape::Cpu => 1,
    }
}

/// Softmax statistics per head that the scan leaves for the scores: one per range on GPUs; on
/// CPU devices one per lane of each range's workgroup (64), merged by a dispatch of their own,
/// since there a workgroup barrier costs llvmpipe more than the merge.
fn partials(ctx: &Context, chunks: usize) -> usize {
    match ctx.kernel_shape {
        KernelShape::Gpu => chunks,
        KernelShape::Cpu => chunks * 64,
    }
}

/// How a layer's short keys are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortKeyType {
    F32,
    /// f16, two to a 4-byte word (WGSL's `pack2x16float`).
    F16,
    /// int8, four to a word (WGSL's `pack4x8snorm`: round(127 · v / s)), each key (rank values of
    /// one KV head at one slot) scaled by its largest magnitude s, kept as an f32 after all the
    /// keys: rank + 4 bytes a key, against 2 · rank in f16. The rank must be a multiple of 4.
    I8,
}

impl ShortKeyType {
    /// 4-byte words of `keys` keys of `rank` values (f16: an even rank).
    pub fn key_words(self, keys: usize, rank: usize) -> usize {
        match self {
            ShortKeyType::F32 => keys * rank,
            ShortKeyType::F16 => (keys * rank).div_ceil(2),
            ShortKeyType::I8 => keys * (rank.div_ceil(4) + 1),
        }
    }

    /// Bytes a token's short keys take at one layer (n_kv_heads keys of `rank`).
    pub fn bytes_per_token(self, n_kv_heads: usize, rank: usize) -> usize {
        self.key_words(n_kv_heads, rank) * 4
    }

    /// The kernels' `KEYS` define.
    fn define(self) -> u32 {
        match self {
            ShortKeyType::F32 => 0,
            ShortKeyType::F16 => 1,
            ShortKeyType::I8 => 2,
        }
    }

    /// Keys of `rank` values, one after the other, as stored (for I8: every key's bytes, then
    /// every key's scale), padded to 16 bytes.
    pub fn encode(self, keys: &[f32], rank: usize) -> Vec<u32> {
        let mut words = match self {
            ShortKeyType::F32 => KvType::F32.encode(keys),
            ShortKeyType::F16 => KvType::F16.encode(keys),
            ShortKeyType::I8 => {
                let scales: Vec<f32> = keys.chunks(rank).map(largest).collect();
                let mut words: Vec<u32> = keys
                    .chunks(rank)
                    .zip(&scales)
                    .flat_map(|(key, &s)| {
                        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
                        key.chunks(4)
                            .map(move |four| four.iter().enumerate().map(|(i, &v)| (snorm8(v * inv) as u8 as u32) << (8 * i)).sum::<u32>())
                    })
                    .collect();
                words.extend(scales.iter().map(|s| s.to_bits()));
                words
            }
        };
        words.resize(words.len().next_multiple_of(4), 0);
        words
    }

    /// `keys` keys of `rank` values read back from their words ([`ShortKeyType::encode`]).
    pub fn decode(self, words: &[u32], keys: usize, rank: usize) -> Vec<f32> {
        match self {
            ShortKeyType::F32 => KvType::F32.decode(&words[..keys * rank]),
            ShortKeyType::F16 => KvType::F16.decode(&words[..(keys * rank).div_ceil(2)])[..keys * rank].to_vec(),
            ShortKeyType::I8 => {
                let w4 = rank.div_ceil(4);
                (0..keys)
                    .flat_map(|k| {
                        let s = f32::from_bits(words[keys * w4 + k]);
                        (0..rank).map(move |c| (words[k * w4 + c / 4] >> (8 * (c % 4))) as u8 as i8 as f32 / 127.0 * s)
                    })
                    .collect()
            }
        }
    }

    /// Keys of `rank` values as stored and read back: for CPU references.
    pub fn round(self, keys: &[f32], rank: usize) -> Vec<f32> {
        let n = keys.len() / rank;
        self.decode(&self.encode(keys, rank), n, rank)
    }
}

/// The largest magnitude of a key's values.
fn largest(key: &[f32]) -> f32 {
    key.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `pack4x8snorm`'s byte for one value: round(127 · clamp(v, -1, 1)).
fn snorm8(v: f32) -> i8 {
    (v.clamp(-1.0, 1.0) * 127.0).round() as i8
}

/// Words of a layer's short keys as stored for `capacity` slots: padded to 16 bytes, since the
/// scan reads them in 16-byte words.
pub fn keys_words(kind: ShortKeyType, capacity: usize, n_kv_heads: usize, rank: usize) -> usize {
    kind.key_words(capacity * n_kv_heads, rank).next_multiple_of(4)
}

/// f32 values of the last row's short-key logits for `capacity` slots: each KV head's group of
/// query heads in vec4s per slot.
pub fn logits_len(n_heads: usize, n_kv_heads: usize, capacity: usize) -> usize {
    n_kv_heads * capacity * (n_heads / n_kv_heads).div_ceil(4) * 4
}

/// f32 values of the scan's statistics for up to `max_rows` rows, and of their merge.
pub fn stats_len(ctx: &Context, n_heads: usize, chunks: usize, max_rows: usize) -> usize {
    max_rows * n_heads * (partials(ctx, chunks) + 1) * 2
}

pub struct Buffers<'a> {
    /// (rows, n_heads, rank) short queries.
    pub q: &'a wgpu::Buffer,
    /// (n_kv_heads, capacity, rank) short keys, as `kv` stores them: each KV head's keys
    /// together, so that the scan's workgroups (one per KV head) read cache lines of their own.
    pub keys: &'a wgpu::Buffer,
    pub kv: ShortKeyType,
    pub slot_pos: &'a wgpu::Buffer,
    pub positions: &'a wgpu::Buffer,
    /// [`logits_len`] f32 scratch: the last row's short-key logits.
    pub logits: &'a wgpu::Buffer,
    /// [`stats_len`] f32 scratch.
    pub stats: &'a wgpu::Buffer,
    /// (capacity) the slots' scores; those at or above `Step::n_slots` (free) are left as they were.
    pub score: &'a wgpu::Buffer,
}

/// The dispatches: the ranges' logits and softmaxes, on CPU devices the merge of the scan's
/// lanes' statistics, then the scores, scaled by `scale`.
pub fn build(ctx: &Context, b: &Buffers, step: &wgpu::Buffer, shape: Shape, max_rows: usize, scale: f32) -> Result<Vec<Dispatch>> {
    let Shape { n_heads, n_kv_heads, rank, window, capacity, chunks } = shape;
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 || n_heads > 64 || rank == 0 || rank % 4 != 0 || rank > 64 || chunks == 0 {
        return Err(Error::Shape {
            op: "key_score",
            what: format!(
                "{n_heads} query heads, {n_kv_heads} KV heads, rank {rank}, {chunks} ranges: heads must divide evenly (at most 64), the rank be a multiple of 4 up to 64, and ranges at least one"
            ),
        });
    }
    check_len("key_score", "q", b.q, max_rows * n_heads * rank)?;
    check_len("key_score", "keys", b.keys, keys_words(b.kv, capacity, n_kv_heads, rank))?;
    check_len("key_score", "slot_pos", b.slot_pos, capacity)?;
    check_len("key_score", "positions", b.positions, max_rows)?;
    check_len("key_score", "logits", b.logits, logits_len(n_heads, n_kv_heads, capacity))?;
    check_len("key_score", "stats", b.stats, stats_len(ctx, n_heads, chunks, max_rows))?;
    check_len("key_score", "score", b.score, capacity)?;
    let lp = LogitParams {
        n_heads: n_heads as u32,
        n_kv_heads: n_kv_heads as u32,
        rank: rank as u32,
        scale: 1.0 / (rank as f32).sqrt(),
        capacity: capacity as u32,
        chunks: chunks as u32,
        window: window as u32,
        pad: 0,
    };
    // Where `single` reads the heads' statistics: the one range's, or the merge's.
    let parts = partials(ctx, chunks);
    let merged = if parts == 1 { 0 } else { max_rows * n_heads * parts } as u32;
    let sp = ScoreParams { n_heads: n_heads as u32, capacity: capacity as u32, chunks: parts as u32, scale, merged, pad: [0; 3] };
    // Query heads per workgroup: the whole group sharing a KV head (each key read once for all
    // of them; on lavapipe one head per workgroup was slower, not faster).
    let hpw = n_heads / n_kv_heads;
    // f16 keys of an even number of vec4s are read two vec4s a 16-byte word, int8 keys of a
    // multiple of four vec4s four a word; others a vec4 at a time.
    let r4 = (rank / 4) as u32;
    let (rn, r8, r16) = match b.kv {
        ShortKeyType::F16 if r4.is_multiple_of(2) => (0, r4 / 2, 0),
        ShortKeyType::I8 if r4.is_multiple_of(4) => (0, 0, r4 / 4),
        _ => (r4, 0, 0),
    };
    let g4 = hpw.div_ceil(4) as u32;
    let lane_stats = (parts > chunks) as u32;
    let defines = [
        ("R4", r4),
        ("RN", rn),
        ("R8", r8),
        ("R16", r16),
        ("GROUP", hpw as u32),
        ("G4", g4),
        ("KEYS", b.kv.define()),
        ("LANE_STATS", lane_stats),
    ];
    let logits = ctx.pipeline_with(&shaders::KEY_LOGITS, "main", &[], &defines)?;
    let lp = ctx.uniform("key_logits.params", &lp);
    let first = ctx.dispatch(
        logits,
        &[b.q, b.keys, b.slot_pos, b.positions, b.logits, b.stats, &lp, step],
        [groups("key_score", n_heads / hpw, 1)?, 1, groups("key_score", chunks, 1)?],
    );
    let sp = ctx.uniform("key_score.params", &sp);
    let score_defines = [("GROUP", hpw as u32), ("G4", g4), ("N_KV", n_kv_heads as u32)];
    let mut out = vec![first];
    // Ranges merged in the scores' workgroups on GPUs; on CPU devices, whose barriers are dear,
    // by a dispatch of their own.
    let entry = match (parts, ctx.kernel_shape) {
        (1, _) => "single",
        (_, KernelShape::Gpu) => "ranges",
        (_, KernelShape::Cpu) => {
            let merge = ctx.pipeline_with(&shaders::KEY_SCORE, "merge", &[], &score_defines)?;
            out.push(ctx.dispatch(merge, &[b.stats, &sp, step], [1, 1, 1]));
            "single"
        }
    };
    let score = ctx.pipeline_with(&shaders::KEY_SCORE, entry, &[], &score_defines)?;
    // `single` takes 4 slots an invocation, `ranges` one.
    let per_group = if entry == "single" { 4 * 64 } else { 64 };
    out.push(ctx.dispatch(score, &[b.stats, &sp, step, b.logits, b.score], [groups("key_score", capacity, per_group)?, 1, 1]));
    Ok(out)
}

/// Reference in f64: the scores of [`build`] for the row with short queries `q` (n_heads ·
/// rank) at position `pos`, over short keys (n_slots, n_kv_heads · rank) with slot table
/// `slot_pos`: scale Σ_h softmax_j(q_h · k_j / √rank), over the slots the row sees (attention's
/// probabilities, [`crate::ops::attention::reference_with_mass`], summed over heads).
pub fn reference(q: &[f32], keys: &[f32], slot_pos: &[u32], pos: u32, shape: Shape, scale: f32) -> Vec<f32> {
    let Shape { n_heads, n_kv_heads, rank, window, .. } = shape;
    let heads = Heads { n_heads, n_kv_heads, head_dim: rank, window };
    let no_values = vec![0.0; keys.len()];
    let (_, mass) = reference_with_mass(&q[..n_heads * rank], keys, &no_values, slot_pos, &[pos], heads);
    let n = slot_pos.len();
    (0..n).map(|j| ((0..n_heads).map(|h| mass[h * n + j] as f64).sum::<f64>() * scale as f64) as f32).collect()
}

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ShortParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    rank: u32,
    capacity: u32,
    pad: [u32; 3],
}

/// The buffers of [`build_short`].
pub struct ShortBuffers<'a> {
    /// (rows, n_heads, head_dim) the rows' rotated queries.
    pub q: &'a wgpu::Buffer,
    /// (rows, n_kv_heads, head_dim) their rotated keys.
    pub k: &'a wgpu::Buffer,
    /// (2, n_kv_heads, head_dim, rank) the layer's maps ([`crate::index::KeyIndex::maps`]).
    pub maps: &'a wgpu::Buffer,
    /// (rows, n_heads, rank) out: the short queries.
    pub qs: &'a wgpu::Buffer,
    /// (n_kv_heads, capacity, rank) the layer's short keys, as `kv` stores them.
    pub keys: &'a wgpu::Buffer,
    pub kv: ShortKeyType,
    /// (rows) the rows' slots.
    pub slots: &'a wgpu::Buffer,
}

/// The dispatch computing the rows' short queries (unless `keys_only`) and storing their short
/// keys in their slots (shaders/short_rows.wgsl), for rows of `head_dim` per head.
pub fn build_short(
    ctx: &Context,
    b: &ShortBuffers,
    step: &wgpu::Buffer,
    shape: Shape,
    head_dim: usize,
    max_rows: usize,
    keys_only: bool,
) -> Result<Dispatch> {
    let Shape { n_heads, n_kv_heads, rank, capacity, .. } = shape;
    let multiple = if b.kv == ShortKeyType::I8 { 4 } else { 2 };
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 || rank == 0 || rank % multiple != 0 || rank > 64 {
        return Err(Error::Shape {
            op: "short_rows",
            what: format!(
                "{n_heads} query heads, {n_kv_heads} KV heads, rank {rank}: heads must divide evenly and the rank be a multiple of {multiple} up to 64"
            ),
        });
    }
    check_len("short_rows", "q", b.q, max_rows * n_heads * head_dim)?;
    check_len("short_rows", "k", b.k, max_rows * n_kv_heads * head_dim)?;
    check_len("short_rows", "maps", b.maps, 2 * n_kv_heads * head_dim * rank)?;
    check_len("short_rows", "qs", b.qs, max_rows * n_heads * rank)?;
    check_len("short_rows", "keys", b.keys, b.kv.key_words(capacity * n_kv_heads, rank))?;
    check_len("short_rows", "slots", b.slots, max_rows)?;
    let group = n_heads / n_kv_heads;
    let p = ShortParams {
        n_heads: n_heads as u32,
        n_kv_heads: n_kv_heads as u32,
        head_dim: head_dim as u32,
        rank: rank as u32,
        capacity: capacity as u32,
        pad: [0; 3],
    };
    let defines = [("GROUP", group as u32), ("KEYS", b.kv.define()), ("W4", (rank / 4) as u32), ("QUERIES", !keys_only as u32)];
    let pipeline = ctx.pipeline_with(&shaders::SHORT_ROWS, "main", &[], &defines)?;
    let params = ctx.uniform("short_rows.params", &p);
    Ok(ctx.dispatch(
        pipeline,
        &[b.q, b.k, b.maps, b.qs, b.keys, b.slots, &params, step],
        [groups("short_rows", (group + 1) * rank / 2, 64)?, groups("short_rows", n_kv_heads, 1)?, groups("short_rows", max_rows, 1)?],
    ))
}

/// Reference: one row's short queries (n_heads · rank) and short keys (n_kv_heads · rank, in
/// f32) from its queries `q` and keys `k` and the maps of [`build_short`].
pub fn short_reference(
    maps: &[f32],
    q: &[f32],
    k: &[f32],
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rank: usize,
) -> (Vec<f32>, Vec<f32>) {
    let group = n_heads / n_kv_heads;
    let short = |m: usize, x: &[f32]| -> Vec<f32> {
        let m = &maps[m * head_dim * rank..(m + 1) * head_dim * rank];
        (0..rank).map(|c| (0..head_dim).map(|i| m[i * rank + c] as f64 * x[i] as f64).sum::<f64>() as f32).collect()
    };
    let qs = (0..n_heads).flat_map(|h| short(h / group, &q[h * head_dim..(h + 1) * head_dim])).collect();
    let ks = (0..n_kv_heads).flat_map(|g| short(n_kv_heads + g, &k[g * head_dim..(g + 1) * head_dim])).collect();
    (qs, ks)
}
