//! Tensors as files store them (F32, F16, BF16, Q4_0, Q4_1, Q8_0), their CPU dequantization,
//! quantizers (for tests and tools), and their GPU form: the file's quantization kept, blocks
//! re-laid to 4-byte alignment (see shaders/quant.wgsl).

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
    Q8_0,
}

impl DType {
    /// Weights per block (1 for float types).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
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
            DType::Q8_0 => 34,
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
            8 => DType::Q8_0,
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
            DType::Q8_0 => 8,
            DType::BF16 => 30,
        }
    }

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
        DType::Q8_0 => {
            for blk in data[..n / 32 * 34].chunks_exact(34) {
                let d = f16_at(blk, 0);
                out.extend((0..32).map(|j| d * (blk[2 + j] as i8) as f32));
            }
        }
    }
    out
}

/// Quantizes `x` (length a multiple of 32 for block types) to `dtype`, as llama.cpp does.
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
}

/// Re-lays a file's tensor bytes for the GPU, keeping its quantization: Q4_0 becomes the Q4
/// layout with m = -8 d (exact), Q8_0 blocks get 2 bytes of padding, the rest is unchanged.
pub fn pack_for_gpu(dtype: DType, data: &[u8]) -> (WType, Vec<u8>) {
    match dtype {
        DType::F32 => (WType::F32, data.to_vec()),
        DType::F16 => (WType::F16, data.to_vec()),
        DType::BF16 => (WType::BF16, data.to_vec()),
        DType::Q4_1 => (WType::Q4, data.to_vec()),
        DType::Q4_0 => {
            let mut out = Vec::with_capacity(data.len() / 18 * 20);
            for blk in data.chunks_exact(18) {
                let d = f16::from_le_bytes([blk[0], blk[1]]);
                out.extend_from_slice(&blk[..2]);
                out.extend_from_slice(&(-(d * f16::from_f32(8.0))).to_le_bytes());
                out.extend_from_slice(&blk[2..]);
            }
            (WType::Q4, out)
        }
        DType::Q8_0 => {
            let mut out = Vec::with_capacity(data.len() / 34 * 36);
            for blk in data.chunks_exact(34) {
                out.extend_from_slice(&blk[..2]);
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(&blk[2..]);
            }
            (WType::Q8, out)
        }
    }
}

/// A weight matrix on the GPU, (rows, cols) in its file's quantization.
pub struct GpuWeight {
    pub name: String,
    pub wtype: WType,
    pub rows: usize,
    pub cols: usize,
    pub buffer: wgpu::Buffer,
}

impl GpuWeight {
    /// Uploads a tensor, checking that it fits in one binding of this device.
    pub fn upload(ctx: &Context, t: &HostTensor) -> Result<Self> {
        let (rows, cols) = t.rows_cols();
        if t.dtype.is_quantized() && cols % 32 != 0 {
            return Err(Error::Shape { op: "upload", what: format!("{}: rows of {cols} are not whole blocks of 32", t.name) });
        }
        let (wtype, bytes) = pack_for_gpu(t.dtype, &t.data);
        ctx.check_binding(&t.name, bytes.len() as u64)?;
        let buffer = ctx.storage_init(&t.name, &bytes)?;
        Ok(Self { name: t.name.clone(), wtype, rows, cols, buffer })
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
