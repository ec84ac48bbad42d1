//! The ADORE controller on the GPU: the GRU over a step's rows (shaders/controller_step.wgsl)
//! and the scores of the cached tokens (shaders/controller_score.wgsl).

use super::{check_len, groups};
use crate::controller::{bucket, Controller};
use crate::error::Result;
use crate::gpu::{Context, Dispatch};
use crate::shaders;

/// The WGSL `ControllerParams` (prelude.wgsl), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Params {
    pub d_c: u32,
    pub hidden: u32,
    pub off_proj: u32,
    pub off_w_ih: u32,
    pub off_w_hh: u32,
    pub off_b_ih: u32,
    pub off_b_hh: u32,
    pub off_w_k: u32,
    pub off_w_q: u32,
    pub off_bias: u32,
    pub max_distance: u32,
    pub capacity: u32,
    /// 1 when the input rows are residual-stream rows, normalised by their RMS.
    pub input_norm: u32,
    pub pad: [u32; 3],
}

/// A controller's weights packed in one GPU buffer, with the distance-bias table expanded
/// (so that CPU and GPU buckets agree exactly).
pub struct GpuController {
    pub weights: wgpu::Buffer,
    pub params: Params,
    /// The layer after which the step reads the residual stream (0: the embeddings).
    pub input_layer: usize,
}

impl GpuController {
    pub fn upload(ctx: &Context, c: &Controller, capacity: usize) -> Result<Self> {
        let mut packed: Vec<f32> = Vec::new();
        let mut put = |v: &[f32]| {
            let off = packed.len() as u32;
            packed.extend_from_slice(v);
            off
        };
        let (off_proj, off_w_ih, off_w_hh, off_b_ih, off_b_hh, off_w_k, off_w_q) =
            (put(&c.proj), put(&c.w_ih), put(&c.w_hh), put(&c.b_ih), put(&c.b_hh), put(&c.w_k), put(&c.w_q));
        let bias: Vec<f32> = (0..=c.max_distance).map(|d| c.bucket_bias[bucket(d as u32, c.buckets, c.max_distance)]).collect();
        let off_bias = put(&bias);
        let params = Params {
            d_c: c.d_c as u32,
            hidden: c.hidden as u32,
            off_proj,
            off_w_ih,
            off_w_hh,
            off_b_ih,
            off_b_hh,
            off_w_k,
            off_w_q,
            off_bias,
            max_distance: c.max_distance as u32,
            capacity: capacity as u32,
            input_norm: (c.input_layer > 0) as u32,
            pad: [0; 3],
        };
        Ok(Self { weights: ctx.storage_init("controller", bytemuck::cast_slice(&packed))?, params, input_layer: c.input_layer })
    }
}

/// Dispatch running the GRU over the step's new rows (`x`: embeddings, or the residual stream
/// after the controller's input layer), storing keys by position.
pub fn build_step(
    ctx: &Context,
    c: &GpuController,
    x: &wgpu::Buffer,
    positions: &wgpu::Buffer,
    state: &wgpu::Buffer,
    keys: &wgpu::Buffer,
    step: &wgpu::Buffer,
    max_rows: usize,
) -> Result<Dispatch> {
    let d = c.params.d_c as usize;
    check_len("controller_step", "x", x, max_rows * c.params.hidden as usize)?;
    check_len("controller_step", "state", state, 2 * d)?;
    // In a storage buffer: see the binding in the shader.
    let params = ctx.storage_init("controller.params", bytemuck::bytes_of(&c.params))?;
    let pipeline = ctx.pipeline(&shaders::CONTROLLER_STEP, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[x, positions, &c.weights, state, keys, &params, step], [1, 1, 1]))
}

/// Dispatch scoring every cached token for the current query.
pub fn build_score(
    ctx: &Context,
    c: &GpuController,
    state: &wgpu::Buffer,
    keys: &wgpu::Buffer,
    slot_pos: &wgpu::Buffer,
    score: &wgpu::Buffer,
    step: &wgpu::Buffer,
) -> Result<Dispatch> {
    let cap = c.params.capacity as usize;
    check_len("controller_score", "slot_pos", slot_pos, cap)?;
    check_len("controller_score", "score", score, cap)?;
    let params = ctx.uniform("controller.params", &c.params);
    let pipeline = ctx.pipeline(&shaders::CONTROLLER_SCORE, "main", &[])?;
    Ok(ctx.dispatch(pipeline, &[&c.weights, state, keys, slot_pos, score, &params, step], [groups("controller_score", cap, 64)?, 1, 1]))
}
