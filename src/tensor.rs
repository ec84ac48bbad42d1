//! Tensors as files store them (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants
//! Q3_K, Q4_K, Q5_K, Q6_K), their CPU dequantization, quantizers (for tests and tools), and their
//! GPU form: the file's quantization kept, blocks re-laid to 4-byte alignment (see
//! shaders/quant.wgsl), Q3_K written exactly as Q6_K.
//!
//! Block layouts are GGML's: 32 weights per block for Q4_0 … Q8_0, super-blocks of 256 weights
//! for the K-quants (8 sub-blocks of 32 with 6-bit scales and mins for Q4_K and Q5_K, 16 of 16
//! with 6-bit signed scales for Q3_K and 8-bit signed scales for Q6_K).

use std::borrow::Cow;

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::gpu::Context;

/// Element types of weight tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// Weights per K-quant super-block.
pub const QK_K: usize = 256;

impl DType {
    /// Weights per block (1 for float types).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q3_K | DType::Q4_K | DType::Q5_K | DType::Q6_K => QK_K,
            _ => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q8_0 => 34,
            DType::Q3_K => 110,
            DType::Q4_K => 144,
            DType::Q5_K => 176,
            DType::Q6_K => 210,
        }
    }

    /// Bytes taken by `n` elements (n must be a multiple of the block size).
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let bs = self.block_size() as u64;
        if !n.is_multiple_of(bs) {
            return None;
        }
        (n / bs).checked_mul(self.block_bytes() as u64)
    }

    /// The GGML type id used by GGUF files.
    pub fn from_ggml(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            6 => DType::Q5_0,
            7 => DType::Q5_1,
            8 => DType::Q8_0,
            11 => DType::Q3_K,
            12 => DType::Q4_K,
            13 => DType::Q5_K,
            14 => DType::Q6_K,
            30 => DType::BF16,
            _ => return None,
        })
    }

    pub fn ggml_id(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q5_0 => 6,
            DType::Q5_1 => 7,
            DType::Q8_0 => 8,
            DType::Q3_K => 11,
            DType::Q4_K => 12,
            DType::Q5_K => 13,
            DType::Q6_K => 14,
            DType::BF16 => 30,
        }
    }

    /// Every type this engine reads.
    pub const ALL: [DType; 12] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }
}

/// Name of a GGML type id, for error messages about types this engine does not read.
pub fn ggml_type_name(id: u32) -> String {
    const NAMES: &[&str] = &[
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K",
        "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    NAMES.get(id as usize).map_or_else(|| format!("unknown type id {id}"), |n| format!("{n} (type id {id})"))
}

/// A tensor as read from a file: row-major, shape outermost first ([rows, cols] for matrices).
#[derive(Clone, Debug)]
pub struct HostTensor<'a> {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: Cow<'a, [u8]>,
}

impl HostTensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// (rows, cols) of a matrix; a vector is one row.
    pub fn rows_cols(&self) -> (usize, usize) {
        match self.shape.as_slice() {
            [c] => (1, *c),
            [r, c] => (*r, *c),
            s => (s[..s.len() - 1].iter().product(), s[s.len() - 1]),
        }
    }

    /// All elements as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        dequantize(self.dtype, &self.data, self.numel())
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes `n` elements of `dtype` from `data`.
pub fn dequantize(dtype: DType, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match dtype {
        DType::F32 => out.extend(data[..n * 4].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::F16 => out.extend(data[..n * 2].chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::BF16 => out.extend(data[..n * 2].chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::Q4_0 => {
            for blk in data[..n / 32 * 18].chunks_exact(18) {
                let d = f16_at(blk, 0);
                out.extend((0..16).map(|j| d * ((blk[2 + j] & 15) as f32 - 8.0)));
                out.extend((0..16).map(|j| d * ((blk[2 + j] >> 4) as f32 - 8.0)));
            }
        }
        DType::Q4_1 => {
            for blk in data[..n / 32 * 20].chunks_exact(20) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                out.extend((0..16).map(|j| d * (blk[4 + j] & 15) as f32 + m));
                out.extend((0..16).map(|j| d * (blk[4 + j] >> 4) as f32 + m));
            }
        }
        DType::Q5_0 | DType::Q5_1 => {
            let bytes = dtype.block_bytes();
            for blk in data[..n / 32 * bytes].chunks_exact(bytes) {
                // Q5_0: d, then qh; Q5_1: d, m, then qh. Weight j: 4 low bits in byte j % 16
                // (low nibble for j < 16), the fifth in bit j of qh.
                let (d, m, h) =
                    if dtype == DType::Q5_0 { (f16_at(blk, 0), -16.0 * f16_at(blk, 0), 2) } else { (f16_at(blk, 0), f16_at(blk, 2), 4) };
                let qh = u32::from_le_bytes([blk[h], blk[h + 1], blk[h + 2], blk[h + 3]]);
                let qs = &blk[h + 4..];
                out.extend((0..32).map(|j| {
                    let lo = if j < 16 { qs[j] & 15 } else { qs[j - 16] >> 4 };
                    let q = lo as u32 | (((qh >> j) & 1) << 4);
                    // Q5_0 is d · (q - 16), computed as llama.cpp does; Q5_1 is d · q + m.
                    if dtype == DType::Q5_0 {
                        d * (q as f32 - 16.0)
                    } else {
                        d * q as f32 + m
                    }
                }));
            }
        }
        DType::Q8_0 => {
            for blk in data[..n / 32 * 34].chunks_exact(34) {
                let d = f16_at(blk, 0);
                out.extend((0..32).map(|j| d * (blk[2 + j] as i8) as f32));
            }
        }
        DType::Q4_K | DType::Q5_K => {
            let bytes = dtype.block_bytes();
            for blk in data[..n / QK_K * bytes].chunks_exact(bytes) {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let scales = &blk[4..16];
                let (qh, qs) = if dtype == DType::Q5_K { (&blk[16..48], &blk[48..]) } else { (&blk[..0], &blk[16..]) };
                // Sub-block s (32 weights): scale and min of 6 bits each; its 4 low bits are the
                // low (s even) or high (s odd) nibbles of bytes 32 (s / 2) .. + 32, Q5_K's fifth
                // bit is bit s of qh[l].
                for s in 0..8 {
                    let (sc, mn) = k_scale_min(scales, s);
                    let (dl, ml) = (d * sc as f32, dmin * mn as f32);
                    out.extend((0..32).map(|l| {
                        let byte = qs[32 * (s / 2) + l];
                        let mut q = if s % 2 == 0 { byte & 15 } else { byte >> 4 };
                        if dtype == DType::Q5_K {
                            q |= ((qh[l] >> s) & 1) << 4;
                        }
                        dl * q as f32 - ml
                    }));
                }
            }
        }
        DType::Q3_K => {
            for blk in data[..n / QK_K * 110].chunks_exact(110) {
                let (sc, q) = q3_k_parts(blk);
                let d = f16_at(blk, 108);
                out.extend((0..QK_K).map(|i| d * sc[i / 16] as f32 * q[i] as f32));
            }
        }
        DType::Q6_K => {
            for blk in data[..n / QK_K * 210].chunks_exact(210) {
                let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
                let d = f16_at(blk, 208);
                // Weight i: half h = i / 128, quarter t = (i % 128) / 32, l = i % 32; 4 low bits
                // in ql[64 h + 32 (t % 2) + l] (low nibble for t < 2), 2 high bits at bit 2 t of
                // qh[32 h + l]; q - 32 times the signed scale of its 16 weights.
                out.extend((0..QK_K).map(|i| {
                    let (h, t, l) = (i / 128, (i % 128) / 32, i % 32);
                    let byte = ql[64 * h + 32 * (t % 2) + l];
                    let lo = if t < 2 { byte & 15 } else { byte >> 4 };
                    let hi = (qh[32 * h + l] >> (2 * t)) & 3;
                    let q = (lo | (hi << 4)) as i32 - 32;
                    d * (sc[8 * h + (i % 128) / 16] as i8) as f32 * q as f32
                }));
            }
        }
    }
    out
}

/// The first block of `data` (whole blocks of `dtype`) whose f16 scale or offset is not finite,
/// as (block, field, value): such a block turns every weight it holds into NaN or infinity.
pub fn bad_scale(dtype: DType, data: &[u8]) -> Option<(usize, &'static str, f32)> {
    let fields: &[(usize, &'static str)] = match dtype {
        DType::F32 | DType::F16 | DType::BF16 => return None,
        DType::Q4_0 | DType::Q5_0 | DType::Q8_0 => &[(0, "d")],
        DType::Q4_1 | DType::Q5_1 => &[(0, "d"), (2, "m")],
        DType::Q4_K | DType::Q5_K => &[(0, "d"), (2, "dmin")],
        DType::Q3_K => &[(108, "d")],
        DType::Q6_K => &[(208, "d")],
    };
    data.chunks_exact(dtype.block_bytes()).enumerate().find_map(|(b, blk)| {
        fields.iter().find_map(|&(at, field)| {
            let v = f16_at(blk, at);
            (!v.is_finite()).then_some((b, field, v))
        })
    })
}

/// Scale and min (6 bits each) of sub-block `s` of a Q4_K / Q5_K super-block, from its 12
/// bytes: sub-blocks 0..3 in the low 6 bits of bytes s and s + 4, sub-blocks 4..7 in the
/// nibbles of bytes s + 4 with their top 2 bits in the top bits of bytes s - 4 and s.
fn k_scale_min(q: &[u8], s: usize) -> (u8, u8) {
    if s < 4 {
        (q[s] & 63, q[s + 4] & 63)
    } else {
        ((q[s + 4] & 15) | ((q[s - 4] >> 6) << 4), (q[s + 4] >> 4) | ((q[s] >> 6) << 4))
    }
}

/// Rounds `v` to an integer in `lo ..= hi`.
fn level(v: f32, lo: i32, hi: i32) -> i32 {
    (v.round() as i32).clamp(lo, hi)
}

/// One Q4_K or Q5_K super-block (`levels` = 15 or 31) by plain rounding: each sub-block's range
/// [min(0, lowest), highest] in `levels` steps, scales and mins to 6 bits against the
/// super-block's d and dmin. (llama.cpp searches for better scales; any block it writes is read
/// the same way.)
fn quantize_k_block(x: &[f32], levels: i32, out: &mut Vec<u8>) {
    let mut scale = [0f32; 8];
    let mut min = [0f32; 8];
    for s in 0..8 {
        let sub = &x[32 * s..32 * s + 32];
        let lo = sub.iter().copied().fold(0.0f32, f32::min);
        let hi = sub.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scale[s] = (hi - lo) / levels as f32;
        min[s] = -lo;
    }
    let d = f16::from_f32(scale.iter().copied().fold(0.0, f32::max) / 63.0);
    let dmin = f16::from_f32(min.iter().copied().fold(0.0, f32::max) / 63.0);
    let step = |v: f32, unit: f16| if unit.to_f32() > 0.0 { level(v / unit.to_f32(), 0, 63) as u8 } else { 0 };
    let sc: Vec<u8> = scale.iter().map(|&v| step(v, d)).collect();
    let mn: Vec<u8> = min.iter().map(|&v| step(v, dmin)).collect();
    let mut scales = [0u8; 12];
    for j in 0..4 {
        scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        scales[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        scales[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    let q: Vec<u8> = (0..QK_K)
        .map(|i| {
            let s = i / 32;
            let unit = d.to_f32() * sc[s] as f32;
            if unit > 0.0 {
                level((x[i] + dmin.to_f32() * mn[s] as f32) / unit, 0, levels) as u8
            } else {
                0
            }
        })
        .collect();
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    out.extend_from_slice(&scales);
    if levels == 31 {
        out.extend((0..32).map(|l| (0..8).fold(0u8, |h, s| h | ((q[32 * s + l] >> 4) << s))));
    }
    for c in 0..4 {
        out.extend((0..32).map(|l| (q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4)));
    }
}

/// The signed scales of a super-block's 16 sub-blocks of 16 and the signed levels of its 256
/// weights by plain rounding, for levels in `lo ..= hi` and scales in `slo ..= shi` against an f16
/// d (weight i ≈ d × scale[i / 16] × level[i]).
fn quantize_16s(x: &[f32], (lo, hi): (i32, i32), (slo, shi): (i32, i32)) -> (f16, Vec<i8>, Vec<i8>) {
    let scale: Vec<f32> = x.chunks_exact(16).map(|s| s.iter().fold(0.0f32, |m, v| m.max(v.abs())) / hi as f32).collect();
    let d = f16::from_f32(scale.iter().copied().fold(0.0, f32::max) / slo.abs().min(shi) as f32);
    let sc: Vec<i8> = scale.iter().map(|&v| if d.to_f32() > 0.0 { level(v / d.to_f32(), slo, shi) as i8 } else { 0 }).collect();
    let q: Vec<i8> = (0..QK_K)
        .map(|i| {
            let unit = d.to_f32() * sc[i / 16] as f32;
            if unit != 0.0 {
                level(x[i] / unit, lo, hi) as i8
            } else {
                0
            }
        })
        .collect();
    (d, sc, q)
}

/// One Q3_K super-block by plain rounding: 16 signed scales of 6 bits against d, q in -4 ..= 3.
fn quantize_q3_k_block(x: &[f32], out: &mut Vec<u8>) {
    let (d, sc, q) = quantize_16s(x, (-4, 3), (-32, 31));
    let q: Vec<u8> = q.iter().map(|&v| (v + 4) as u8).collect();
    // Weight i = 128 h + 32 j + l: its low 2 bits at bit 2 j of qs[32 h + l], its third bit at
    // bit 4 h + j of hmask[l].
    out.extend((0..32).map(|l| (0..8).fold(0u8, |m, b| m | ((q[128 * (b / 4) + 32 * (b % 4) + l] >> 2) << b))));
    for h in 0..2 {
        out.extend((0..32).map(|l| (0..4).fold(0u8, |m, j| m | ((q[128 * h + 32 * j + l] & 3) << (2 * j)))));
    }
    let sc: Vec<u8> = sc.iter().map(|&v| (v as i32 + 32) as u8).collect();
    // Scale s = 4 g + i: its low 4 bits in the low (g < 2) or high nibble of byte 4 (g % 2) + i,
    // its top 2 bits at bit 2 g of byte 8 + i.
    let mut packed = [0u8; 12];
    for (s, &v) in sc.iter().enumerate() {
        let (g, i) = (s / 4, s % 4);
        packed[4 * (g % 2) + i] |= (v & 15) << (4 * (g / 2));
        packed[8 + i] |= (v >> 4) << (2 * g);
    }
    out.extend_from_slice(&packed);
    out.extend_from_slice(&d.to_le_bytes());
}

/// A Q3_K super-block's 16 scales (-32 ..= 31) and 256 levels (-4 ..= 3): weight i is
/// d × scale[i / 16] × level[i] (the layout as `quantize_q3_k_block` writes it).
fn q3_k_parts(blk: &[u8]) -> ([i8; 16], [i8; QK_K]) {
    let (hmask, qs, packed) = (&blk[..32], &blk[32..96], &blk[96..108]);
    let sc = std::array::from_fn(|s| {
        let (g, i) = (s / 4, s % 4);
        let low = (packed[4 * (g % 2) + i] >> (4 * (g / 2))) & 15;
        let high = (packed[8 + i] >> (2 * g)) & 3;
        (low | (high << 4)) as i8 - 32
    });
    let q = std::array::from_fn(|i| {
        let (h, j, l) = (i / 128, (i % 128) / 32, i % 32);
        let low = (qs[32 * h + l] >> (2 * j)) & 3;
        let high = (hmask[l] >> (4 * h + j)) & 1;
        (low | (high << 2)) as i8 - 4
    });
    (sc, q)
}

/// Q3_K blocks as Q6_K blocks of the same weights: the same d, 8-bit scales holding the 6-bit
/// ones, levels -4 ..= 3 among Q6_K's -32 ..= 31 (exact; 210 bytes a block instead of 110).
fn q3_k_as_q6_k(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 110 * 210);
    for blk in data.chunks_exact(110) {
        let (sc, q) = q3_k_parts(blk);
        write_q6_k_block(f16::from_le_bytes([blk[108], blk[109]]), &sc, &q, &mut out);
    }
    out
}

/// One Q6_K super-block by plain rounding: 16 signed scales of 8 bits against d, q in -32 ..= 31.
fn quantize_q6_k_block(x: &[f32], out: &mut Vec<u8>) {
    let (d, sc, q) = quantize_16s(x, (-32, 31), (-128, 127));
    write_q6_k_block(d, &sc, &q, out);
}

/// Writes a Q6_K super-block of 16 scales and 256 levels in -32 ..= 31.
fn write_q6_k_block(d: f16, sc: &[i8], q: &[i8], out: &mut Vec<u8>) {
    let q: Vec<u8> = q.iter().map(|&v| (v + 32) as u8).collect();
    for h in 0..2 {
        let q = &q[128 * h..];
        out.extend((0..32).map(|l| (q[l] & 15) | ((q[l + 64] & 15) << 4)));
        out.extend((0..32).map(|l| (q[l + 32] & 15) | ((q[l + 96] & 15) << 4)));
    }
    for h in 0..2 {
        let q = &q[128 * h..];
        out.extend((0..32).map(|l| (q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) | ((q[l + 96] >> 4) << 6)));
    }
    out.extend(sc.iter().map(|&v| v as u8));
    out.extend_from_slice(&d.to_le_bytes());
}

/// Quantizes `x` (length a multiple of the block size) to `dtype`: the 32-weight formats as
/// llama.cpp's reference quantizers do, the K-quants by plain rounding (see `quantize_k_block`).
pub fn quantize(dtype: DType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    match dtype {
        DType::F32 => x.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => x.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => x.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        DType::Q4_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                let d = amax / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let q0 = ((b[j] * id + 8.5) as i32).clamp(0, 15) as u8;
                    let q1 = ((b[j + 16] * id + 8.5) as i32).clamp(0, 15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        DType::Q4_1 => {
            for b in x.chunks_exact(32) {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                for j in 0..16 {
                    let q0 = (((b[j] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                    let q1 = (((b[j + 16] - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        DType::Q8_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        DType::Q5_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                let d = amax / -16.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u32> = b.iter().map(|v| ((v * id + 16.5) as i32).clamp(0, 31) as u32).collect();
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&q.iter().enumerate().fold(0u32, |h, (j, v)| h | ((v >> 4) << j)).to_le_bytes());
                out.extend((0..16).map(|j| ((q[j] & 15) | ((q[j + 16] & 15) << 4)) as u8));
            }
        }
        DType::Q5_1 => {
            for b in x.chunks_exact(32) {
                let min = b.iter().copied().fold(f32::INFINITY, f32::min);
                let max = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 31.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                let q: Vec<u32> = b.iter().map(|v| (((v - min) * id + 0.5) as i32).clamp(0, 31) as u32).collect();
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                out.extend_from_slice(&q.iter().enumerate().fold(0u32, |h, (j, v)| h | ((v >> 4) << j)).to_le_bytes());
                out.extend((0..16).map(|j| ((q[j] & 15) | ((q[j + 16] & 15) << 4)) as u8));
            }
        }
        DType::Q3_K => x.chunks_exact(QK_K).for_each(|b| quantize_q3_k_block(b, &mut out)),
        DType::Q4_K => x.chunks_exact(QK_K).for_each(|b| quantize_k_block(b, 15, &mut out)),
        DType::Q5_K => x.chunks_exact(QK_K).for_each(|b| quantize_k_block(b, 31, &mut out)),
        DType::Q6_K => x.chunks_exact(QK_K).for_each(|b| quantize_q6_k_block(b, &mut out)),
    }
    out
}

/// Weight formats as the kernels read them (the WTYPE override constant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    Q4 = 3,
    Q8 = 4,
    Q5 = 5,
    Q4K = 6,
    Q5K = 7,
    Q6K = 8,
}

impl WType {
    /// For the quantized formats: (words per block, the first of the block's payload words, how
    /// many payload words). The payload is the block's quantized weights (and for Q6K their high
    /// bits); the other words (scales, mins, Q5's and Q5K's high bits) are its header.
    pub fn block_split(self) -> Option<(usize, usize, usize)> {
        match self {
            WType::F32 | WType::F16 | WType::BF16 => None,
            WType::Q4 => Some((5, 1, 4)),
            WType::Q8 => Some((9, 1, 8)),
            WType::Q5 => Some((6, 2, 4)),
            WType::Q4K => Some((36, 4, 32)),
            WType::Q5K => Some((44, 12, 32)),
            WType::Q6K => Some((53, 0, 48)),
        }
    }

    /// Weights per block (1 for the float formats).
    pub fn block_weights(self) -> usize {
        match self {
            WType::F32 | WType::F16 | WType::BF16 => 1,
            WType::Q4K | WType::Q5K | WType::Q6K => QK_K,
            _ => 32,
        }
    }
}

/// How a quantized matrix's words lie on the GPU (the LAYOUT override constant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Block after block, as [`pack_for_gpu`] lays them (the float formats always).
    Blocks = 0,
    /// Row by row, each row padded to a whole 16 bytes: first the payload words of all its
    /// blocks, then their headers, so that the lanes of a workgroup walking a row read
    /// consecutive 16-byte words (shaders/matmul.wgsl's `matvec_wide`), and a CPU device's
    /// invocation reads a block's payload in 16-byte loads (shaders/matvec_cpu.wgsl). What
    /// every device gets.
    Rows = 1,
}

/// Words of one row of `cols` weights in `layout` (the float formats are never re-laid).
pub fn row_words(wtype: WType, layout: Layout, cols: usize) -> usize {
    let Some((words, _, _)) = wtype.block_split() else {
        return match wtype {
            WType::F32 => cols,
            _ => cols.div_ceil(2),
        };
    };
    let blocks = cols / wtype.block_weights() * words;
    match layout {
        Layout::Blocks => blocks,
        Layout::Rows => blocks.next_multiple_of(4),
    }
}

/// Re-lays GPU-packed blocks (`pack_for_gpu`) of a (rows, cols) matrix row by row
/// ([`Layout::Rows`]); the float formats are returned as they are.
pub fn rows_layout(wtype: WType, packed: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    let Some((words, first, payload)) = wtype.block_split() else { return packed.to_vec() };
    let nb = cols / wtype.block_weights();
    let (row_in, row_out) = (nb * words * 4, row_words(wtype, Layout::Rows, cols) * 4);
    let mut out = vec![0u8; rows * row_out];
    for (src, dst) in packed.chunks_exact(row_in).zip(out.chunks_exact_mut(row_out)) {
        let (pay, head) = dst.split_at_mut(nb * payload * 4);
        let header = (words - payload) * 4;
        for (b, blk) in src.chunks_exact(words * 4).enumerate() {
            let (p0, p1) = (first * 4, (first + payload) * 4);
            pay[b * payload * 4..(b + 1) * payload * 4].copy_from_slice(&blk[p0..p1]);
            let h = &mut head[b * header..(b + 1) * header];
            h[..p0].copy_from_slice(&blk[..p0]);
            h[p0..].copy_from_slice(&blk[p1..]);
        }
    }
    out
}

/// Re-lays a file's tensor bytes for the GPU, keeping its quantization: Q4_0 becomes the Q4
/// layout with m = -8 d and Q5_0 the Q5 (Q5_1) layout with m = -16 d (both exact: a power of
/// two times an f16), Q8_0 and Q6_K blocks get 2 bytes of padding, the rest is unchanged.
pub fn pack_for_gpu(dtype: DType, data: &[u8]) -> (WType, Vec<u8>) {
    match dtype {
        DType::F32 => (WType::F32, data.to_vec()),
        DType::F16 => (WType::F16, data.to_vec()),
        DType::BF16 => (WType::BF16, data.to_vec()),
        DType::Q4_1 => (WType::Q4, data.to_vec()),
        DType::Q4_0 => (WType::Q4, with_min(data, 18, -8.0)),
        DType::Q8_0 => (WType::Q8, padded(data, 34, 2)),
        DType::Q5_1 => (WType::Q5, data.to_vec()),
        DType::Q5_0 => (WType::Q5, with_min(data, 22, -16.0)),
        DType::Q4_K => (WType::Q4K, data.to_vec()),
        DType::Q5_K => (WType::Q5K, data.to_vec()),
        DType::Q3_K => (WType::Q6K, padded(&q3_k_as_q6_k(data), 210, 210)),
        DType::Q6_K => (WType::Q6K, padded(data, 210, 210)),
    }
}

/// Blocks of `size` bytes that start with an f16 d, each with the f16 m = `factor` d inserted
/// after d (the form with an offset that the kernels read).
fn with_min(data: &[u8], size: usize, factor: f32) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / size * (size + 2));
    for blk in data.chunks_exact(size) {
        let d = f16::from_le_bytes([blk[0], blk[1]]);
        out.extend_from_slice(&blk[..2]);
        out.extend_from_slice(&(d * f16::from_f32(factor)).to_le_bytes());
        out.extend_from_slice(&blk[2..]);
    }
    out
}

/// Blocks of `size` bytes with 2 zero bytes inserted at byte `at` of each (4-byte alignment).
fn padded(data: &[u8], size: usize, at: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / size * (size + 2));
    for blk in data.chunks_exact(size) {
        out.extend_from_slice(&blk[..at]);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&blk[at..]);
    }
    out
}

/// A matrix uploaded as row ranges of at most one binding each (an embedding table or LM head of
/// a large vocabulary under a 128 MiB binding limit): the kernels run once per part.
pub struct RowSplit {
    /// (first row, the part as a matrix of its rows), in order.
    pub parts: Vec<(usize, GpuWeight)>,
    pub rows: usize,
    pub cols: usize,
}

impl RowSplit {
    /// Uploads `t` whole if it fits in one binding, otherwise in as few row ranges as do.
    pub fn upload(ctx: &Context, t: &HostTensor) -> Result<Self> {
        Self::upload_limited(ctx, t, ctx.binding_limit(), Layout::Rows)
    }

    /// [`RowSplit::upload`] with parts of at most `limit` bytes (tests force splits with it), laid
    /// out as `layout` says.
    pub fn upload_limited(ctx: &Context, t: &HostTensor, limit: u64, layout: Layout) -> Result<Self> {
        let (rows, cols) = t.rows_cols();
        let block = t.dtype.block_size();
        if rows == 0 || !cols.is_multiple_of(block) {
            return Err(Error::Shape {
                op: "upload",
                what: format!("{}: rows of {cols} are not whole {:?} blocks of {block}", t.name, t.dtype),
            });
        }
        let row_bytes = cols / block * t.dtype.block_bytes();
        let wtype = pack_for_gpu(t.dtype, &t.data[..row_bytes]).0;
        let gpu_row_bytes = row_words(wtype, layout, cols) as u64 * 4;
        let per_part = (limit / gpu_row_bytes.max(1)) as usize;
        if per_part == 0 {
            return Err(Error::TensorTooLarge { tensor: format!("{} (one row)", t.name), bytes: gpu_row_bytes, limit });
        }
        let mut parts = Vec::new();
        for first in (0..rows).step_by(per_part) {
            let n = per_part.min(rows - first);
            let name = if n == rows { t.name.clone() } else { format!("{} rows {first}..{}", t.name, first + n) };
            let data = &t.data[first * row_bytes..(first + n) * row_bytes];
            let part = HostTensor { name, dtype: t.dtype, shape: vec![n, cols], data: Cow::Borrowed(data) };
            parts.push((first, GpuWeight::upload_as(ctx, &part, layout)?));
        }
        Ok(Self { parts, rows, cols })
    }

    /// Bytes on the GPU.
    pub fn size(&self) -> u64 {
        self.parts.iter().map(|(_, w)| w.buffer.size()).sum()
    }
}

/// A weight matrix on the GPU, (rows, cols) in its file's quantization.
pub struct GpuWeight {
    pub name: String,
    pub wtype: WType,
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    pub buffer: wgpu::Buffer,
}

impl GpuWeight {
    /// Uploads a tensor in the rows layout (what every device's kernels read fastest), checking
    /// that it fits in one binding.
    pub fn upload(ctx: &Context, t: &HostTensor) -> Result<Self> {
        Self::upload_as(ctx, t, Layout::Rows)
    }

    /// [`GpuWeight::upload`] in a given layout (ignored by the float formats).
    pub fn upload_as(ctx: &Context, t: &HostTensor, layout: Layout) -> Result<Self> {
        let (rows, cols) = t.rows_cols();
        let block = t.dtype.block_size();
        if !cols.is_multiple_of(block) {
            return Err(Error::Shape {
                op: "upload",
                what: format!("{}: rows of {cols} are not whole {:?} blocks of {block}", t.name, t.dtype),
            });
        }
        let (wtype, mut bytes) = pack_for_gpu(t.dtype, &t.data);
        let layout = if wtype.block_split().is_some() { layout } else { Layout::Blocks };
        if layout == Layout::Rows {
            bytes = rows_layout(wtype, &bytes, rows, cols);
        }
        ctx.check_binding(&t.name, bytes.len() as u64)?;
        let buffer = ctx.storage_init(&t.name, &bytes)?;
        Ok(Self { name: t.name.clone(), wtype, layout, rows, cols, buffer })
    }

    /// Matrices that multiply the same input, uploaded as one matrix with their rows stacked in
    /// order (one product gives all their outputs) when they share a type and a row length;
    /// otherwise each alone, in order.
    pub fn upload_stacked(ctx: &Context, name: &str, parts: &[&HostTensor]) -> Result<Vec<Self>> {
        let Some(first) = parts.first() else { return Ok(Vec::new()) };
        let (_, cols) = first.rows_cols();
        if parts.len() == 1 || parts.iter().any(|t| t.dtype != first.dtype || t.rows_cols().1 != cols) {
            return parts.iter().map(|t| Self::upload(ctx, t)).collect();
        }
        let rows: usize = parts.iter().map(|t| t.rows_cols().0).sum();
        let data: Vec<u8> = parts.iter().flat_map(|t| t.data.iter().copied()).collect();
        let stacked = HostTensor { name: name.to_string(), dtype: first.dtype, shape: vec![rows, cols], data: data.into() };
        Ok(vec![Self::upload(ctx, &stacked)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                // Sub-blocks of different magnitudes.
                u * (1.0 + (i / 16 % 5) as f32)
            })
            .collect()
    }

    #[test]
    fn q3_k_rounds_each_weight_to_its_sub_block_grid() {
        let x = values(2 * QK_K, 7);
        let q = quantize(DType::Q3_K, &x);
        assert_eq!(q.len(), 2 * 110);
        let y = dequantize(DType::Q3_K, &q, x.len());
        for (s, (xs, ys)) in x.chunks_exact(16).zip(y.chunks_exact(16)).enumerate() {
            // The step is about max|x| / 3 (the 6-bit scale rounds it by up to 1/62 of the
            // largest); a weight is within half a step.
            let step = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 3.0;
            for (a, b) in xs.iter().zip(ys) {
                assert!((a - b).abs() <= 0.5 * step * 1.1 + 1e-3, "sub-block {s}: {a} -> {b} (step {step})");
            }
        }
    }

    #[test]
    fn q3_k_as_q6_k_holds_the_same_weights() {
        let x = values(3 * QK_K, 11);
        let q3 = quantize(DType::Q3_K, &x);
        let q6 = q3_k_as_q6_k(&q3);
        assert_eq!(q6.len(), 3 * 210);
        assert_eq!(dequantize(DType::Q3_K, &q3, x.len()), dequantize(DType::Q6_K, &q6, x.len()));
        // Every level and scale, not only those the quantizer writes: random bytes, finite d.
        let mut raw: Vec<u8> = (0..4 * 110).map(|i| (i as u32).wrapping_mul(2654435761).rotate_right(13) as u8).collect();
        for b in raw.chunks_exact_mut(110) {
            b[108..].copy_from_slice(&f16::from_f32(0.003).to_le_bytes());
        }
        assert_eq!(dequantize(DType::Q3_K, &raw, 4 * QK_K), dequantize(DType::Q6_K, &q3_k_as_q6_k(&raw), 4 * QK_K));
    }
}
