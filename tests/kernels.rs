//! Every kernel against its plain-Rust reference on seeded random inputs at awkward sizes.

mod common;

use std::sync::Arc;

use adore::gpu::{Context, Dispatch};
use adore::ops::key_score::ShortKeyType;
use adore::ops::{self, attention::Heads, attention::INVALID_SLOT, matmul::Output, matmul::Variant, sample::Sampling, Step};
use adore::tensor::{dequantize, quantize, DType, GpuWeight, HostTensor, Layout, RowSplit};
use common::{assert_close, ctx, ctx_gpu_shape, ctx_without_subgroups, Rng, AWKWARD};

fn step(ctx: &Context, n_rows: usize, n_slots: usize, counter: u32) -> wgpu::Buffer {
    ctx.uniform("step", &Step::new(n_rows as u32, n_slots as u32, counter, 0))
}

fn buf(ctx: &Context, v: &[f32]) -> wgpu::Buffer {
    ctx.storage_init("test", bytemuck::cast_slice(v)).unwrap()
}

fn buf_u32(ctx: &Context, v: &[u32]) -> wgpu::Buffer {
    ctx.storage_init("test", bytemuck::cast_slice(v)).unwrap()
}

fn run(ctx: &Context, d: Dispatch) {
    ctx.run(&[d]).unwrap();
}

fn read(ctx: &Context, b: &wgpu::Buffer, n: usize) -> Vec<f32> {
    pollster::block_on(ctx.read_f32(b, n)).unwrap()
}

/// A random matrix (host tensor) and its exact values.
fn host_weight(rng: &mut Rng, dtype: DType, n: usize, k: usize) -> (HostTensor<'static>, Vec<f32>) {
    let raw = rng.vec(n * k, 1.0);
    let data = quantize(dtype, &raw);
    let exact = dequantize(dtype, &data, n * k);
    (HostTensor { name: format!("w {dtype:?} {n}x{k}"), dtype, shape: vec![n, k], data: data.into() }, exact)
}

fn weight(ctx: &Context, rng: &mut Rng, dtype: DType, n: usize, k: usize) -> (GpuWeight, Vec<f32>) {
    let (t, exact) = host_weight(rng, dtype, n, k);
    (GpuWeight::upload_as(ctx, &t, Layout::Blocks).unwrap(), exact)
}

/// The ways a product of `rows` rows is checked: kernel shape, weight layout, context. The
/// cooperative and uniform-input shapes read both layouts (devices get rows; blocks stay
/// possible), and where the adapter has subgroups the one-row product runs with and without
/// them (`ctxs[1]`).
fn variants(ctxs: &[Arc<Context>; 2], rows: usize) -> Vec<(Variant, Layout, &Context)> {
    let mut v = vec![(Variant::Cooperative, Layout::Blocks, &*ctxs[0]), (Variant::Cooperative, Layout::Rows, &*ctxs[0])];
    if ctxs[0].subgroups && rows == 1 {
        v.push((Variant::Cooperative, Layout::Rows, &*ctxs[1]));
    }
    v.extend([
        (Variant::Independent, Layout::Rows, &*ctxs[0]),
        (Variant::UniformInput, Layout::Blocks, &*ctxs[0]),
        (Variant::UniformInput, Layout::Rows, &*ctxs[0]),
    ]);
    v
}

#[test]
fn matmul_all_types_variants_and_sizes() {
    let ctxs = [ctx(), ctx_without_subgroups()];
    let mut rng = Rng::new(1);
    for dtype in DType::ALL {
        let ks: &[usize] = match dtype.block_size() {
            1 => &[1, 3, 17, 64, 257],
            32 => &[32, 96, 576, 1536],
            _ => &[256, 768, 1536],
        };
        for &k in ks {
            for &n in AWKWARD {
                for rows in [1, 3, 8, 17, 70] {
                    if n * k > 300_000 || rows * n > 40_000 {
                        continue;
                    }
                    let (t, exact) = host_weight(&mut rng, dtype, n, k);
                    let x = rng.vec(rows * k, 1.0);
                    let want = ops::matmul::reference(&exact, &x, rows, k, n);
                    for (variant, layout, ctx) in variants(&ctxs, rows) {
                        let w = &GpuWeight::upload_as(ctx, &t, layout).unwrap();
                        let xb = buf(ctx, &x);
                        let y = ctx.storage("y", (rows * n * 4) as u64).unwrap();
                        let out = Output::default();
                        let d =
                            ops::matmul::build_variant(&ctx, variant, &w, &xb, None, &y, out, &step(&ctx, rows, 0, 0), rows, 0).unwrap();
                        ctx.run(&d).unwrap();
                        let tol = 1e-4 * (k as f32).sqrt();
                        let what = format!("matmul {dtype:?} {variant:?} {layout:?} subgroups {} rows {rows} n {n} k {k}", ctx.subgroups);
                        assert_close(&what, &read(&ctx, &y, rows * n), &want, tol, 1e-4);
                        // Placed in columns 3 .. 3 + n of wider rows and added to what they held.
                        if n * k <= 100_000 {
                            let stride = n + 5;
                            let held = rng.vec(rows * stride, 1.0);
                            let yb = buf(&ctx, &held);
                            let out = Output { stride, offset: 3, add: true, glu: false, gelu: false };
                            ctx.run(
                                &ops::matmul::build_variant(&ctx, variant, &w, &xb, None, &yb, out, &step(&ctx, rows, 0, 0), rows, 0)
                                    .unwrap(),
                            )
                            .unwrap();
                            let mut placed = held.clone();
                            for r in 0..rows {
                                for o in 0..n {
                                    placed[r * stride + 3 + o] += want[r * n + o];
                                }
                            }
                            assert_close(&format!("{what}, placed and added"), &read(&ctx, &yb, rows * stride), &placed, tol, 1e-4);
                        }
                    }
                }
            }
        }
    }
}

/// The matrix-vector products with the steps fused around them: RMSNorm as they read x, SwiGLU of
/// stacked gate and up rows, the residual add; every shape, against the unfused references.
#[test]
fn matmul_fused_norm_and_swiglu() {
    let ctxs = [ctx(), ctx_without_subgroups()];
    let ctx = ctxs[0].clone();
    let mut rng = Rng::new(11);
    for dtype in DType::ALL {
        let ks: &[usize] = match dtype.block_size() {
            1 => &[3, 17, 64, 257],
            32 => &[32, 96, 576],
            _ => &[256, 768],
        };
        for &k in ks {
            for n_out in [1, 3, 17, 65, 255] {
                for rows in [1, 3, 8] {
                    for (norm, glu, gelu) in [(true, false, false), (false, true, false), (true, true, false), (true, true, true)] {
                        let n = if glu { 2 * n_out } else { n_out };
                        let (t, exact) = host_weight(&mut rng, dtype, n, k);
                        // Rows of different scales, so that a wrong row's norm shows.
                        let x: Vec<f32> = (0..rows).flat_map(|r| rng.vec(k, 0.5 + r as f32)).collect();
                        let g = rng.vec(k, 1.0);
                        let eps = 1e-5;
                        let gated = Output { glu, gelu, ..Output::default() };
                        let want = ops::matmul::reference_fused(&exact, &x, rows, k, n, norm.then_some((&g[..], eps)), gated);
                        for (variant, layout, ctx) in variants(&ctxs, rows) {
                            let w = GpuWeight::upload_as(ctx, &t, layout).unwrap();
                            let (xb, gb) = (buf(ctx, &x), buf(ctx, &g));
                            let nm = norm.then_some(ops::matmul::Norm { weight: &gb, eps });
                            let what = format!(
                                "fused matmul {dtype:?} {variant:?} {layout:?} subgroups {} norm {norm} glu {glu} gelu {gelu} rows {rows} outputs {n_out} k {k}",
                                ctx.subgroups
                            );
                            let tol = 1e-4 * (k as f32).sqrt();
                            // Placed in columns 2 .. 2 + n_out of wider rows and added to what they held.
                            let stride = n_out + 3;
                            let held = rng.vec(rows * stride, 1.0);
                            let yb = buf(&ctx, &held);
                            let out = Output { stride, offset: 2, add: true, glu, gelu };
                            let st = step(&ctx, rows, 0, 0);
                            ctx.run(&ops::matmul::build_variant(&ctx, variant, &w, &xb, nm, &yb, out, &st, rows, 0).unwrap()).unwrap();
                            let mut placed = held.clone();
                            for r in 0..rows {
                                for o in 0..n_out {
                                    placed[r * stride + 2 + o] += want[r * n_out + o];
                                }
                            }
                            assert_close(&what, &read(&ctx, &yb, rows * stride), &placed, tol, 1e-3);
                        }
                    }
                }
            }
        }
    }
    // Prefill's products fuse nothing: asking is an error that says so.
    let (w, _) = weight(&ctx, &mut rng, DType::F32, 4, 8);
    let (x, y) = (buf(&ctx, &rng.vec(9 * 8, 1.0)), ctx.storage("y", 9 * 2 * 4).unwrap());
    let Err(err) = ops::matmul::build_into(&ctx, &w, &x, None, &y, Output::GLU, &step(&ctx, 9, 0, 0), 9, 0) else {
        panic!("a fused SwiGLU over 9 rows was accepted")
    };
    assert!(err.to_string().contains("matrix-vector"), "{err}");
}

#[test]
fn embed_quantized_tables() {
    let ctx = ctx();
    let mut rng = Rng::new(2);
    for dtype in DType::ALL {
        let dims: &[usize] = if dtype.block_size() > 32 { &[256, 768] } else { &[32, 96, 576] };
        for &dim in dims {
            for &rows in AWKWARD {
                let vocab = 300;
                let (w, exact) = weight(&ctx, &mut rng, dtype, vocab, dim);
                let tokens: Vec<u32> = (0..rows).map(|_| rng.below(vocab as u64) as u32).collect();
                let x = ctx.storage("x", (rows * dim * 4) as u64).unwrap();
                run(&ctx, ops::embed::build(&ctx, &w, &buf_u32(&ctx, &tokens), &x, &step(&ctx, rows, 0, 0), rows).unwrap());
                assert_close(
                    &format!("embed {dtype:?} dim {dim} rows {rows}"),
                    &read(&ctx, &x, rows * dim),
                    &ops::embed::reference(&exact, dim, &tokens),
                    0.0,
                    0.0,
                );
            }
        }
    }
}

/// A table uploaded in row ranges (as a large vocabulary's under a binding limit): the
/// embedding dispatches together write every row once (zeros for ids past the table), and the
/// products of the parts, placed at their first rows, give the whole product.
#[test]
fn embed_and_products_over_row_split_tables() {
    let ctx = ctx();
    let mut rng = Rng::new(12);
    // Scaled as Gemma 3 scales its embeddings (sqrt(640)) in one case.
    for (dtype, dim, vocab, scale) in [(DType::Q8_0, 96, 1000, 1.0f32), (DType::Q6_K, 256, 301, 640f32.sqrt()), (DType::F16, 40, 77, 1.0)] {
        let raw = rng.vec(vocab * dim, 1.0);
        let t = HostTensor { name: format!("table {dtype:?}"), dtype, shape: vec![vocab, dim], data: quantize(dtype, &raw).into() };
        let exact = t.to_f32();
        let wtype = adore::tensor::pack_for_gpu(dtype, &t.data[..dim / dtype.block_size() * dtype.block_bytes()]).0;
        for (rows_per_part, layout) in [1usize, 7, 64, vocab - 1, vocab].into_iter().flat_map(|r| [(r, Layout::Blocks), (r, Layout::Rows)])
        {
            let row = adore::tensor::row_words(wtype, layout, dim) as u64 * 4;
            let split = RowSplit::upload_limited(&ctx, &t, row * rows_per_part as u64, layout).unwrap();
            assert_eq!(split.parts.len(), vocab.div_ceil(rows_per_part), "{dtype:?} parts of {rows_per_part} rows");
            let what = format!("{dtype:?} {vocab} x {dim} in parts of {rows_per_part} rows, {layout:?}");
            // Every part's first and last row, an id past the table, and random ids.
            let mut tokens: Vec<u32> = split.parts.iter().flat_map(|(f, p)| [*f as u32, (*f + p.rows - 1) as u32]).take(40).collect();
            tokens.push(vocab as u32 + 3);
            tokens.extend((0..9).map(|_| rng.below(vocab as u64) as u32));
            let n = tokens.len();
            let x = buf(&ctx, &vec![f32::NAN; n * dim]);
            ctx.run(&ops::embed::build_split(&ctx, &split, scale, &buf_u32(&ctx, &tokens), &x, &step(&ctx, n, 0, 0), n).unwrap()).unwrap();
            let mut want = ops::embed::reference(&exact, dim, &tokens[..n - 10]);
            want.extend(vec![0.0; dim]);
            want.extend(ops::embed::reference(&exact, dim, &tokens[n - 9..]));
            want.iter_mut().for_each(|v| *v *= scale);
            assert_close(&format!("embed, {what}"), &read(&ctx, &x, n * dim), &want, 0.0, 0.0);

            let rows = 3;
            let xin = rng.vec(rows * dim, 1.0);
            let xb = buf(&ctx, &xin);
            let y = buf(&ctx, &vec![f32::NAN; rows * vocab]);
            let st = step(&ctx, rows, 0, 0);
            for (first, part) in &split.parts {
                let out = Output { stride: vocab, offset: *first, add: false, glu: false, gelu: false };
                ctx.run(&ops::matmul::build_into(&ctx, part, &xb, None, &y, out, &st, rows, 0).unwrap()).unwrap();
            }
            let want = ops::matmul::reference(&exact, &xin, rows, dim, vocab);
            assert_close(&format!("product, {what}"), &read(&ctx, &y, rows * vocab), &want, 1e-4 * (dim as f32).sqrt(), 1e-4);
        }
    }
}

/// Gemma 3's q and k norms: every q and k head of the stacked rows normalised in place with its
/// weight, v untouched; and the post-norms' form of RMSNorm, added into y.
#[test]
fn head_norm_in_place_and_rmsnorm_added() {
    let ctx = ctx();
    let mut rng = Rng::new(13);
    for &(nh, nkv, hd) in &[(4usize, 1usize, 256usize), (9, 3, 64), (1, 1, 4), (3, 3, 100)] {
        for &rows in &[1usize, 3, 17] {
            let width = (nh + 2 * nkv) * hd;
            let qkv: Vec<f32> = (0..rows * width).map(|i| rng.f32() * (1.0 + (i / hd % 5) as f32)).collect();
            let g = rng.vec(2 * hd, 1.0);
            let b = buf(&ctx, &qkv);
            run(&ctx, ops::head_norm::build(&ctx, &b, &buf(&ctx, &g), &step(&ctx, rows, 0, 0), (nh, nkv, hd), 1e-6, rows).unwrap());
            let want = ops::head_norm::reference(&qkv, &g, (nh, nkv, hd), 1e-6);
            assert_close(&format!("head norm {nh}/{nkv} x {hd}, rows {rows}"), &read(&ctx, &b, rows * width), &want, 1e-5, 1e-5);
        }
    }
    for &dim in &[3usize, 640, 1000] {
        let rows = 5;
        let (x, g, held) = (rng.vec(rows * dim, 3.0), rng.vec(dim, 1.0), rng.vec(rows * dim, 1.0));
        let y = buf(&ctx, &held);
        run(
            &ctx,
            ops::rmsnorm::build_into(&ctx, &buf(&ctx, &x), &buf(&ctx, &g), &y, &step(&ctx, rows, 0, 0), dim, 1e-6, rows, false, true)
                .unwrap(),
        );
        let want: Vec<f32> = ops::rmsnorm::reference(&x, &g, dim, 1e-6).iter().zip(&held).map(|(a, b)| a + b).collect();
        assert_close(&format!("rmsnorm added, dim {dim}"), &read(&ctx, &y, rows * dim), &want, 1e-5, 1e-5);
    }
}

#[test]
fn rmsnorm_sizes_and_last_row() {
    let ctx = ctx();
    let mut rng = Rng::new(3);
    for &dim in AWKWARD {
        for &rows in &[1usize, 3, 17] {
            let x = rng.vec(rows * dim, 3.0);
            let g = rng.vec(dim, 1.0);
            let want = ops::rmsnorm::reference(&x, &g, dim, 1e-5);
            let y = ctx.storage("y", (rows * dim * 4) as u64).unwrap();
            run(
                &ctx,
                ops::rmsnorm::build(&ctx, &buf(&ctx, &x), &buf(&ctx, &g), &y, &step(&ctx, rows, 0, 0), dim, 1e-5, rows, false).unwrap(),
            );
            assert_close(&format!("rmsnorm dim {dim} rows {rows}"), &read(&ctx, &y, rows * dim), &want, 1e-5, 1e-5);
            let y1 = ctx.storage("y1", (dim * 4) as u64).unwrap();
            run(
                &ctx,
                ops::rmsnorm::build(&ctx, &buf(&ctx, &x), &buf(&ctx, &g), &y1, &step(&ctx, rows, 0, 0), dim, 1e-5, rows, true).unwrap(),
            );
            assert_close(&format!("rmsnorm last row, dim {dim} rows {rows}"), &read(&ctx, &y1, dim), &want[(rows - 1) * dim..], 1e-5, 1e-5);
        }
    }
}

#[test]
fn rope_on_stacked_qkv_with_the_kv_store() {
    let ctx = ctx();
    let mut rng = Rng::new(4);
    let cap = 300;
    for kv in [ops::KvType::F32, ops::KvType::F16] {
        // (interleaved, biases, RoPE scaling factors)
        for (interleaved, with_bias, scaled) in
            [(true, false, false), (false, false, false), (false, true, false), (true, false, true), (false, true, true)]
        {
            for &(nh, nkv, hd) in &[(1usize, 1usize, 2usize), (3, 1, 64), (9, 3, 64), (17, 17, 16), (4, 2, 128), (2, 1, 4)] {
                for &rows in &[1usize, 3, 17, 255] {
                    let (q_dim, kv_dim) = (nh * hd, nkv * hd);
                    let width = q_dim + 2 * kv_dim;
                    let raw = rng.vec(rows * width, 1.0);
                    // With biases (Qwen2), the kernel reads `raw` and adds them; the references see the sums.
                    let bias = if with_bias { rng.vec(width, 2.0) } else { vec![0.0; width] };
                    let qkv: Vec<f32> = raw.iter().enumerate().map(|(i, v)| v + bias[i % width]).collect();
                    let pos: Vec<u32> = (0..rows).map(|_| rng.below(8192) as u32).collect();
                    // Distinct slots; some rows (as a recompute step's) go to no slot.
                    let order = distinct_slots(&mut rng, cap, rows);
                    let slots: Vec<u32> = (0..rows).map(|r| if r % 5 == 4 { INVALID_SLOT } else { order[r] }).collect();
                    let part = |from: usize, len: usize| -> Vec<f32> {
                        (0..rows).flat_map(|r| qkv[r * width + from..r * width + from + len].to_vec()).collect()
                    };
                    // Divisors as Llama 3's span them (1 to 32), and below 1.
                    let factors: Vec<f32> =
                        if scaled { (0..hd / 2).map(|_| 0.5 + rng.below(64) as f32 / 2.0).collect() } else { Vec::new() };
                    let want_q = ops::rope::reference(&part(0, q_dim), &pos, nh, hd, 100000.0, &factors, interleaved);
                    let want_k = ops::rope::reference(&part(q_dim, kv_dim), &pos, nkv, hd, 100000.0, &factors, interleaved);
                    // The caches start as arbitrary words; slots no row writes keep them.
                    let words = kv.words(kv_dim);
                    let init: Vec<u32> = (0..cap * words).map(|_| rng.below(1 << 32) as u32).collect();
                    let (qb, kb) =
                        (ctx.storage("q", (rows * q_dim * 4) as u64).unwrap(), ctx.storage("k", (rows * kv_dim * 4) as u64).unwrap());
                    let (kc, vc, sp) = (buf_u32(&ctx, &init), buf_u32(&ctx, &init), buf_u32(&ctx, &vec![INVALID_SLOT; cap]));
                    let (qkvb, sb, pb) = (buf(&ctx, if with_bias { &raw } else { &qkv }), buf_u32(&ctx, &slots), buf_u32(&ctx, &pos));
                    let bb = buf(&ctx, &bias);
                    let b = ops::rope::Qkv {
                        qkv: &qkvb,
                        q: &qb,
                        k: &kb,
                        k_cache: &kc,
                        v_cache: &vc,
                        kv,
                        slots: &sb,
                        slot_pos: &sp,
                        positions: &pb,
                        bias: with_bias.then_some(&bb),
                    };
                    let r = ops::rope::Rope { n_heads: nh, n_kv_heads: nkv, head_dim: hd, theta: 100000.0, factors: &factors, interleaved };
                    let what = format!(
                        "rope {kv:?} interleaved={interleaved} bias={with_bias} scaled={scaled} heads {nh}/{nkv} hd {hd} rows {rows}"
                    );
                    let built = ops::rope::build(&ctx, &b, &step(&ctx, rows, 0, 0), r, cap, rows, true);
                    if kv == ops::KvType::F16 && hd % 4 != 0 {
                        let e = built.err().expect("f16 caches need head_dim a multiple of 4");
                        assert!(e.to_string().contains("multiple of 4"), "{what}: {e}");
                        continue;
                    }
                    run(&ctx, built.unwrap());
                    // f32 angles at positions up to 8192 carry ~1e-3 rad of rounding, on values up
                    // to 3 with biases; f16 adds half a step of 2^-10 relative.
                    let atol = if with_bias { 5e-3 } else { 3e-3 };
                    assert_close(&format!("{what}: q"), &read(&ctx, &qb, rows * q_dim), &want_q, atol, 1e-3);
                    assert_close(&format!("{what}: k"), &read(&ctx, &kb, rows * kv_dim), &want_k, atol, 1e-3);
                    let (got_k, got_v) = (
                        pollster::block_on(ctx.read_u32(&kc, init.len())).unwrap(),
                        pollster::block_on(ctx.read_u32(&vc, init.len())).unwrap(),
                    );
                    let want_v = part(q_dim + kv_dim, kv_dim);
                    let (tol_k, tol_v, atol_v) = if kv == ops::KvType::F16 { (1.5e-3, 1e-3, 6e-8) } else { (1e-3, 0.0, 0.0) };
                    for slot in 0..cap {
                        let at = |c: &[u32]| c[slot * words..(slot + 1) * words].to_vec();
                        match slots.iter().position(|&s| s as usize == slot) {
                            None => {
                                assert_eq!(at(&got_k), at(&init), "{what}: k cache slot {slot} not written");
                                assert_eq!(at(&got_v), at(&init), "{what}: v cache slot {slot} not written");
                            }
                            Some(r) => {
                                let row = r * kv_dim..(r + 1) * kv_dim;
                                assert_close(
                                    &format!("{what}: k cache slot {slot}"),
                                    &kv.decode(&at(&got_k)),
                                    &want_k[row.clone()],
                                    atol,
                                    tol_k,
                                );
                                assert_close(&format!("{what}: v cache slot {slot}"), &kv.decode(&at(&got_v)), &want_v[row], atol_v, tol_v);
                            }
                        }
                    }
                    let mut table = vec![INVALID_SLOT; cap];
                    for (r, &s) in slots.iter().enumerate().filter(|(_, s)| (**s as usize) < cap) {
                        table[s as usize] = pos[r];
                    }
                    assert_eq!(pollster::block_on(ctx.read_u32(&sp, cap)).unwrap(), table, "{what}: slot table");
                }
            }
        }
    }
}

#[test]
fn swiglu_and_geglu_on_stacked_gate_and_up() {
    let ctx = ctx();
    let mut rng = Rng::new(5);
    for &dim in AWKWARD {
        for &rows in &[1usize, 3, 17] {
            let (g, u) = (rng.vec(rows * dim, 6.0), rng.vec(rows * dim, 2.0));
            let stacked: Vec<f32> = (0..rows).flat_map(|r| [&g[r * dim..(r + 1) * dim], &u[r * dim..(r + 1) * dim]].concat()).collect();
            let out = ctx.storage("out", (rows * dim * 4) as u64).unwrap();
            run(&ctx, ops::swiglu::build(&ctx, &buf(&ctx, &stacked), &out, &step(&ctx, rows, 0, 0), dim, rows).unwrap());
            assert_close(&format!("swiglu dim {dim} rows {rows}"), &read(&ctx, &out, g.len()), &ops::swiglu::reference(&g, &u), 1e-5, 1e-5);
            // GeGLU (Gemma 3's feed-forward).
            run(&ctx, ops::swiglu::build_act(&ctx, &buf(&ctx, &stacked), &out, &step(&ctx, rows, 0, 0), dim, rows, true).unwrap());
            let want = ops::swiglu::reference_gelu(&g, &u);
            assert_close(&format!("geglu dim {dim} rows {rows}"), &read(&ctx, &out, g.len()), &want, 1e-5, 1e-5);
        }
    }
}

/// `rows` distinct slots of `cap`, shuffled.
fn distinct_slots(rng: &mut Rng, cap: usize, rows: usize) -> Vec<u32> {
    let mut slots: Vec<u32> = (0..cap as u32).collect();
    for i in (1..slots.len()).rev() {
        slots.swap(i, rng.below(i as u64 + 1) as usize);
    }
    slots.truncate(rows);
    slots
}

/// Rows scattered into f32 caches (exactly) and f16 caches (each element the f32 rounded to f16,
/// within one f16 step, as WGSL leaves the rounding direction to the device); the other slots'
/// words keep what they held, and the slot table gets the rows' positions.
#[test]
fn kv_write_scatters_rows_and_slot_table() {
    let ctx = ctx();
    let mut rng = Rng::new(6);
    for kv in [ops::KvType::F32, ops::KvType::F16] {
        for &kv_dim in &[1usize, 2, 18, 192, 257, 258] {
            if kv == ops::KvType::F16 && kv_dim % 2 == 1 {
                continue;
            }
            for &rows in &[1usize, 3, 17] {
                let cap = 300;
                let slots = distinct_slots(&mut rng, cap, rows);
                let pos: Vec<u32> = (0..rows as u32).map(|r| 1000 + r).collect();
                let (k, v) = (rng.vec(rows * kv_dim, 3.0), rng.vec(rows * kv_dim, 0.01));
                let init: Vec<u32> = (0..kv.words(cap * kv_dim)).map(|_| rng.below(1 << 32) as u32).collect();
                let (kc, vc) = (buf_u32(&ctx, &init), buf_u32(&ctx, &init));
                let sp = buf_u32(&ctx, &vec![INVALID_SLOT; cap]);
                let (kb, vb, sb, pb) = (buf(&ctx, &k), buf(&ctx, &v), buf_u32(&ctx, &slots), buf_u32(&ctx, &pos));
                let b =
                    ops::kv_write::KvWrite { k: &kb, v: &vb, k_cache: &kc, v_cache: Some(&vc), slots: &sb, slot_pos: &sp, positions: &pb };
                run(&ctx, ops::kv_write::build(&ctx, &b, &step(&ctx, rows, 0, 0), kv_dim, cap, rows, true, kv).unwrap());
                let what = format!("kv_write {kv:?} kv_dim {kv_dim} rows {rows}");
                for (name, cache, rows_in) in [("k", &kc, &k), ("v", &vc, &v)] {
                    let got = pollster::block_on(ctx.read_u32(cache, init.len())).unwrap();
                    let words = kv.words(kv_dim);
                    for slot in 0..cap {
                        let got_row = &got[slot * words..(slot + 1) * words];
                        match slots.iter().position(|&s| s as usize == slot) {
                            None => assert_eq!(got_row, &init[slot * words..(slot + 1) * words], "{what}: {name} slot {slot} not written"),
                            Some(r) => {
                                let want: Vec<f32> = rows_in[r * kv_dim..(r + 1) * kv_dim].iter().map(|&x| kv.round(x)).collect();
                                // One f16 step: 2^-10 of the value's binade (2^-24 at the smallest).
                                let step = |w: f32| match kv {
                                    ops::KvType::F32 => 0.0,
                                    ops::KvType::F16 => (w.abs().max(6.1e-5) * 2f32.powi(-10)).max(2f32.powi(-24)),
                                };
                                for (i, (g, w)) in kv.decode(got_row).iter().zip(&want).enumerate() {
                                    assert!((g - w).abs() <= step(*w), "{what}: {name} slot {slot} element {i}: {g} vs {w}");
                                }
                            }
                        }
                    }
                }
                let table = pollster::block_on(ctx.read_u32(&sp, cap)).unwrap();
                let mut want = vec![INVALID_SLOT; cap];
                for (r, s) in slots.iter().enumerate() {
                    want[*s as usize] = pos[r];
                }
                assert_eq!(table, want, "{what}: slot table");
            }
        }
    }
    let b = ops::kv_write::KvWrite {
        k: &buf(&ctx, &[0.0; 3]),
        v: &buf(&ctx, &[0.0; 3]),
        k_cache: &buf(&ctx, &[0.0; 8]),
        v_cache: Some(&buf(&ctx, &[0.0; 8])),
        slots: &buf_u32(&ctx, &[0]),
        slot_pos: &buf_u32(&ctx, &[0; 4]),
        positions: &buf_u32(&ctx, &[0]),
    };
    let e = ops::kv_write::build(&ctx, &b, &step(&ctx, 1, 0, 0), 3, 4, 1, true, ops::KvType::F16)
        .err()
        .expect("an odd kv_dim in an f16 cache is refused");
    assert!(e.to_string().contains("even kv_dim"), "{e}");
}

/// A decode-attention case over a capacity of `n_slots` + 5: the slots' positions (scattered,
/// some free, some later than a row's position; the 5 above `n_slots` valid-looking, never to be
/// read), the rows' positions, q, and K and V for the whole capacity.
struct SlotCase {
    slot_pos: Vec<u32>,
    positions: Vec<u32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn slot_case(rng: &mut Rng, heads: Heads, n_slots: usize, rows: usize) -> SlotCase {
    let kvd = heads.n_kv_heads * heads.head_dim;
    let cap = n_slots + 5;
    let mut slot_pos: Vec<u32> = (0..n_slots).map(|_| if rng.below(5) == 0 { INVALID_SLOT } else { rng.below(12000) as u32 }).collect();
    let positions: Vec<u32> = (0..rows).map(|_| 2000 + rng.below(9000) as u32).collect();
    let q = rng.vec(rows * heads.n_heads * heads.head_dim, 2.0);
    let (k, v) = (rng.vec(cap * kvd, 2.0), rng.vec(cap * kvd, 1.0));
    slot_pos.extend((0..5).map(|_| rng.below(100) as u32));
    SlotCase { slot_pos, positions, q, k, v }
}

/// Attention over f16 caches (both shapes) against the reference fed the rounded K and V, and
/// the probabilities-only form (no V: the mass is written, out keeps what it held), with free
/// slots, future positions and unused capacity above the slots in use.
#[test]
fn attention_over_f16_caches_and_probabilities_only() {
    let ctx = ctx();
    let mut rng = Rng::new(71);
    let cases = [(9usize, 3usize, 64usize), (1, 1, 8), (8, 2, 128), (12, 2, 12), (4, 4, 16), (32, 4, 4)];
    for (ci, &(n_heads, n_kv, hd)) in cases.iter().enumerate() {
        for &n_slots in &[1usize, 3, 63, 65, 1000, 8192] {
            if n_slots == 8192 && ci > 1 {
                continue;
            }
            let rows = if ci % 2 == 0 { 1 } else { 3 };
            let window = if rows == 3 { 3000 } else { 0 };
            let heads = Heads { n_heads, n_kv_heads: n_kv, head_dim: hd, window };
            let kvd = n_kv * hd;
            let cap = n_slots + 5;
            let SlotCase { slot_pos, positions, q, k, v } = slot_case(&mut rng, heads, n_slots, rows);
            let kv = ops::KvType::F16;
            let (kr, vr): (Vec<f32>, Vec<f32>) = (k.iter().map(|&x| kv.round(x)).collect(), v.iter().map(|&x| kv.round(x)).collect());
            let want = ops::attention::reference(&q, &kr[..n_slots * kvd], &vr[..n_slots * kvd], &slot_pos[..n_slots], &positions, heads);
            let (qb, kb, vb, sb, pb) = (
                buf(&ctx, &q),
                buf_u32(&ctx, &kv.encode(&k)),
                buf_u32(&ctx, &kv.encode(&v)),
                buf_u32(&ctx, &slot_pos),
                buf_u32(&ctx, &positions),
            );
            let out = ctx.storage("out", (rows * n_heads * hd * 4) as u64).unwrap();
            let mass = buf(&ctx, &vec![0.5; rows * n_heads * cap]);
            let b = ops::attention::Buffers {
                q: &qb,
                k_cache: &kb,
                v_cache: Some(&vb),
                kv,
                slot_pos: &sb,
                positions: &pb,
                out: &out,
                mass: &mass,
                list: None,
            };
            let what = format!("f16 attention heads {n_heads}/{n_kv} hd {hd} slots {n_slots} rows {rows}");
            let stp = step(&ctx, rows, n_slots, 0);
            run(&ctx, ops::attention::build(&ctx, &b, &stp, heads, cap, rows, ops::attention::Mass::None).unwrap());
            assert_close(&format!("{what}, one pass"), &read(&ctx, &out, want.len()), &want, 1e-4, 1e-4);
            if rows == 1 {
                let part = ctx.storage("part", (ops::attention::split_scratch_len(heads, cap, rows) * 4) as u64).unwrap();
                let split = ctx.storage("out", (rows * n_heads * hd * 4) as u64).unwrap();
                let bs = ops::attention::Buffers { out: &split, ..b };
                ctx.run(&ops::attention::build_split(&ctx, &bs, &part, &stp, heads, cap, rows).unwrap()).unwrap();
                assert_close(&format!("{what}, split"), &read(&ctx, &split, want.len()), &want, 1e-4, 1e-4);
            }
            // Probabilities only, for both cache types: out is not written.
            for kv in [ops::KvType::F32, ops::KvType::F16] {
                let (kb, src) = match kv {
                    ops::KvType::F32 => (buf(&ctx, &k), &k),
                    ops::KvType::F16 => (buf_u32(&ctx, &kv.encode(&k)), &kr),
                };
                let (_, want_mass) = ops::attention::reference_with_mass(
                    &q,
                    &src[..n_slots * kvd],
                    &vr[..n_slots * kvd],
                    &slot_pos[..n_slots],
                    &positions,
                    heads,
                );
                let untouched = buf(&ctx, &vec![7.0; rows * n_heads * hd]);
                let mass = buf(&ctx, &vec![0.5; rows * n_heads * cap]);
                let bp = ops::attention::Buffers { k_cache: &kb, v_cache: None, kv, out: &untouched, mass: &mass, ..b };
                run(&ctx, ops::attention::build(&ctx, &bp, &stp, heads, cap, rows, ops::attention::Mass::Write).unwrap());
                let wide: Vec<f32> = (0..rows * n_heads * cap)
                    .map(|i| if i % cap < n_slots { want_mass[i / cap * n_slots + i % cap] } else { 0.5 })
                    .collect();
                assert_close(&format!("{what}, {kv:?} probabilities only"), &read(&ctx, &mass, wide.len()), &wide, 1e-5, 1e-4);
                assert_eq!(
                    read(&ctx, &untouched, rows * n_heads * hd),
                    vec![7.0; rows * n_heads * hd],
                    "{what}: out written without values"
                );
                let none = ops::attention::build(&ctx, &bp, &stp, heads, cap, rows, ops::attention::Mass::None);
                assert!(none.is_err(), "no values and no probabilities must be refused");
            }
        }
    }
}

/// Short keys (slots, n_kv, rank) laid out as sessions store them: (n_kv, slots, rank).
fn heads_first(keys: &[f32], n_kv: usize, rank: usize) -> Vec<f32> {
    let slots = keys.len() / (n_kv * rank);
    (0..n_kv).flat_map(|g| (0..slots).flat_map(move |j| keys[(j * n_kv + g) * rank..][..rank].iter().copied())).collect()
}

/// The key index's scores (short-key logits in ranges with their own softmax, then merged and
/// summed over heads) against the f64 reference: the three short-key types, several head layouts
/// (groups of 1 to 8 query heads a KV head: a slot's logits in one or two vec4s), range counts from one to more ranges than slots, rows whose last one scores, free slots,
/// future positions, windows, and capacity above the slots in use (scored 0).
#[test]
fn key_scores_over_slot_ranges_match_the_reference() {
    let mut rng = Rng::new(73);
    let cases = [(9usize, 3usize, 16usize), (1, 1, 4), (8, 2, 32), (12, 4, 64), (4, 4, 8), (10, 2, 8), (8, 1, 12)];
    // Both kernel shapes (the scores' workgroups are 8 lanes on CPU devices, 64 on GPUs).
    for (ci, &(n_heads, n_kv, rank)) in cases.iter().enumerate() {
        let ctx = if ci % 2 == 0 { ctx() } else { ctx_gpu_shape() };
        for &n_slots in &[1usize, 3, 63, 64, 65, 1000, 8192] {
            if n_slots == 8192 && ci > 1 {
                continue;
            }
            for chunks in [1usize, 2, 3, 4, 33, n_slots.div_ceil(256)] {
                let rows = if (ci + chunks) % 2 == 0 { 1 } else { 3 };
                let window = if chunks == 3 { 3000 } else { 0 };
                let heads = Heads { n_heads, n_kv_heads: n_kv, head_dim: rank, window };
                let cap = n_slots + 5;
                let SlotCase { slot_pos, positions, q, k, .. } = slot_case(&mut rng, heads, n_slots, rows);
                let shape = ops::key_score::Shape { n_heads, n_kv_heads: n_kv, rank, window, capacity: cap, chunks };
                let kv = [ShortKeyType::F32, ShortKeyType::F16, ShortKeyType::I8][(ci + chunks) % 3];
                let kr = kv.round(&k, rank);
                let last = &q[(rows - 1) * n_heads * rank..];
                let mut want =
                    ops::key_score::reference(last, &kr[..n_slots * n_kv * rank], &slot_pos[..n_slots], positions[rows - 1], shape, 0.5);
                // Slots at and above n_slots are free: their scores are left as they were.
                want.resize(cap, 9.0);
                // The keys by KV head and padded to 16 bytes, as sessions store them.
                let words = kv.encode(&heads_first(&k, n_kv, rank), rank);
                let (qb, kb, sb, pb) = (buf(&ctx, &q), buf_u32(&ctx, &words), buf_u32(&ctx, &slot_pos), buf_u32(&ctx, &positions));
                let logits = buf(&ctx, &vec![0.5; ops::key_score::logits_len(n_heads, n_kv, cap)]);
                let stats = buf(&ctx, &vec![3.0; ops::key_score::stats_len(&ctx, n_heads, chunks, rows)]);
                let score = buf(&ctx, &vec![9.0; cap]);
                let b = ops::key_score::Buffers {
                    q: &qb,
                    keys: &kb,
                    kv,
                    slot_pos: &sb,
                    positions: &pb,
                    logits: &logits,
                    stats: &stats,
                    score: &score,
                };
                let stp = step(&ctx, rows, n_slots, 0);
                ctx.run(&ops::key_score::build(&ctx, &b, &stp, shape, rows, 0.5).unwrap()).unwrap();
                let what = format!("key scores heads {n_heads}/{n_kv} rank {rank} slots {n_slots} ranges {chunks} rows {rows} {kv:?}");
                assert_close(&what, &read(&ctx, &score, cap), &want, 1e-6, 1e-4);
            }
        }
    }
}

/// The key index's short queries and keys of a step's rows: queries in f32, keys stored in
/// their slots (f32 exactly as computed, f16 within one step of the f32 value); a row whose slot
/// is beyond the capacity stores nothing, and the other slots keep what they held. Keys only:
/// the short queries untouched.
#[test]
fn short_rows_match_the_reference() {
    let ctx = ctx();
    let mut rng = Rng::new(74);
    let cases = [(9usize, 3usize, 64usize, 16usize), (1, 1, 8, 4), (8, 1, 32, 64), (12, 4, 48, 8), (4, 4, 20, 4)];
    for &(n_heads, n_kv, hd, rank) in &cases {
        for &rows in &[1usize, 3, 65] {
            for (kv, keys_only) in [
                (ShortKeyType::F16, false),
                (ShortKeyType::F32, false),
                (ShortKeyType::F16, true),
                (ShortKeyType::I8, false),
                (ShortKeyType::I8, true),
            ] {
                if kv == ShortKeyType::I8 && rank % 4 != 0 {
                    continue;
                }
                let cap = rows + 7;
                let q = rng.vec(rows * n_heads * hd, 2.0);
                let k = rng.vec(rows * n_kv * hd, 2.0);
                let maps = rng.vec(2 * n_kv * hd * rank, 0.5);
                // Distinct slots; the second row's beyond the capacity (stores nothing).
                let mut slots = distinct_slots(&mut rng, cap, rows);
                if rows > 1 {
                    slots[1] = cap as u32 + 3;
                }
                let old_keys = kv.encode(&rng.vec(cap * n_kv * rank, 3.0), rank);
                let old_qs = rng.vec(rows * n_heads * rank, 1.0);
                let (qb, kb, mb, sb) = (buf(&ctx, &q), buf(&ctx, &k), buf(&ctx, &maps), buf_u32(&ctx, &slots));
                let (qs, keys) = (buf(&ctx, &old_qs), buf_u32(&ctx, &old_keys));
                let b = ops::key_score::ShortBuffers { q: &qb, k: &kb, maps: &mb, qs: &qs, keys: &keys, kv, slots: &sb };
                let shape = ops::key_score::Shape { n_heads, n_kv_heads: n_kv, rank, window: 0, capacity: cap, chunks: 1 };
                run(&ctx, ops::key_score::build_short(&ctx, &b, &step(&ctx, rows, 0, 0), shape, hd, rows, keys_only).unwrap());
                let what = format!("short rows heads {n_heads}/{n_kv} hd {hd} rank {rank} rows {rows} {kv:?} keys only {keys_only}");
                let mut want_qs = Vec::new();
                let mut want_keys = kv.decode(&old_keys, cap * n_kv, rank);
                for r in 0..rows {
                    let (wq, wk) = ops::key_score::short_reference(
                        &maps,
                        &q[r * n_heads * hd..(r + 1) * n_heads * hd],
                        &k[r * n_kv * hd..(r + 1) * n_kv * hd],
                        n_heads,
                        n_kv,
                        hd,
                        rank,
                    );
                    want_qs.extend(wq);
                    let slot = slots[r] as usize;
                    // Stored by KV head: each head's keys, slot after slot.
                    for g in (0..n_kv).filter(|_| slot < cap) {
                        want_keys[(g * cap + slot) * rank..][..rank].copy_from_slice(&wk[g * rank..][..rank]);
                    }
                }
                if keys_only {
                    want_qs = old_qs.clone();
                }
                assert_close(&format!("{what}: queries"), &read(&ctx, &qs, want_qs.len()), &want_qs, 1e-4, 1e-4);
                let got_words = pollster::block_on(ctx.read_u32(&keys, old_keys.len())).unwrap();
                let got_keys = kv.decode(&got_words, cap * n_kv, rank);
                if kv == ShortKeyType::I8 {
                    // Each key within half a step (its largest magnitude / 127) of the f32 value,
                    // and its largest value stored as its scale; the untouched slots unchanged.
                    for (key, (got, want)) in got_keys.chunks(rank).zip(want_keys.chunks(rank)).enumerate() {
                        let big = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                        let scale = f32::from_bits(got_words[cap * n_kv * rank / 4 + key]);
                        assert!((scale - big).abs() <= 1e-4 * big, "{what}: key {key} scale {scale}, largest value {big}");
                        for (c, (g, w)) in got.iter().zip(want).enumerate() {
                            assert!(
                                (g - w).abs() <= 0.5 * big / 127.0 * 1.001 + 1e-4 * big,
                                "{what}: key {key} value {c}: {g} against {w}"
                            );
                        }
                    }
                    let moved: Vec<u32> = slots.iter().filter(|&&s| (s as usize) < cap).copied().collect();
                    for (i, (g, o)) in got_words.iter().zip(&old_keys).enumerate() {
                        let key = if i < cap * n_kv * rank / 4 { i / (rank / 4) } else { i - cap * n_kv * rank / 4 };
                        if key < cap * n_kv && !moved.contains(&((key % cap) as u32)) {
                            assert_eq!(g, o, "{what}: word {i} of an untouched slot changed");
                        }
                    }
                } else {
                    // f16: within one f16 step (2^-10 relative) of the f32 value.
                    let tol = if kv == ShortKeyType::F16 { 1.0 / 1024.0 } else { 1e-4 };
                    assert_close(&format!("{what}: keys"), &got_keys, &want_keys, 1e-4, tol);
                }
            }
        }
    }
}

/// In both kernel shapes (workgroups of 8 lanes on CPU devices, 64 on GPUs).
#[test]
fn attention_over_slots_with_gaps_and_causal_positions() {
    for ctx in [ctx(), ctx_gpu_shape()] {
        attention_over_slots(&ctx);
    }
}

fn attention_over_slots(ctx: &Arc<Context>) {
    let ctx = ctx.clone();
    let mut rng = Rng::new(7);
    let cases = [(1usize, 1usize, 8usize), (9, 3, 64), (4, 4, 20), (8, 2, 128), (2, 1, 256), (12, 2, 12)];
    for &(n_heads, n_kv, hd) in &cases {
        for &n_slots in &[1usize, 3, 17, 255, 257, 1000] {
            for &rows in &[1usize, 3] {
                // Three rows: a local layer's sliding window of 700 positions (Gemma 3).
                let window = if rows == 3 { 700 } else { 0 };
                let heads = Heads { n_heads, n_kv_heads: n_kv, head_dim: hd, window };
                let kvd = n_kv * hd;
                // Slots hold scattered positions; some are free.
                let slot_pos: Vec<u32> =
                    (0..n_slots).map(|_| if rng.below(5) == 0 { INVALID_SLOT } else { rng.below(2000) as u32 }).collect();
                let positions: Vec<u32> = (0..rows).map(|_| 500 + rng.below(2000) as u32).collect();
                let q = rng.vec(rows * n_heads * hd, 2.0);
                let (k, v) = (rng.vec(n_slots * kvd, 2.0), rng.vec(n_slots * kvd, 1.0));
                let (want, want_mass) = ops::attention::reference_with_mass(&q, &k, &v, &slot_pos, &positions, heads);
                let out = ctx.storage("out", (rows * n_heads * hd * 4) as u64).unwrap();
                let (qb, kb, vb, sb, pb) =
                    (buf(&ctx, &q), buf(&ctx, &k), buf(&ctx, &v), buf_u32(&ctx, &slot_pos), buf_u32(&ctx, &positions));
                let mass = buf(&ctx, &vec![0.5; want_mass.len()]);
                let b = ops::attention::Buffers {
                    q: &qb,
                    k_cache: &kb,
                    v_cache: Some(&vb),
                    kv: ops::KvType::F32,
                    slot_pos: &sb,
                    positions: &pb,
                    out: &out,
                    mass: &mass,
                    list: None,
                };
                let what = format!("attention {:?} shape heads {n_heads}/{n_kv} hd {hd} slots {n_slots} rows {rows}", ctx.kernel_shape);
                // A cache with slots beyond step.n_slots (valid-looking ones too): they are not
                // attended to, and their probabilities are left as they were.
                if rows == 3 {
                    let cap = n_slots + 7;
                    let mut wide_pos = slot_pos.clone();
                    wide_pos.extend((0..7).map(|_| rng.below(400) as u32));
                    let (wk, wv) = ([k.clone(), rng.vec(7 * kvd, 2.0)].concat(), [v.clone(), rng.vec(7 * kvd, 1.0)].concat());
                    let (wkb, wvb, wsb) = (buf(&ctx, &wk), buf(&ctx, &wv), buf_u32(&ctx, &wide_pos));
                    let wide_mass = buf(&ctx, &vec![0.5; rows * n_heads * cap]);
                    let wide = ops::attention::Buffers { k_cache: &wkb, v_cache: Some(&wvb), slot_pos: &wsb, mass: &wide_mass, ..b };
                    let mode = ops::attention::Mass::Add;
                    run(&ctx, ops::attention::build(&ctx, &wide, &step(&ctx, rows, n_slots, 0), heads, cap, rows, mode).unwrap());
                    assert_close(&format!("{what}, capacity {cap}"), &read(&ctx, &out, want.len()), &want, 1e-4, 1e-4);
                    let plus: Vec<f32> = (0..rows * n_heads * cap)
                        .map(|i| if i % cap < n_slots { want_mass[i / cap * n_slots + i % cap] + 0.5 } else { 0.5 })
                        .collect();
                    assert_close(&format!("{what}, capacity {cap}, mass"), &read(&ctx, &wide_mass, plus.len()), &plus, 1e-5, 1e-4);
                }
                // Odd slot counts also record the probabilities, added to what the buffer held.
                let mode = if n_slots % 2 == 0 { ops::attention::Mass::None } else { ops::attention::Mass::Add };
                run(&ctx, ops::attention::build(&ctx, &b, &step(&ctx, rows, n_slots, 0), heads, n_slots, rows, mode).unwrap());
                assert_close(&what, &read(&ctx, &out, want.len()), &want, 1e-4, 1e-4);
                if mode == ops::attention::Mass::Add {
                    let plus: Vec<f32> = want_mass.iter().map(|m| m + 0.5).collect();
                    assert_close(&format!("{what}, mass"), &read(&ctx, &mass, plus.len()), &plus, 1e-5, 1e-4);
                }
                // Through the compact list of the valid slots (made by the selection with a
                // budget that keeps them all): the same.
                let list = ctx.storage("list", (ops::cache_update::list_len(n_slots, 1) * 4) as u64).unwrap();
                let stp = step(&ctx, rows, n_slots, 0);
                let keep_all = ops::cache_update::Params {
                    capacity: n_slots as u32,
                    budget: n_slots as u32,
                    sinks: 0,
                    recent: 0,
                    in_flight: 0,
                    hint: 0,
                    pad: [0; 2],
                };
                let score = buf(&ctx, &vec![0.0; ops::cache_update::table_len(n_slots)]);
                let sb = buf_u32(&ctx, &[slot_pos.clone(), vec![INVALID_SLOT; 3]].concat());
                run(&ctx, ops::cache_update::build_chosen(&ctx, None, &sb, &score, &list, &stp, keep_all).unwrap());
                let got_list = pollster::block_on(ctx.read_u32(&list, n_slots + 1)).unwrap();
                let want_list = ops::attention::reference_list(&slot_pos, n_slots);
                assert_eq!(got_list[..want_list.len()], want_list[..], "listed slots {n_slots}");
                let listed = ctx.storage("out", (rows * n_heads * hd * 4) as u64).unwrap();
                let b = ops::attention::Buffers { out: &listed, list: Some(&list), ..b };
                run(&ctx, ops::attention::build(&ctx, &b, &stp, heads, n_slots, rows, ops::attention::Mass::None).unwrap());
                assert_close(&format!("{what}, listed"), &read(&ctx, &listed, want.len()), &want, 1e-4, 1e-4);
            }
        }
    }
}

/// Both attention shapes, the one-pass kernel and the split one (flash-decoding, with its merge
/// pass), against the reference at slot counts around the split's chunk, with free slots, slots
/// of future positions, free capacity above the slots in use, and through the compact list.
#[test]
fn split_and_one_pass_attention_at_chunk_edges() {
    let ctx = ctx();
    let mut rng = Rng::new(12);
    let cases = [(9usize, 3usize, 64usize), (1, 1, 8), (8, 2, 128), (12, 2, 12), (2, 1, 256), (32, 4, 4)];
    for (ci, &(n_heads, n_kv, hd)) in cases.iter().enumerate() {
        for &n_slots in &[1usize, 3, 63, 64, 65, 1000, 8192] {
            if n_slots == 8192 && ci > 1 {
                continue;
            }
            for rows in [1usize, 3] {
                // Three rows: a sliding window of 3000 positions.
                let window = if rows == 3 { 3000 } else { 0 };
                let heads = Heads { n_heads, n_kv_heads: n_kv, head_dim: hd, window };
                let kvd = n_kv * hd;
                let cap = n_slots + 5;
                let SlotCase { slot_pos, positions, q, k, v } = slot_case(&mut rng, heads, n_slots, rows);
                let want = ops::attention::reference(&q, &k[..n_slots * kvd], &v[..n_slots * kvd], &slot_pos[..n_slots], &positions, heads);
                let (qb, kb, vb, sb, pb) =
                    (buf(&ctx, &q), buf(&ctx, &k), buf(&ctx, &v), buf_u32(&ctx, &slot_pos), buf_u32(&ctx, &positions));
                let out = ctx.storage("out", (rows * n_heads * hd * 4) as u64).unwrap();
                let unused = ctx.storage("unused", 4).unwrap();
                let b = ops::attention::Buffers {
                    q: &qb,
                    k_cache: &kb,
                    v_cache: Some(&vb),
                    kv: ops::KvType::F32,
                    slot_pos: &sb,
                    positions: &pb,
                    out: &out,
                    mass: &unused,
                    list: None,
                };
                let stp = step(&ctx, rows, n_slots, 0);
                let part = ctx.storage("part", (ops::attention::split_scratch_len(heads, cap, rows) * 4) as u64).unwrap();
                let what = format!("attention {:?} shape heads {n_heads}/{n_kv} hd {hd} slots {n_slots} rows {rows}", ctx.kernel_shape);
                run(&ctx, ops::attention::build(&ctx, &b, &stp, heads, cap, rows, ops::attention::Mass::None).unwrap());
                assert_close(&format!("{what}, one pass"), &read(&ctx, &out, want.len()), &want, 1e-4, 1e-4);
                let split = ctx.storage("out", (rows * n_heads * hd * 4) as u64).unwrap();
                let bs = ops::attention::Buffers { out: &split, ..b };
                ctx.run(&ops::attention::build_split(&ctx, &bs, &part, &stp, heads, cap, rows).unwrap()).unwrap();
                assert_close(&format!("{what}, split"), &read(&ctx, &split, want.len()), &want, 1e-4, 1e-4);
                // Through the compact list of the valid slots below n_slots.
                let list = buf_u32(&ctx, &[ops::attention::reference_list(&slot_pos, n_slots), vec![0; cap]].concat());
                let listed = ctx.storage("out", (rows * n_heads * hd * 4) as u64).unwrap();
                let bl = ops::attention::Buffers { out: &listed, list: Some(&list), ..b };
                ctx.run(&ops::attention::build_split(&ctx, &bl, &part, &stp, heads, cap, rows).unwrap()).unwrap();
                assert_close(&format!("{what}, split, listed"), &read(&ctx, &listed, want.len()), &want, 1e-4, 1e-4);
            }
        }
    }
}

#[test]
fn sampling_greedy_topk_topp_match_reference() {
    let ctx = ctx();
    let mut rng = Rng::new(8);
    let mut drawn = std::collections::HashSet::new();
    for &vocab in &[1usize, 3, 17, 255, 257, 1000, 49152] {
        let mut logits = rng.vec(vocab, 4.0);
        if vocab > 10 {
            // Ties, including for the maximum: the lower id wins.
            logits[vocab / 2] = 9.0;
            logits[vocab / 3] = 9.0;
            logits[1] = logits[2];
        }
        let lb = buf(&ctx, &logits);
        for (i, s) in [
            Sampling { temperature: 0.0, ..Default::default() },
            Sampling { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 1 },
            Sampling { temperature: 0.7, top_k: 5, top_p: 1.0, seed: 2 },
            Sampling { temperature: 1.3, top_k: 0, top_p: 0.9, seed: 3 },
            Sampling { temperature: 0.9, top_k: 40, top_p: 0.5, seed: 4 },
            Sampling { temperature: 1.0, top_k: 1, top_p: 1.0, seed: 5 },
        ]
        .iter()
        .enumerate()
        {
            for counter in 0..4u32 {
                let tokens = ctx.storage("tokens", 4).unwrap();
                let params = ops::sample::params_buffer(&ctx, s, vocab);
                run(&ctx, ops::sample::build(&ctx, &lb, &tokens, &params, &step(&ctx, 1, 0, counter), vocab).unwrap());
                let got = pollster::block_on(ctx.read_u32(&tokens, 1)).unwrap()[0];
                let (kept, want) = ops::sample::reference(&logits, s, counter);
                assert!(kept.contains(&got), "case {i} vocab {vocab}: sampled {got} is outside the kept set {kept:?}");
                assert_eq!(got, want, "case {i} ({s:?}) vocab {vocab} counter {counter}");
                drawn.insert((vocab, got));
            }
        }
    }
    assert!(drawn.len() > 20, "sampling drew too few distinct tokens: {drawn:?}");
}

#[test]
fn every_shader_validates() {
    let ctx = ctx();
    for s in adore::shaders::ALL {
        let module = naga::front::wgsl::parse_str(&s.source());
        assert!(module.is_ok(), "{} does not parse: {:?}", s.name, module.err());
    }
    // Compiling through wgpu too, with the weight formats as constants.
    for wtype in 0..9 {
        for layout in [0.0, 1.0] {
            for entry in ["matvec", "matvec_row", "tiled", "blocked", "matvec_wide"] {
                ctx.pipeline(&adore::shaders::MATMUL, entry, &[("WTYPE", wtype as f64), ("LAYOUT", layout)]).unwrap();
            }
            if ctx.subgroups {
                ctx.pipeline(&adore::shaders::MATMUL_SG, "matvec_wide_sg", &[("WTYPE", wtype as f64), ("LAYOUT", layout)]).unwrap();
            }
        }
        for entry in ["matvec_cpu", "window_cpu"] {
            ctx.pipeline_with(&adore::shaders::MATVEC_CPU, entry, &[("WTYPE", wtype as f64)], &[("XLEN", 24)]).unwrap();
        }
    }
}

#[test]
fn topk_equals_a_cpu_sort_with_ties() {
    let ctx = ctx();
    let mut rng = Rng::new(9);
    for &n in &[1usize, 2, 3, 17, 255, 256, 257, 1000, 4097, 10000] {
        for &k in &[0usize, 1, 2, 5, 64, 255, 256, 1000, 9999, 20000] {
            // Few distinct values, so that ties are everywhere; negative and positive.
            let distinct = 1 + rng.below(20) as u32;
            let scores: Vec<f32> = (0..n).map(|_| (rng.below(distinct as u64) as f32 - distinct as f32 / 2.0) * 0.25).collect();
            let (sb, sel) = (buf(&ctx, &scores), ctx.storage("sel", (n * 4) as u64).unwrap());
            let idx = ctx.storage("idx", (k.min(n).max(1) * 4) as u64).unwrap();
            run(&ctx, ops::topk::build(&ctx, &sb, &sel, &idx, n, k, None).unwrap());
            let want = ops::topk::reference(&scores, k);
            let got = pollster::block_on(ctx.read_u32(&idx, want.len().max(1))).unwrap();
            assert_eq!(&got[..want.len()], &want[..], "top-{k} of {n} (indices)");
            let mask = pollster::block_on(ctx.read_u32(&sel, n)).unwrap();
            let from_mask: Vec<u32> = mask.iter().enumerate().filter(|(_, &m)| m == 1).map(|(i, _)| i as u32).collect();
            assert_eq!(from_mask, want, "top-{k} of {n} (mask)");
            // Bounded by the positions seen so far: only the first `seen` scores take part.
            let seen = rng.below(n as u64) as usize + 1;
            run(&ctx, ops::topk::build(&ctx, &sb, &sel, &idx, n, k, Some(&step_seen(&ctx, 1, seen as u32))).unwrap());
            let want = ops::topk::reference(&scores[..seen], k);
            let got = pollster::block_on(ctx.read_u32(&idx, want.len().max(1))).unwrap();
            assert_eq!(&got[..want.len()], &want[..], "top-{k} of the first {seen} of {n}");
        }
    }
}

#[test]
fn cache_update_score_and_assign_match_references() {
    use ops::cache_update::{self as cu, Params, ScoreParams};
    // The decision in both kernel shapes (its workgroup's lanes differ); the scores and the
    // placement, which do not depend on the shape, in the adapter's.
    for (shaped, ctx) in [(false, ctx()), (true, ctx_gpu_shape())] {
        let mut rng = Rng::new(10);
        for &cap in &[1usize, 3, 17, 255, 257, 1000, 8192] {
            for round in 0..12 {
                let n_seen = 9000u32;
                // Distinct positions, some slots free; scores with ties.
                let mut positions: Vec<u32> = (0..n_seen).collect();
                for i in (1..positions.len()).rev() {
                    positions.swap(i, rng.below(i as u64 + 1) as usize);
                }
                // Slots from the high-water mark up are free (the step's n_slots, which may exceed
                // the capacity: the kernel scans below both).
                let high = match round % 4 {
                    0 => cap + 5,
                    _ => rng.below(cap as u64 + 1) as usize,
                };
                let slot_pos: Vec<u32> =
                    (0..cap).map(|j| if j >= high || rng.below(4) == 0 { INVALID_SLOT } else { positions[j] }).collect();
                // Rounds 0 to 5: few distinct values (ties everywhere); 6 to 11: distinct values of
                // both signs and many magnitudes (every byte of the radix select matters).
                let score: Vec<f32> = match round < 6 {
                    true => (0..cap).map(|_| rng.below(7) as f32 * 0.125).collect(),
                    false => (0..cap).map(|_| rng.f32() * 10f32.powi(rng.below(9) as i32 - 4)).collect(),
                };
                let budget = rng.below(cap as u64 + 1) as u32;
                // Odd rounds keep the step's new rows (the last n_new positions) outside the budget.
                let p = Params {
                    capacity: cap as u32,
                    budget,
                    sinks: [0, 4, 100][round % 3],
                    recent: [0, 16, 500][round % 3],
                    in_flight: (round % 2) as u32,
                    hint: rng.below(3) as u32,
                    pad: [0; 2],
                };
                let n_new = [1, 700, 2000][round % 3];
                // The tables and scores padded as sessions hold them (to a multiple of 4), the
                // padding holding what no slot would: the decision must leave it be.
                let padded = cu::table_len(cap);
                let pad_u32 = |v: &[u32]| -> Vec<u32> { v.iter().copied().chain((cap..padded).map(|i| 77 + i as u32)).collect() };
                let score_padded: Vec<f32> = score.iter().copied().chain((cap..padded).map(|_| 1e9)).collect();
                let (tb, sb) = (buf_u32(&ctx, &pad_u32(&slot_pos)), buf(&ctx, &score_padded));
                let st = ctx.uniform("step", &Step::new(n_new, high as u32, 0, n_seen));
                run(&ctx, cu::build(&ctx, &tb, &sb, &st, p).unwrap());
                let got = pollster::block_on(ctx.read_u32(&tb, padded)).unwrap();
                let want = cu::reference(&slot_pos, &score, p, n_seen, n_new);
                assert_eq!(got, pad_u32(&want), "cache_update {:?} shape cap {cap} {p:?} n_new {n_new}", ctx.kernel_shape);
                // The attended choice: copied from the table into one holding garbage, or in place;
                // then its valid slots listed.
                let want_list = ops::attention::reference_list(&want, high);
                // The hint the choice leaves: the first radix round's byte, that of the keep-th
                // largest candidate key (255 when none stays); unchanged within the budget.
                let want_hint = cu::reference_hint(&slot_pos, &score, p, n_seen, n_new);
                for from_src in [true, false] {
                    // The list's hints start as any byte or none (a guess right or wrong), then
                    // the same choice runs again on the hint it left (right).
                    let mut list_init = vec![0u32; cu::list_len(cap, 3)];
                    for h in &mut list_init[cap + 1..] {
                        *h = rng.below(300) as u32;
                    }
                    let list = buf_u32(&ctx, &list_init);
                    for again in [false, true] {
                        let garbage: Vec<u32> = (0..padded).map(|_| rng.below(1 << 32) as u32).collect();
                        let (table, src) = match from_src {
                            true => (buf_u32(&ctx, &garbage), Some(buf_u32(&ctx, &pad_u32(&slot_pos)))),
                            false => (buf_u32(&ctx, &pad_u32(&slot_pos)), None),
                        };
                        run(&ctx, cu::build_chosen(&ctx, src.as_ref(), &table, &sb, &list, &st, p).unwrap());
                        let what = format!(
                            "chosen (copied: {from_src}, again: {again}) {:?} shape cap {cap} {p:?} n_new {n_new}",
                            ctx.kernel_shape
                        );
                        // Copied or in place, the padding ends as the table's.
                        assert_eq!(pollster::block_on(ctx.read_u32(&table, padded)).unwrap(), pad_u32(&want), "{what}");
                        let got = pollster::block_on(ctx.read_u32(&list, list_init.len())).unwrap();
                        assert_eq!(got[..want_list.len()], want_list[..], "{what}: list");
                        let mut hints = list_init[cap + 1..].to_vec();
                        if let Some(h) = want_hint {
                            hints[p.hint as usize] = h;
                        }
                        assert_eq!(got[cap + 1..], hints[..], "{what}: hints");
                    }
                }

                let rows = 1 + rng.below(4) as usize;
                let want_slots = cu::reference_assign(&slot_pos, rows);
                if want_slots.len() == rows && !shaped {
                    let slots = ctx.storage("slots", (rows * 4) as u64).unwrap();
                    run(&ctx, cu::build_assign(&ctx, &buf_u32(&ctx, &slot_pos), &slots, &step(&ctx, rows, 0, 0), cap, rows).unwrap());
                    assert_eq!(pollster::block_on(ctx.read_u32(&slots, rows)).unwrap(), want_slots, "slot_assign cap {cap} rows {rows}");

                    let heads = 3;
                    let mass = rng.vec(rows * heads * cap, 1.0);
                    let old = rng.vec(cap, 1.0);
                    for accumulate in [0, 1] {
                        let sp = ScoreParams { capacity: cap as u32, n_heads: heads as u32, accumulate, scale: 0.25 };
                        let score_b = buf(&ctx, &old);
                        let d = cu::build_score(
                            &ctx,
                            &buf(&ctx, &mass),
                            &buf_u32(&ctx, &want_slots),
                            &score_b,
                            &step(&ctx, rows, 0, 0),
                            sp,
                            rows,
                        )
                        .unwrap();
                        run(&ctx, d);
                        let want = cu::reference_score(&mass, &want_slots, &old, sp, rows);
                        assert_close(
                            &format!("slot_score cap {cap} rows {rows} accumulate {accumulate}"),
                            &read(&ctx, &score_b, cap),
                            &want,
                            1e-5,
                            1e-5,
                        );
                    }
                }
            }
        }
    }
}

fn step_seen(ctx: &Context, n_rows: usize, n_seen: u32) -> wgpu::Buffer {
    ctx.uniform("step", &Step::new(n_rows as u32, 0, 0, n_seen))
}

#[test]
fn staged_cache_update_by_selection_matrix_equals_a_scatter() {
    use ops::staged_update::{self, Params};
    let ctx = ctx();
    let mut rng = Rng::new(12);
    let mut moved = 0;
    for &(budget, capacity, kvd) in &[(1usize, 2usize, 1usize), (5, 9, 3), (17, 33, 64), (100, 357, 192), (256, 512, 192)] {
        for _ in 0..3 {
            // A table after a release decision: at most `budget` valid slots anywhere.
            let mut order: Vec<usize> = (0..capacity).collect();
            for i in (1..capacity).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let n_valid = rng.below(budget as u64 + 1) as usize;
            let mut table = vec![INVALID_SLOT; capacity];
            for (r, &j) in order[..n_valid].iter().enumerate() {
                table[j] = 1000 + r as u32 * 7;
            }
            let (k, v, score) = (rng.vec(capacity * kvd, 1.0), rng.vec(capacity * kvd, 1.0), rng.vec(capacity, 1.0));
            let p = Params { capacity: capacity as u32, budget: budget as u32, kv_dim: kvd as u32, pad: 0 };
            let (tb, sb, kb, vb) = (buf_u32(&ctx, &table), buf(&ctx, &score), buf(&ctx, &k), buf(&ctx, &v));
            let src = ctx.storage("src", (capacity * 4) as u64).unwrap();
            let sel = ctx.storage("sel", (budget * capacity * 4) as u64).unwrap();
            let out = ctx.storage("out", (2 * budget * kvd * 4) as u64).unwrap();
            run(&ctx, staged_update::build_moves(&ctx, &tb, &sb, &src, p).unwrap());
            run(&ctx, staged_update::build_selection(&ctx, &src, &sel, p).unwrap());
            for d in staged_update::build_move_rows(&ctx, &sel, &kb, &vb, &out, p).unwrap() {
                run(&ctx, d);
            }
            let (mut wk, mut wv, mut ws) = (k.clone(), v.clone(), score.clone());
            let want = staged_update::reference(&table, &mut [&mut wk, &mut wv], budget, kvd);
            assert_eq!(staged_update::reference(&table, &mut [&mut ws], budget, 1), want);
            let got = pollster::block_on(ctx.read_u32(&tb, capacity)).unwrap();
            assert_eq!(got, want, "slot table, budget {budget} capacity {capacity}");
            let (gk, gv, gs) = (read(&ctx, &kb, capacity * kvd), read(&ctx, &vb, capacity * kvd), read(&ctx, &sb, capacity));
            let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            for j in (0..capacity).filter(|&j| want[j] != INVALID_SLOT) {
                let row = j * kvd..(j + 1) * kvd;
                assert_eq!(bits(&gk[row.clone()]), bits(&wk[row.clone()]), "K of slot {j}, budget {budget} capacity {capacity}");
                assert_eq!(bits(&gv[row.clone()]), bits(&wv[row]), "V of slot {j}, budget {budget} capacity {capacity}");
                assert_eq!(gs[j].to_bits(), ws[j].to_bits(), "score of slot {j}");
            }
            moved += (budget..capacity).filter(|&s| table[s] != INVALID_SLOT).count();
        }
    }
    assert!(moved > 100, "too few staged rows moved ({moved})");
}

#[test]
fn quest_page_bounds_and_scores_match_references() {
    use ops::quest::{self, Params, PAGE};
    let ctx = ctx();
    let mut rng = Rng::new(12);
    for &(n_heads, n_kv_heads, head_dim) in &[(4usize, 2usize, 8usize), (3, 1, 5), (2, 2, 16)] {
        for &cap in &[1usize, 15, 16, 17, 63, 1000] {
            let p = Params { n_heads: n_heads as u32, n_kv_heads: n_kv_heads as u32, head_dim: head_dim as u32, capacity: cap as u32 };
            let kv_dim = n_kv_heads * head_dim;
            for round in 0..4 {
                // Rounds 2 and 3 read an f16 cache.
                let kv = if round < 2 { ops::KvType::F32 } else { ops::KvType::F16 };
                // A step's rows in consecutive slots from `start`; earlier slots hold tokens, some
                // freed; later ones are free.
                let rows = (1 + rng.below(20) as usize).min(cap);
                let start = rng.below((cap - rows) as u64 + 1) as usize;
                let slot_pos: Vec<u32> =
                    (0..cap).map(|j| if j >= start + rows || (j < start && rng.below(5) == 0) { INVALID_SLOT } else { j as u32 }).collect();
                let k_cache: Vec<f32> = rng.vec(cap * kv_dim, 1.0).into_iter().map(|x| kv.round(x)).collect();
                let old = rng.vec(p.pages() * 2 * kv_dim, 1.0);
                let slots: Vec<u32> = (start..start + rows).map(|j| j as u32).collect();
                let bounds = buf(&ctx, &old);
                let (kb, tb, sb) = (buf_u32(&ctx, &kv.encode(&k_cache)), buf_u32(&ctx, &slot_pos), buf_u32(&ctx, &slots));
                let stp = step(&ctx, rows, start + rows, 0);
                run(&ctx, quest::build_bounds(&ctx, &kb, kv, &tb, &sb, &bounds, &stp, p, rows).unwrap());
                let got = read(&ctx, &bounds, old.len());
                for page in 0..p.pages() {
                    let have = &got[page * 2 * kv_dim..(page + 1) * 2 * kv_dim];
                    let touched = page >= start / PAGE && page <= (start + rows - 1) / PAGE;
                    let want = if touched {
                        quest::reference_bounds(&k_cache, &slot_pos, p, page)
                    } else {
                        old[page * 2 * kv_dim..(page + 1) * 2 * kv_dim].to_vec()
                    };
                    assert_eq!(have, &want[..], "quest bounds {p:?} {kv:?} rows {start}..{} page {page}", start + rows);
                }
                let q = rng.vec(rows * n_heads * head_dim, 1.0);
                let old_score = rng.vec(cap, 1.0);
                let score = buf(&ctx, &old_score);
                run(&ctx, quest::build_score(&ctx, &buf(&ctx, &q), &bounds, &score, &stp, p, rows).unwrap());
                let got_score = read(&ctx, &score, cap);
                let last = &q[(rows - 1) * n_heads * head_dim..];
                for j in 0..cap {
                    let page = j / PAGE;
                    let want = if page * PAGE < start + rows {
                        quest::reference_score(last, &got[page * 2 * kv_dim..(page + 1) * 2 * kv_dim], p) as f32
                    } else {
                        old_score[j]
                    };
                    assert_close(&format!("quest score {p:?} slot {j}"), &got_score[j..j + 1], &[want], 1e-4, 1e-4);
                }
            }
        }
    }
}
