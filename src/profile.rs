//! Where a step's time goes: each dispatch of one recorded step timed, then grouped by kernel.
//!
//! Two ways to time, named in every report. Where the device offers timestamp queries, each
//! dispatch runs in its own compute pass with a GPU timestamp before and after it (the step is
//! still one submit). Elsewhere each dispatch is submitted alone and waited for, timed on the
//! CPU: that includes a submit and a wait per dispatch, so it over-counts small kernels.

use std::sync::Arc;

use crate::error::Result;
use crate::gpu::{Context, Dispatch};

/// How a profile timed its dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// GPU timestamps before and after each dispatch, each in its own pass, one submit.
    Timestamps,
    /// Each dispatch submitted alone and waited for, timed on the CPU.
    SingleSubmits,
}

impl Timing {
    pub fn name(self) -> &'static str {
        match self {
            Timing::Timestamps => "GPU timestamps",
            Timing::SingleSubmits => "CPU-timed single submits",
        }
    }

    /// Timestamps where the device has them, single submits otherwise.
    pub fn best(ctx: &Context) -> Self {
        if ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            Timing::Timestamps
        } else {
            Timing::SingleSubmits
        }
    }
}

/// One dispatch of a profiled step, in recorded order.
#[derive(Clone, Debug)]
pub struct Timed {
    pub kernel: Arc<str>,
    pub workgroups: [u32; 3],
    pub seconds: f64,
}

/// Per-kernel totals of one step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelRow {
    pub kernel: String,
    pub dispatches: usize,
    pub workgroups_min: u64,
    pub workgroups_max: u64,
    pub seconds: f64,
}

/// Every dispatch of one step with its time.
#[derive(Clone, Debug)]
pub struct StepProfile {
    pub timing: Timing,
    pub dispatches: Vec<Timed>,
}

impl StepProfile {
    pub fn seconds(&self) -> f64 {
        self.dispatches.iter().map(|d| d.seconds).sum()
    }

    /// Totals per kernel, the most time first.
    pub fn by_kernel(&self) -> Vec<KernelRow> {
        let mut rows: Vec<KernelRow> = Vec::new();
        for d in &self.dispatches {
            let groups = d.workgroups.iter().map(|&g| g as u64).product::<u64>();
            match rows.iter_mut().find(|r| *r.kernel == *d.kernel) {
                Some(r) => {
                    r.dispatches += 1;
                    r.workgroups_min = r.workgroups_min.min(groups);
                    r.workgroups_max = r.workgroups_max.max(groups);
                    r.seconds += d.seconds;
                }
                None => rows.push(KernelRow {
                    kernel: d.kernel.to_string(),
                    dispatches: 1,
                    workgroups_min: groups,
                    workgroups_max: groups,
                    seconds: d.seconds,
                }),
            }
        }
        rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        rows
    }
}

/// Timestamp queries recorded around dispatches, to be read after the submit.
pub(crate) struct Stamps {
    staging: wgpu::Buffer,
    count: usize,
}

/// Largest number of dispatches one query set times (two queries each).
const PER_SET: usize = (wgpu::QUERY_SET_MAX_QUERIES / 2) as usize;

/// Records each of `dispatches` in its own pass with a timestamp at its start and end, and the
/// copy of the results to a readable buffer.
pub(crate) fn record_timed(ctx: &Context, encoder: &mut wgpu::CommandEncoder, dispatches: &[Dispatch]) -> Stamps {
    let count = dispatches.len();
    let set_bytes = (PER_SET * 16) as u64;
    let last = count.saturating_sub(1) / PER_SET;
    let bytes =
        (last as u64 * set_bytes + (count - last * PER_SET).max(1) as u64 * 16).next_multiple_of(wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT);
    let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("profile resolve"),
        size: bytes,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let staging = ctx.staging(bytes);
    for (i, chunk) in dispatches.chunks(PER_SET).enumerate() {
        let queries = 2 * chunk.len() as u32;
        let set = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: queries,
        });
        for (j, d) in chunk.iter().enumerate() {
            let writes = wgpu::ComputePassTimestampWrites {
                query_set: &set,
                beginning_of_pass_write_index: Some(2 * j as u32),
                end_of_pass_write_index: Some(2 * j as u32 + 1),
            };
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(&d.kernel), timestamp_writes: Some(writes) });
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
        }
        encoder.resolve_query_set(&set, 0..queries, &resolve, i as u64 * set_bytes);
    }
    encoder.copy_buffer_to_buffer(&resolve, 0, &staging, 0, bytes);
    Stamps { staging, count }
}

/// Seconds per dispatch from timestamps recorded by [`record_timed`] (after the submit).
pub(crate) async fn read_stamps(ctx: &Context, stamps: &Stamps) -> Result<Vec<f64>> {
    let bytes = ctx.map_read(&stamps.staging, stamps.staging.size()).await?;
    let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
    let ns_per_tick = ctx.queue.get_timestamp_period() as f64;
    Ok((0..stamps.count)
        .map(|i| {
            let (set, j) = (i / PER_SET, i % PER_SET);
            let at = set * 2 * PER_SET + 2 * j;
            ticks[at + 1].saturating_sub(ticks[at]) as f64 * ns_per_tick * 1e-9
        })
        .collect())
}

/// Submits each of `dispatches` alone and waits for it; seconds per dispatch on the CPU clock.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn run_singly(ctx: &Context, dispatches: &[Dispatch]) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(dispatches.len());
    for d in dispatches {
        let mut encoder = ctx.encoder();
        ctx.record(&mut encoder, std::slice::from_ref(d));
        let t = std::time::Instant::now();
        ctx.queue.submit([encoder.finish()]);
        ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| crate::Error::Gpu(e.to_string()))?;
        out.push(t.elapsed().as_secs_f64());
        ctx.take_error()?;
    }
    Ok(out)
}
