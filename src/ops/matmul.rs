//! y = x · Wᵀ with W in its file's quantization (shaders/matmul.wgsl; shaders/matvec_cpu.wgsl on CPU-backed
//! devices).

use std::sync::Arc;

use super::{check_len, groups};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch, KernelShape};
use crate::shaders;
use crate::tensor::{GpuWeight, Layout, WType};

/// Rows up to which the matrix-vector kernel is used; above, the tiled one.
pub const MATVEC_MAX_ROWS: usize = 8;

#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub k: u32,
    pub n: u32,
    pub rows: u32,
    /// The windowed CPU kernel: the row of x at the start of the bound window; 0 otherwise.
    pub first: u32,
    /// Elements between rows of y.
    pub y_stride: u32,
    /// y's column of the first output.
    pub y_offset: u32,
    /// RMSNorm's epsilon where the norm is fused in.
    pub eps: f32,
    pub pad: u32,
}

/// Where a product's outputs go: a block of columns of a wider y (its row stride and first
/// column), written or added to what y holds (a residual stream); with `glu`, SwiGLU of the
/// product's stacked gate and up halves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Elements between rows of y; 0 = the product's output count (y is the product alone).
    pub stride: usize,
    /// y's column of the first output.
    pub offset: usize,
    /// y += x · Wᵀ instead of y = x · Wᵀ.
    pub add: bool,
    /// W's rows are gate (the first half) then up: y = silu(x · gateᵀ) ⊙ (x · upᵀ), half as
    /// many outputs (matrix-vector products only).
    pub glu: bool,
    /// With `glu`, GELU (tanh) in place of SiLU (GeGLU).
    pub gelu: bool,
}

impl Output {
    /// y += x · Wᵀ (a residual add in the product's epilogue).
    pub const ADD: Output = Output { stride: 0, offset: 0, add: true, glu: false, gelu: false };
    /// SwiGLU of W's stacked gate and up rows in the product's epilogue.
    pub const GLU: Output = Output { stride: 0, offset: 0, add: false, glu: true, gelu: false };

    /// Columns `offset ..` of a y with rows of `stride` elements.
    pub fn columns(stride: usize, offset: usize) -> Self {
        Output { stride, offset, ..Output::default() }
    }
}

/// RMSNorm of x with this weight, fused into a matrix-vector product as its prologue.
#[derive(Clone, Copy, Debug)]
pub struct Norm<'b> {
    /// (k) the norm's weight.
    pub weight: &'b wgpu::Buffer,
    pub eps: f32,
}

/// Whether a product of up to `max_rows` rows can take a fused norm or SwiGLU.
pub fn fuses(max_rows: usize) -> bool {
    max_rows <= MATVEC_MAX_ROWS
}

/// Whether the plan should fuse RMSNorm into the products that read it on this device. SwiGLU
/// costs nothing in the epilogue, but the norm's prologue is repeated by every workgroup, and
/// on CPU-backed adapters by every invocation: there it costs more than its own dispatch
/// (measured on lavapipe: a q/k/v product with the norm fused in took about twice as long as
/// the norm and the product apart).
pub fn fuses_norm(ctx: &Context, max_rows: usize) -> bool {
    fuses(max_rows) && ctx.kernel_shape == KernelShape::Gpu
}

/// Kernel shapes: cooperative workgroups (GPUs) or independent invocations (CPU-backed devices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cooperative,
    Independent,
    /// As `Independent`, with x read through uniform bindings (whole, or a window of rows per
    /// dispatch), whole weight blocks at a time (shaders/matvec_cpu.wgsl); shapes it cannot
    /// take fall back to `Independent`.
    UniformInput,
}

impl Variant {
    /// The shape that suits this device: CPU-backed adapters pay dearly for barriers and for
    /// storage loads.
    pub fn for_device(ctx: &Context) -> Self {
        match ctx.kernel_shape {
            KernelShape::Cpu => Variant::UniformInput,
            KernelShape::Gpu => Variant::Cooperative,
        }
    }
}

/// Rows of x per uniform window for `k` inputs on this device: as many as one uniform binding
/// holds, each window's start aligned as uniform bindings require; `None` if `k % 32 != 0`.
fn window_rows(ctx: &Context, k: usize) -> Option<usize> {
    if !k.is_multiple_of(32) {
        return None;
    }
    let row_bytes = k as u64 * 4;
    let align = (ctx.limits.min_uniform_buffer_offset_alignment as u64).max(1);
    let mut rows = ctx.limits.max_uniform_buffer_binding_size / row_bytes;
    while rows > 0 && !(rows * row_bytes).is_multiple_of(align) {
        rows -= 1;
    }
    (rows > 0).then_some(rows as usize)
}

/// Dispatches (one, or one per window of rows) computing y (rows, w.rows) = x (rows, w.cols) · Wᵀ
/// for up to `max_rows` rows (`fixed_rows` = 0 takes the row count from the step).
pub fn build(
    ctx: &Context,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    step: &wgpu::Buffer,
    max_rows: usize,
    fixed_rows: u32,
) -> Result<Vec<Dispatch>> {
    build_variant(ctx, Variant::for_device(ctx), w, x, None, y, Output::default(), step, max_rows, fixed_rows)
}

/// [`build`] with x normalised first (`norm`) and the outputs placed (or added) as `out` says.
#[allow(clippy::too_many_arguments)]
pub fn build_into(
    ctx: &Context,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    norm: Option<Norm>,
    y: &wgpu::Buffer,
    out: Output,
    step: &wgpu::Buffer,
    max_rows: usize,
    fixed_rows: u32,
) -> Result<Vec<Dispatch>> {
    build_variant(ctx, Variant::for_device(ctx), w, x, norm, y, out, step, max_rows, fixed_rows)
}

/// [`build`] with the kernel shape chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn build_variant(
    ctx: &Context,
    variant: Variant,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    norm: Option<Norm>,
    y: &wgpu::Buffer,
    out: Output,
    step: &wgpu::Buffer,
    max_rows: usize,
    fixed_rows: u32,
) -> Result<Vec<Dispatch>> {
    let (k, n_out) = (w.cols, if out.glu { w.rows / 2 } else { w.rows });
    let n = w.rows;
    if (norm.is_some() || out.glu) && !fuses(max_rows) {
        return Err(Error::Shape {
            op: "matmul",
            what: format!(
                "{}: a fused norm or SwiGLU needs a matrix-vector product (at most {MATVEC_MAX_ROWS} rows, not {max_rows})",
                w.name
            ),
        });
    }
    if out.glu && !n.is_multiple_of(2) {
        return Err(Error::Shape { op: "matmul", what: format!("{}: SwiGLU needs gate and up rows stacked, not {n} rows", w.name) });
    }
    if let Some(norm) = norm {
        check_len("matmul", "norm weight", norm.weight, k)?;
    }
    let stride = if out.stride == 0 { n_out } else { out.stride };
    if out.offset + n_out > stride {
        return Err(Error::Shape {
            op: "matmul",
            what: format!("{}: {n_out} outputs from column {} overrun rows of {stride}", w.name, out.offset),
        });
    }
    if max_rows == 0 || n == 0 || k == 0 {
        return Err(Error::Shape { op: "matmul", what: format!("{}: empty shape ({max_rows} rows, {n} x {k})", w.name) });
    }
    check_len("matmul", "x", x, max_rows * k)?;
    check_len("matmul", "y", y, max_rows * stride)?;
    let constants = [
        ("WTYPE", w.wtype as u32 as f64),
        ("LAYOUT", w.layout as u32 as f64),
        ("ADD", out.add as u32 as f64),
        ("NORM", norm.is_some() as u32 as f64),
        ("GLU", out.glu as u32 as f64),
        ("ACT", (out.glu && out.gelu) as u32 as f64),
    ];
    let params = |first: usize| Params {
        k: k as u32,
        n: n as u32,
        rows: fixed_rows,
        first: first as u32,
        y_stride: stride as u32,
        y_offset: out.offset as u32,
        eps: norm.map_or(0.0, |nm| nm.eps),
        pad: 0,
    };
    // The uniform-input kernels, where k suits them (they read whole blocks, in either layout);
    // the windowed one fuses nothing, so a fused product that would need it takes `matvec_row`.
    let fused = norm.is_some() || out.glu;
    let window = window_rows(ctx, k).filter(|&window| !fused || max_rows <= MATVEC_MAX_ROWS.min(window));
    if let (Variant::UniformInput, Some(window)) = (variant, window) {
        // Decode: x whole, one dispatch. Prefill: one dispatch per window of rows.
        let (entry, window) = if max_rows <= MATVEC_MAX_ROWS.min(window) { ("matvec_cpu", max_rows) } else { ("window_cpu", window) };
        let row_bytes = k as u64 * 4;
        // g: the norm's weight, or 16 bytes of x where there is no norm (unread).
        let (g, g_range, glen) = match norm {
            Some(nm) => (nm.weight, Some((0, row_bytes)), k / 4),
            None => (x, Some((0, 16)), 1),
        };
        let mut plan = Vec::new();
        for first in (0..max_rows).step_by(window) {
            let count = window.min(max_rows - first);
            let defines = [("XLEN", (count * k / 4) as u32), ("GLEN", glen as u32), ("WOUTS", WINDOW_OUTS as u32)];
            let pipeline = ctx.pipeline_with(&shaders::MATVEC_CPU, entry, &constants, &defines)?;
            let params = ctx.storage_init("matmul.params", bytemuck::bytes_of(&params(first)))?;
            let range = Some((first as u64 * row_bytes, count as u64 * row_bytes));
            let bound = [(&w.buffer, None), (x, range), (y, None), (&params, None), (step, None), (g, g_range), (&w.buffer, None)];
            // matvec_cpu: 4 outputs an invocation (2 with SwiGLU), each row of x in its own
            // workgroups; window_cpu: WINDOW_OUTS outputs of 4 rows.
            let (wg_x, wg_y) = match entry {
                "matvec_cpu" => (groups("matmul", n_out, 64 * if out.glu { 2 } else { 4 })?, count as u32),
                _ => (groups("matmul", n_out, 64 * WINDOW_OUTS)?, groups("matmul", count, 4)?),
            };
            plan.push(ctx.dispatch_sized(pipeline, &bound, [wg_x, wg_y, 1]));
        }
        return Ok(plan);
    }
    let params = ctx.uniform("matmul.params", &params(0));
    if max_rows == 1 && variant == Variant::Cooperative && wide_reads(w) {
        // Fewer outputs per workgroup where there are few outputs, so that a small projection
        // still spreads over a large GPU.
        let wide = [4, 2].into_iter().find(|&r| n_out.div_ceil(r) >= WIDE_GROUPS).unwrap_or(1);
        let (shader, entry) = if ctx.subgroups { (&shaders::MATMUL_SG, "matvec_wide_sg") } else { (&shaders::MATMUL, "matvec_wide") };
        let mut constants = constants.to_vec();
        constants.push(("WIDE", wide as f64));
        let pipeline = ctx.pipeline(shader, entry, &constants)?;
        let g = norm.map_or(x, |nm| nm.weight);
        let wg = [groups("matmul", n_out, wide)?, 1, 1];
        return Ok(vec![ctx.dispatch(pipeline, &[&w.buffer, x, y, &params, step, g, &w.buffer], wg)]);
    }
    let per_group = if out.glu { 4 } else { 8 };
    let (entry, wg) = match (max_rows <= MATVEC_MAX_ROWS, variant) {
        (true, Variant::Cooperative) => ("matvec", [groups("matmul", n_out, per_group)?, 1, 1]),
        (true, Variant::Independent | Variant::UniformInput) => ("matvec_row", [groups("matmul", n_out, 64)?, 1, 1]),
        (false, Variant::Cooperative) => ("tiled", [groups("matmul", n, 64)?, groups("matmul", max_rows, 64)?, 1]),
        (false, Variant::Independent | Variant::UniformInput) => {
            ("blocked", [groups("matmul", n, 64)?, groups("matmul", max_rows, 16)?, 1])
        }
    };
    let pipeline: Arc<wgpu::ComputePipeline> = ctx.pipeline(&shaders::MATMUL, entry, &constants)?;
    if max_rows <= MATVEC_MAX_ROWS {
        // The matrix-vector entries also bind the norm's weight (x itself where there is none, unread).
        let g = norm.map_or(x, |nm| nm.weight);
        return Ok(vec![ctx.dispatch(pipeline, &[&w.buffer, x, y, &params, step, g], wg)]);
    }
    Ok(vec![ctx.dispatch(pipeline, &[&w.buffer, x, y, &params, step], wg)])
}

/// Outputs an invocation of `window_cpu` computes, each for 4 rows of x (its `WOUTS`: 4 loaded
/// x once for 16 products and ran prefill's products 1.6 to 2 times faster than 1 did on lavapipe;
/// 2 was between).
const WINDOW_OUTS: usize = 4;

/// Workgroups a one-row product aims for at least (a large GPU has over a hundred compute units).
const WIDE_GROUPS: usize = 256;

/// Whether `matvec_wide` can walk this matrix's rows in 16-byte words: quantized in the rows
/// layout, or float rows of whole 16-byte words.
fn wide_reads(w: &GpuWeight) -> bool {
    match w.wtype {
        WType::F32 => w.cols.is_multiple_of(4),
        WType::F16 | WType::BF16 => w.cols.is_multiple_of(8),
        _ => w.layout == Layout::Rows,
    }
}

/// Reference for a fused product: RMSNorm of x with `norm` = (weight, eps) where given, the
/// product, then SwiGLU (GeGLU with `out.gelu`) of the stacked gate and up halves with
/// `out.glu`; accumulated in f64.
pub fn reference_fused(w: &[f32], x: &[f32], rows: usize, k: usize, n: usize, norm: Option<(&[f32], f32)>, out: Output) -> Vec<f32> {
    let xn = match norm {
        Some((g, eps)) => super::rmsnorm::reference(x, g, k, eps),
        None => x.to_vec(),
    };
    let y = reference(w, &xn, rows, k, n);
    if !out.glu {
        return y;
    }
    let half = n / 2;
    let (gate, up): (Vec<f32>, Vec<f32>) = y.chunks_exact(n).flat_map(|r| (0..half).map(move |o| (r[o], r[half + o]))).unzip();
    if out.gelu {
        super::swiglu::reference_gelu(&gate, &up)
    } else {
        super::swiglu::reference(&gate, &up)
    }
}

/// Reference: y[r, n] = Σ_k x[r, k] w[n, k], accumulated in f64.
pub fn reference(w: &[f32], x: &[f32], rows: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        for o in 0..n {
            let s: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[o * k + i] as f64).sum();
            y[r * n + o] = s as f32;
        }
    }
    y
}
