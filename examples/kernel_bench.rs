//! Times each kernel of a decode / prefill step in isolation on the current adapter:
//! `cargo run --release --example kernel_bench [rows] [no-subgroups]`. Median of 3 submits
//! (after one warm-up; `KERNEL_BENCH_SUBMITS=N` for N) of 5 repeats of the kernel's dispatches;
//! `KERNEL_BENCH_ONLY=TEXT` times only the kernels whose names contain TEXT (the key scores also
//! time each of their dispatches apart). The cooperative products are timed over weights in
//! both layouts: blocks (as the file lays them) and rows (what GPUs get).

use std::sync::Arc;

use adore::gpu::{Context, ContextOptions, Dispatch};
use adore::ops::key_score::ShortKeyType;
use adore::ops::{self, attention::Heads, matmul::Output, matmul::Variant, Step};
use adore::tensor::{quantize, DType, GpuWeight, HostTensor, Layout};

fn time(ctx: &Context, name: &str, d: Dispatch, flops: f64) {
    time_all(ctx, name, vec![d], flops)
}

/// One kernel made of several dispatches (a matmul in row windows).
fn time_all(ctx: &Context, name: &str, d: Vec<Dispatch>, flops: f64) {
    if std::env::var("KERNEL_BENCH_ONLY").is_ok_and(|only| !name.contains(&only)) {
        return;
    }
    let list: Vec<&Dispatch> = std::iter::repeat_n(d.iter(), 5).flatten().collect();
    let mut times = Vec::new();
    let submits = std::env::var("KERNEL_BENCH_SUBMITS").ok().and_then(|s| s.parse().ok()).unwrap_or(3usize).max(1);
    for _ in 0..=submits {
        let t = std::time::Instant::now();
        let mut enc = ctx.encoder();
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in &list {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, &d.bind_group, &[]);
                pass.dispatch_workgroups(d.workgroups[0], d.workgroups[1], d.workgroups[2]);
            }
        }
        ctx.queue.submit([enc.finish()]);
        let _ = ctx.device.poll(wgpu::PollType::wait_indefinitely());
        times.push(t.elapsed().as_secs_f64() / 5.0);
    }
    times.remove(0);
    times.sort_by(|a, b| a.total_cmp(b));
    let t = times[times.len() / 2];
    println!("{name:<40} {:>9.3} ms  {:>7.2} GFLOP/s  (fastest {:.3} ms)", t * 1e3, flops / t / 1e9, times[0] * 1e3);
}

fn main() -> adore::Result<()> {
    let rows: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let subgroups = std::env::args().nth(2).is_none_or(|a| a != "no-subgroups");
    let ctx = Arc::new(Context::new_blocking(ContextOptions { subgroups: Some(subgroups), ..ContextOptions::default() })?);
    println!("adapter: {}, rows {rows}, subgroups {}", ctx.describe(), if ctx.subgroups { "used" } else { "unused" });
    let shapes = |t: &HostTensor| -> adore::Result<Vec<(&'static str, Variant, GpuWeight)>> {
        Ok(vec![
            ("Cooperative blocks", Variant::Cooperative, GpuWeight::upload_as(&ctx, t, Layout::Blocks)?),
            ("Cooperative rows", Variant::Cooperative, GpuWeight::upload_as(&ctx, t, Layout::Rows)?),
            ("Independent", Variant::Independent, GpuWeight::upload_as(&ctx, t, Layout::Blocks)?),
            ("UniformInput blocks", Variant::UniformInput, GpuWeight::upload_as(&ctx, t, Layout::Blocks)?),
            ("UniformInput rows", Variant::UniformInput, GpuWeight::upload_as(&ctx, t, Layout::Rows)?),
        ])
    };
    let step = ctx.uniform("step", &Step::new(rows as u32, 512, 0, 0));
    let (hidden, ffn, vocab) = (576usize, 1536usize, 49152usize);
    let x = ctx.storage("x", (rows * ffn.max(hidden) * 4) as u64)?;
    let y = ctx.storage("y", (rows * vocab * 4) as u64)?;
    let rnd: Vec<f32> = (0..vocab * hidden).map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5).collect();
    for (dtype, n, k) in [
        (DType::Q4_1, ffn, hidden),
        (DType::Q4_1, hidden, ffn),
        (DType::Q8_0, vocab, hidden),
        (DType::F32, hidden, hidden),
        (DType::F32, 12288, hidden),
    ] {
        if rows > 8 && n == vocab {
            continue;
        }
        let t = HostTensor { name: format!("{dtype:?} {n}x{k}"), dtype, shape: vec![n, k], data: quantize(dtype, &rnd[..n * k]).into() };
        for (label, v, w) in shapes(&t)? {
            let d = ops::matmul::build_variant(&ctx, v, &w, &x, None, &y, Output::default(), &step, rows, 0)?;
            time_all(
                &ctx,
                &format!("matmul {:?} {} {label}", dtype, t.shape.iter().map(|s| s.to_string()).collect::<Vec<_>>().join("x")),
                d,
                (2 * n * k * rows) as f64,
            );
        }
    }
    // Fused against unfused: RMSNorm then q/k/v (stacked), and gate/up (stacked) then SwiGLU.
    let g = ctx.storage_init("g", bytemuck::cast_slice(&vec![1.0f32; hidden]))?;
    let xn = ctx.storage("xn", (rows * hidden * 4) as u64)?;
    let gu = ctx.storage("gu", (rows * 2 * ffn * 4) as u64)?;
    for (name, n, glu) in [("q/k/v", 960usize, false), ("gate/up", 2 * ffn, true)] {
        if rows > ops::matmul::MATVEC_MAX_ROWS {
            break;
        }
        let t = HostTensor {
            name: name.into(),
            dtype: DType::Q4_1,
            shape: vec![n, hidden],
            data: quantize(DType::Q4_1, &rnd[..n * hidden]).into(),
        };
        let flops = (2 * n * hidden * rows) as f64;
        for (label, v, w) in shapes(&t)? {
            let mut apart = vec![ops::rmsnorm::build(&ctx, &x, &g, &xn, &step, hidden, 1e-5, rows, false)?];
            apart.extend(ops::matmul::build_variant(&ctx, v, &w, &xn, None, &gu, Output::default(), &step, rows, 0)?);
            if glu {
                apart.push(ops::swiglu::build(&ctx, &gu, &y, &step, ffn, rows)?);
            }
            time_all(&ctx, &format!("{name} {label} apart"), apart, flops);
            let norm = Some(ops::matmul::Norm { weight: &g, eps: 1e-5 });
            let out = if glu { Output::GLU } else { Output::default() };
            time_all(
                &ctx,
                &format!("{name} {label} fused"),
                ops::matmul::build_variant(&ctx, v, &w, &x, norm, &y, out, &step, rows, 0)?,
                flops,
            );
        }
    }
    // Attention over 512 and 4096 slots with f32 and f16 caches (random K and V: the kernel's
    // time does not depend on the values).
    let heads = Heads { n_heads: 9, n_kv_heads: 3, head_dim: 64, window: 0 };
    let q = ctx.storage_init("q", bytemuck::cast_slice(&rnd[..rows * 576]))?;
    let out = ctx.storage("out", (rows * 576 * 4) as u64)?;
    for slots in [512usize, 4096] {
        let step = ctx.uniform("step", &Step::new(rows as u32, slots as u32, 0, 0));
        let sp = ctx.storage_init("sp", bytemuck::cast_slice(&(0..slots as u32).collect::<Vec<_>>()))?;
        let pos = ctx.storage_init("pos", bytemuck::cast_slice(&vec![slots as u32 - 1; rows]))?;
        let kv_values = &rnd[..slots * 192];
        for kv in [ops::KvType::F32, ops::KvType::F16] {
            let (kc, vc) = (
                ctx.storage_init("kc", bytemuck::cast_slice(&kv.encode(kv_values)))?,
                ctx.storage_init("vc", bytemuck::cast_slice(&kv.encode(kv_values)))?,
            );
            let b = ops::attention::Buffers {
                q: &q,
                k_cache: &kc,
                v_cache: Some(&vc),
                kv,
                slot_pos: &sp,
                positions: &pos,
                out: &out,
                mass: &out,
                list: None,
            };
            time(
                &ctx,
                &format!("attention {slots} slots, {kv:?} K/V"),
                ops::attention::build(&ctx, &b, &step, heads, slots, rows, ops::attention::Mass::None)?,
                (rows * 9 * slots * 64 * 4) as f64,
            );
        }
    }
    // adore's ranking of one indexed layer over 8192 slots of short keys (rank 16, as sessions
    // store them): the scores, then the choice of 128 (the slots in use vary; random keys).
    let (rank, cap) = (16usize, 8192usize);
    let chunks = ops::key_score::chunks(&ctx, cap);
    let short_q = ctx.storage_init("short q", bytemuck::cast_slice(&rnd[..9 * rank]))?;
    let kind = adore::index::SHORT_KEYS;
    let short_k = ctx.storage_init("short k", bytemuck::cast_slice(&kind.encode(&rnd[..cap * 3 * rank], rank)))?;
    let table = ctx.storage_init("table", bytemuck::cast_slice(&(0..cap as u32).collect::<Vec<_>>()))?;
    let logits = ctx.storage("logits", (ops::key_score::logits_len(9, 3, cap) * 4) as u64)?;
    let stats = ctx.storage("stats", (ops::key_score::stats_len(&ctx, 9, chunks, 1) * 4) as u64)?;
    let score = ctx.storage("score", (cap * 4) as u64)?;
    let (attend, list) = (ctx.storage("attend", (cap * 4) as u64)?, ctx.storage("list", (ops::cache_update::list_len(cap, 1) * 4) as u64)?);
    let spread: Vec<f32> = (0..cap)
        .map(|i| {
            // A normal deviate from two uniform ones (Box-Muller), hashed from the slot.
            let u = |k: usize| ((i * 2 + k).wrapping_mul(2654435761) % 1_000_003) as f32 / 1_000_003.0 + 1e-7;
            let z = (-2.0 * u(0).ln()).sqrt() * (std::f32::consts::TAU * u(1)).cos();
            (2.5 * z).exp() / cap as f32
        })
        .collect();
    let spread = ctx.storage_init("spread scores", bytemuck::cast_slice(&spread))?;
    for n in [256usize, 4096, 8178] {
        let pos = ctx.storage_init("pos", bytemuck::cast_slice(&[n as u32 - 1]))?;
        let step = ctx.uniform("step", &Step::new(1, n as u32, 0, n as u32));
        let shape = ops::key_score::Shape { n_heads: 9, n_kv_heads: 3, rank, window: 0, capacity: cap, chunks };
        let b = ops::key_score::Buffers {
            q: &short_q,
            keys: &short_k,
            kv: kind,
            slot_pos: &table,
            positions: &pos,
            logits: &logits,
            stats: &stats,
            score: &score,
        };
        let flops = (9 * n * rank * 2) as f64;
        let dispatches = ops::key_score::build(&ctx, &b, &step, shape, 1, 1.0 / 270.0)?;
        // Each dispatch apart too (the scan, a merge on CPU devices, the scores).
        for d in &dispatches {
            time(&ctx, &format!("  {} {n} slots, {:?}", d.kernel, d.workgroups), d.clone(), 0.0);
        }
        time_all(&ctx, &format!("key scores {n} slots, {chunks} ranges"), dispatches, flops);
        let p = ops::cache_update::Params { capacity: cap as u32, budget: 128, sinks: 4, recent: 32, in_flight: 1, hint: 0, pad: [0; 2] };
        time(
            &ctx,
            &format!("choose 128 of {n} slots"),
            ops::cache_update::build_chosen(&ctx, Some(&table), &attend, &score, &list, &step, p)?,
            0.0,
        );
        // Scores spread as attention's are (log-normal, e^N(0, 2.5²)): the choice a session
        // makes, where the radix rounds end early (random keys' near-uniform scores take all of
        // them).
        time(
            &ctx,
            &format!("choose 128 of {n} slots, spread scores"),
            ops::cache_update::build_chosen(&ctx, Some(&table), &attend, &spread, &list, &step, p)?,
            0.0,
        );
    }
    // The step's short queries and keys (one layer), keys stored in each type.
    {
        let (qr, kr) = (
            ctx.storage_init("q rows", bytemuck::cast_slice(&rnd[..rows * 576]))?,
            ctx.storage_init("k rows", bytemuck::cast_slice(&rnd[..rows * 192]))?,
        );
        let maps = ctx.storage_init("maps", bytemuck::cast_slice(&rnd[..2 * 3 * 64 * rank]))?;
        let slots = ctx.storage_init("slots", bytemuck::cast_slice(&(0..rows as u32).collect::<Vec<_>>()))?;
        let qs = ctx.storage("short q rows", (rows * 9 * rank * 4) as u64)?;
        let step = ctx.uniform("step", &Step::new(rows as u32, rows as u32, 0, rows as u32));
        let shape = ops::key_score::Shape { n_heads: 9, n_kv_heads: 3, rank, window: 0, capacity: cap, chunks };
        for kind in [ShortKeyType::F16, ShortKeyType::I8] {
            let keys = ctx.storage("keys", (ops::key_score::keys_words(kind, cap, 3, rank) * 4) as u64)?;
            let b = ops::key_score::ShortBuffers { q: &qr, k: &kr, maps: &maps, qs: &qs, keys: &keys, kv: kind, slots: &slots };
            time(&ctx, &format!("short rows, {kind:?} keys"), ops::key_score::build_short(&ctx, &b, &step, shape, 64, rows, false)?, 0.0);
        }
    }
    let g = ctx.storage("g", (ffn * 4) as u64)?;
    time(&ctx, "rmsnorm 576", ops::rmsnorm::build(&ctx, &x, &g, &y, &step, hidden, 1e-5, rows, false)?, (rows * hidden * 3) as f64);
    let (kc, vc) = (ctx.storage("kc", (512 * 192 * 4) as u64)?, ctx.storage("vc", (512 * 192 * 4) as u64)?);
    let sp = ctx.storage_init("sp", bytemuck::cast_slice(&(0..512u32).collect::<Vec<_>>()))?;
    let pos = ctx.storage_init("pos", bytemuck::cast_slice(&vec![511u32; rows]))?;
    let kv_rows = ctx.storage("k", (rows * 192 * 4) as u64)?;
    let slots = ctx.storage_init("slots", bytemuck::cast_slice(&(0..rows as u32).collect::<Vec<_>>()))?;
    let qkv = ops::rope::Qkv {
        qkv: &y,
        q: &q,
        k: &kv_rows,
        k_cache: &kc,
        v_cache: &vc,
        kv: ops::KvType::F32,
        slots: &slots,
        slot_pos: &sp,
        positions: &pos,
        bias: None,
    };
    let r = ops::rope::Rope { n_heads: 9, n_kv_heads: 3, head_dim: 64, theta: 1e5, factors: &[], interleaved: true };
    time(&ctx, "rope 9x64 + kv store", ops::rope::build(&ctx, &qkv, &step, r, 512, rows, true)?, (rows * 960 * 3) as f64);
    time(&ctx, "swiglu 1536", ops::swiglu::build(&ctx, &y, &x, &step, ffn, rows)?, (rows * ffn * 4) as f64);

    // The KV policy kernels at the default model's sizes: budget 256, 512 slots, 8192 positions.
    let (cap, budget, context, kvd) = (512usize, 256usize, 8192usize, 192usize);
    let seen = ctx.uniform("step", &Step::new(rows as u32, cap as u32, 0, 4096));
    let c = adore::controller::Controller::random("bench", hidden, 64, 32, 1)?;
    let gc = ops::controller::GpuController::upload(&ctx, &c, cap)?;
    let state = ctx.storage("state", 2 * 64 * 4)?;
    let keys = ctx.storage("keys", (context * 64 * 4) as u64)?;
    let score = ctx.storage("score", (context * 4) as u64)?;
    let sel = ctx.storage("sel", (context * 4) as u64)?;
    let idx = ctx.storage("idx", 64 * 4)?;
    let table = ctx.storage_init("table", bytemuck::cast_slice(&(0..cap as u32).map(|j| j * 7).collect::<Vec<_>>()))?;
    let flops_step = (rows * 2 * 64 * (hidden + 6 * 64 + 64)) as f64;
    time(&ctx, "controller_step d_c 64", ops::controller::build_step(&ctx, &gc, &x, &pos, &state, &keys, &seen, rows)?, flops_step);
    time(
        &ctx,
        "controller_score 512 slots",
        ops::controller::build_score(&ctx, &gc, &state, &keys, &table, &score, &seen)?,
        (cap * 2 * 64) as f64,
    );
    time(
        &ctx,
        "rebuild_rank 8192 positions",
        ops::rebuild::build_rank(&ctx, &gc, &state, &keys, &score, &seen, context)?,
        (context * 2 * 64) as f64,
    );
    time(&ctx, "topk 4 of 4096 seen", ops::topk::build(&ctx, &score, &sel, &idx, context, 4, Some(&seen))?, 0.0);
    let up =
        ops::cache_update::Params { capacity: cap as u32, budget: budget as u32, sinks: 4, recent: 16, in_flight: 0, hint: 0, pad: [0; 2] };
    time(&ctx, "cache_update 512 slots", ops::cache_update::build(&ctx, &table, &score, &seen, up)?, 0.0);
    let p = ops::staged_update::Params { capacity: cap as u32, budget: budget as u32, kv_dim: kvd as u32, pad: 0 };
    let matrix = ctx.storage("select", (budget * cap * 4) as u64)?;
    let selected = ctx.storage("selected", (2 * budget * kvd * 4) as u64)?;
    let [product, _] = ops::staged_update::build_move_rows(&ctx, &matrix, &kc, &vc, &selected, p)?;
    time(&ctx, "select_matmul 256x512 (one layer)", product, (2 * 2 * budget * cap * kvd) as f64);
    Ok(())
}
