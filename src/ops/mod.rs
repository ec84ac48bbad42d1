//! One Rust wrapper per WGSL kernel: its params struct (field for field the WGSL struct), shape
//! checks, dispatch construction and a plain-Rust reference that the tests compare against.

pub mod attention;
pub mod cache_update;
pub mod controller;
pub mod embed;
pub mod head_norm;
pub mod kv_write;
pub mod matmul;
pub mod quest;
pub mod rebuild;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod staged_update;
pub mod swiglu;
pub mod topk;

use crate::error::{Error, Result};

/// Per-step values shared by every kernel of a plan (the WGSL `Step` struct in the prelude).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Step {
    pub n_rows: u32,
    pub n_slots: u32,
    pub counter: u32,
    /// Tokens in the sequence after this step.
    pub n_seen: u32,
    /// Rows 0..n_new are new tokens (the last of them feeds the LM head); the rows after them
    /// recompute released tokens (ADORE's rebuild).
    pub n_new: u32,
    pub pad: [u32; 3],
}

impl Step {
    /// A step of `n_rows` new tokens.
    pub fn new(n_rows: u32, n_slots: u32, counter: u32, n_seen: u32) -> Self {
        Step { n_rows, n_slots, counter, n_seen, n_new: n_rows, pad: [0; 3] }
    }
}

/// Workgroups needed to cover `n` items with groups of `size`, checked against the device's
/// per-dimension limit.
pub(crate) fn groups(op: &'static str, n: usize, size: usize) -> Result<u32> {
    let g = n.div_ceil(size).max(1);
    if g > 65535 {
        return Err(Error::Shape { op, what: format!("{n} items need {g} workgroups, over the limit of 65535") });
    }
    Ok(g as u32)
}

/// Fails unless `buffer` holds at least `elems` 4-byte values.
pub(crate) fn check_len(op: &'static str, what: &str, buffer: &wgpu::Buffer, elems: usize) -> Result<()> {
    if buffer.size() < (elems * 4) as u64 {
        return Err(Error::Shape { op, what: format!("{what} holds {} bytes but needs {}", buffer.size(), elems * 4) });
    }
    Ok(())
}

/// The kernels' `order_key` (prelude.wgsl): an f32 as a u32 with the same ordering.
pub(crate) fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}
