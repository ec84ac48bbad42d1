//! y = x · Wᵀ with W in its file's quantization (shaders/matmul.wgsl).

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
    pub pad: u32,
}

/// Kernel shapes: cooperative workgroups (GPUs) or independent invocations (CPU-backed devices).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cooperative,
    Independent,
}

impl Variant {
    /// The shape that suits this device: CPU-backed adapters pay dearly for barriers.
    pub fn for_device(ctx: &Context) -> Self {
        if ctx.info.device_type == wgpu::DeviceType::Cpu {
            Variant::Independent
        } else {
            Variant::Cooperative
        }
    }
}

/// Dispatch computing y (rows, w.rows) = x (rows, w.cols) · Wᵀ for up to `max_rows` rows
/// (`fixed_rows` = 0 takes the row count from the step).
pub fn build(
    ctx: &Context,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    step: &wgpu::Buffer,
    max_rows: usize,
    fixed_rows: u32,
) -> Result<Dispatch> {
    build_variant(ctx, Variant::for_device(ctx), w, x, y, step, max_rows, fixed_rows)
}

/// [`build`] with the kernel shape chosen by the caller.
#[allow(clippy::too_many_arguments)]
pub fn build_variant(
    ctx: &Context,
    variant: Variant,
    w: &GpuWeight,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    step: &wgpu::Buffer,
    max_rows: usize,
    fixed_rows: u32,
) -> Result<Dispatch> {
    let (n, k) = (w.rows, w.cols);
    if max_rows == 0 || n == 0 || k == 0 {
        return Err(Error::Shape { op: "matmul", what: format!("{}: empty shape ({max_rows} rows, {n} x {k})", w.name) });
    }
    check_len("matmul", "x", x, max_rows * k)?;
    check_len("matmul", "y", y, max_rows * n)?;
    let params = ctx.uniform("matmul.params", &Params { k: k as u32, n: n as u32, rows: fixed_rows, pad: 0 });
    let constants = [("WTYPE", w.wtype as u32 as f64)];
    let (entry, wg) = match (max_rows <= MATVEC_MAX_ROWS, variant) {
        (true, Variant::Cooperative) => ("matvec", [groups("matmul", n, 8)?, 1, 1]),
        (true, Variant::Independent) => ("matvec_row", [groups("matmul", n, 64)?, 1, 1]),
        (false, Variant::Cooperative) => ("tiled", [groups("matmul", n, 64)?, groups("matmul", max_rows, 64)?, 1]),
        (false, Variant::Independent) => ("blocked", [groups("matmul", n, 64)?, groups("matmul", max_rows, 16)?, 1]),
    };
    let pipeline: Arc<wgpu::ComputePipeline> = ctx.pipeline(&shaders::MATMUL, entry, &constants)?;
    Ok(ctx.dispatch(pipeline, &[&w.buffer, x, y, &params, step], wg))
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
