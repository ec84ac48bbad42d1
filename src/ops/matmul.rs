//! y = x · Wᵀ with W in its file's quantization (shaders/matmul.wgsl; shaders/matvec_cpu.wgsl on CPU-backed
//! devices).

use std::sync::Arc;

use super::{check_len, groups};
use crate::error::{Error, Result};
use crate::gpu::{Context, Dispatch};
use crate::shaders;
use crate::tensor::GpuWeight;

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
    pub pad: [u32; 2],
}

/// Where a product's outputs go: a block of columns of a wider y (its row stride and first
/// column), written or added to what y holds (a residual stream).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Elements between rows of y; 0 = the product's output count (y is the product alone).
    pub stride: usize,
    /// y's column of the first output.
    pub offset: usize,
    /// y += x · Wᵀ instead of y = x · Wᵀ.
    pub add: bool,
}

impl Output {
    /// y += x · Wᵀ (a residual add in the product's epilogue).
    pub const ADD: Output = Output { stride: 0, offset: 0, add: true };

    /// Columns `offset ..` of a y with rows of `stride` elements.
    pub fn columns(stride: usize, offset: usize) -> Self {
        Output { stride, offset, add: false }
    }
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
        if ctx.info.device_type == wgpu::DeviceType::Cpu {
            Variant::UniformInput
        } else {
            Variant::Cooperative
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
    build_variant(ctx, Variant::for_device(ctx), w, x, y, Output::default(), step, max_rows, fixed_rows)
}

/// [`build`] with the outputs placed (or added) as `out` says.
pub fn build_into(
    ctx: &Context,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    out: Output,
    step: &wgpu::Buffer,
    max_rows: usize,
    fixed_rows: u32,
) -> Result<Vec<Dispatch>> {
    build_variant(ctx, Variant::for_device(ctx), w, x, y, out, step, max_rows, fixed_rows)
}

/// [`build`] with the kernel shape chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn build_variant(
    ctx: &Context,
    variant: Variant,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    out: Output,
    step: &wgpu::Buffer,
    max_rows: usize,
    fixed_rows: u32,
) -> Result<Vec<Dispatch>> {
    let (n, k) = (w.rows, w.cols);
    let stride = if out.stride == 0 { n } else { out.stride };
    if out.offset + n > stride {
        return Err(Error::Shape {
            op: "matmul",
            what: format!("{}: {n} outputs from column {} overrun rows of {stride}", w.name, out.offset),
        });
    }
    if max_rows == 0 || n == 0 || k == 0 {
        return Err(Error::Shape { op: "matmul", what: format!("{}: empty shape ({max_rows} rows, {n} x {k})", w.name) });
    }
    check_len("matmul", "x", x, max_rows * k)?;
    check_len("matmul", "y", y, max_rows * stride)?;
    let constants = [("WTYPE", w.wtype as u32 as f64), ("ADD", out.add as u32 as f64)];
    let params = |first: usize| Params {
        k: k as u32,
        n: n as u32,
        rows: fixed_rows,
        first: first as u32,
        y_stride: stride as u32,
        y_offset: out.offset as u32,
        pad: [0; 2],
    };
    if variant == Variant::UniformInput {
        if let Some(window) = window_rows(ctx, k) {
            // Decode: x whole, one dispatch. Prefill: one dispatch per window of rows.
            let (entry, window) = if max_rows <= MATVEC_MAX_ROWS.min(window) { ("matvec_cpu", max_rows) } else { ("window_cpu", window) };
            let row_bytes = k as u64 * 4;
            let mut plan = Vec::new();
            for first in (0..max_rows).step_by(window) {
                let count = window.min(max_rows - first);
                let pipeline = ctx.pipeline_with(&shaders::MATVEC_CPU, entry, &constants, &[("XLEN", (count * k / 4) as u32)])?;
                let params = ctx.storage_init("matmul.params", bytemuck::bytes_of(&params(first)))?;
                let range = Some((first as u64 * row_bytes, count as u64 * row_bytes));
                let bound = [(&w.buffer, None), (x, range), (y, None), (&params, None), (step, None)];
                let wg_y = if entry == "matvec_cpu" { count as u32 } else { groups("matmul", count, 4)? };
                plan.push(ctx.dispatch_sized(pipeline, &bound, [groups("matmul", n, 64)?, wg_y, 1]));
            }
            return Ok(plan);
        }
    }
    let params = ctx.uniform("matmul.params", &params(0));
    let (entry, wg) = match (max_rows <= MATVEC_MAX_ROWS, variant) {
        (true, Variant::Cooperative) => ("matvec", [groups("matmul", n, 8)?, 1, 1]),
        (true, Variant::Independent | Variant::UniformInput) => ("matvec_row", [groups("matmul", n, 64)?, 1, 1]),
        (false, Variant::Cooperative) => ("tiled", [groups("matmul", n, 64)?, groups("matmul", max_rows, 64)?, 1]),
        (false, Variant::Independent | Variant::UniformInput) => {
            ("blocked", [groups("matmul", n, 64)?, groups("matmul", max_rows, 16)?, 1])
        }
    };
    let pipeline: Arc<wgpu::ComputePipeline> = ctx.pipeline(&shaders::MATMUL, entry, &constants)?;
    Ok(vec![ctx.dispatch(pipeline, &[&w.buffer, x, y, &params, step], wg)])
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
