// matvec_cpu.wgsl: y = x · Wᵀ on CPU-backed devices (lavapipe, SwiftShader), with W dequantized
// in the kernel.
//
// A CPU device runs a workgroup's invocations as lanes of SIMD registers, and a load at an
// address the compiler cannot prove constant is made lane by lane, even where every lane reads
// the same address: from a storage buffer in a loop with a test per lane, from a uniform buffer
// as separate loads. So x, which every invocation reads whole, is bound as a uniform buffer; W is
// read in whole blocks of 32 weights, their payload in 16-byte loads where W lies in rows (2
// loads per 32 Q4 weights; 5 in blocks; 12 for three 8-weight reads); and each block of x, once
// loaded, serves several outputs (with one output per invocation, loading x took over half the
// kernel's time on lavapipe).
// `matvec_cpu` (decode, up to 8 rows): 4 outputs of one row per invocation (2 with GLU);
//     dispatch (ceil(n_out / 256) (ceil(n_out / 128) with GLU), rows, 1). Needs rows · k ≤ 4 · XLEN.
// `window_cpu` (prefill): x is bound as a window of XLEN · 4 / k rows starting at row p.first (one
//     dispatch per window); each invocation computes WOUTS outputs for 4 rows, each weight and
//     each value of x loaded once for them; dispatch (ceil(n / (64 · WOUTS)), ceil(window rows / 4), 1).
// Both need k % 32 == 0.
// `matvec_cpu` can fuse the steps around its product, in this order: with NORM, RMSNorm of x as
// it is read (x[r, k] / sqrt(mean_k(x[r, :]²) + eps) · g[k]); the product; with GLU, SwiGLU of
// stacked gate and up rows (y[r, o] = silu(gate_o) · up_o, W's rows 0 .. n/2 gate and n/2 .. n
// up, n/2 outputs); the store, written or with ADD added.

// Length of x in vec4: set to the bound size when the pipeline is made (a uniform array's length
// must be known when the shader is compiled, and the binding must hold all of it).
const XLEN: u32 = 4096u;
// Length of g in vec4: k / 4 with NORM, else 1 (set likewise).
const GLEN: u32 = 1u;

struct Params {
    k: u32,         // input features
    n: u32,         // output features
    rows: u32,      // rows of x; 0 = step.n_rows
    first: u32,     // window_cpu: the row of x at the start of the bound window
    y_stride: u32,  // elements between rows of y
    y_offset: u32,  // y's column of output 0
    eps: f32,       // NORM: RMSNorm's epsilon
    pad1: u32,
}

// 1: y += x · Wᵀ (a residual add in the epilogue); 0: y = x · Wᵀ.
override ADD: u32 = 0u;
// 1: x normalised by RMSNorm with weight g as it is read (`matvec_cpu` only).
override NORM: u32 = 0u;
// 1: SwiGLU of W's stacked gate and up rows, n / 2 outputs (`matvec_cpu` only).
override GLU: u32 = 0u;

// Output `o` of row `r`, placed and written as the epilogue says.
fn store(r: u32, o: u32, v: f32) {
    let i = r * p.y_stride + p.y_offset + o;
    if ADD != 0u {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

// p is a storage buffer: lavapipe (Mesa 22.3) inlines uniform values that steer loops and
// branches by recompiling the kernel at dispatch time, and keeps every copy (the tiny test model
// grew by 6 MB per token with p uniform here).
@group(0) @binding(0) var<storage, read> weights: array<u32>;  // W: (n, k) in format WTYPE
@group(0) @binding(1) var<uniform> x: array<vec4<f32>, XLEN>;  // (rows, k), or the window's rows
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // (rows, y_stride)
@group(0) @binding(3) var<storage, read> p: Params;
@group(0) @binding(4) var<uniform> step: Step;
// Bound for `matvec_cpu` only; without NORM any 16 bytes, unread.
@group(0) @binding(5) var<uniform> g: array<vec4<f32>, GLEN>;  // (k) the norm's weight
@group(0) @binding(6) var<storage, read> wv: array<vec4<u32>>;  // W again, as 16-byte words

// Words e .. e + 3 of W. In the rows layout every group of 4 payload words a block is read in
// starts on a 16-byte boundary and is one load of `wv`; a load from a storage buffer is made
// lane by lane with a test per word on a CPU device, and one 16-byte load runs the lane loop once
// for the 4 (decode's products 1.3 times faster on lavapipe). In the blocks layout, 4 loads.
fn quad(e: u32) -> vec4<u32> {
    if LAYOUT == 1u {
        return wv[e >> 2u];
    }
    return vec4<u32>(weights[e], weights[e + 1u], weights[e + 2u], weights[e + 3u]);
}

fn float4(e: u32) -> vec4<f32> {
    if WTYPE == 0u {
        return bitcast<vec4<f32>>(vec4<u32>(weights[e], weights[e + 1u], weights[e + 2u], weights[e + 3u]));
    }
    return vec4<f32>(halves(weights[e >> 1u]), halves(weights[(e >> 1u) + 1u]));
}

// Block `b` (32 weights) of row `row` of W: w = scale · (a0 .. a7) + offset, elementwise (for
// K-quants, sub-block b % 8 of super-block b / 8). Word c of a block is read at hb + c in its
// header and pb + c in its payload (quant.wgsl), so both layouts are read alike.
struct Block {
    a0: vec4<f32>,
    a1: vec4<f32>,
    a2: vec4<f32>,
    a3: vec4<f32>,
    a4: vec4<f32>,
    a5: vec4<f32>,
    a6: vec4<f32>,
    a7: vec4<f32>,
    scale: f32,
    offset: f32,
}

// Each byte of each word of q, from bit `shift` on under `mask`: 16 weights.
struct Fields4 {
    a: vec4<f32>,
    b: vec4<f32>,
    c: vec4<f32>,
    d: vec4<f32>,
}

fn fields4(q: vec4<u32>, shift: u32, mask: u32) -> Fields4 {
    return Fields4(bit_fields(q.x, shift, mask), bit_fields(q.y, shift, mask), bit_fields(q.z, shift, mask), bit_fields(q.w, shift, mask));
}

fn block(row: u32, b: u32) -> Block {
    if WTYPE >= 6u {
        // K-quants: 32-weight block b is sub-block s = b % 8 of super-block b / 8.
        let nb = p.k / 256u;
        let hb = header_base(row, nb, b / 8u);
        let pb = payload_base(row, nb, b / 8u);
        let s = b % 8u;
        if WTYPE == 8u {
            // Q6K: half h, quarter t; the two 16-weight scales are folded into the weights.
            let h = s / 4u;
            let t = s % 4u;
            let lo = pb + h * 16u + (t % 2u) * 8u;
            let hi = pb + 32u + h * 8u;
            let l0 = fields4(quad(lo), (t / 2u) * 4u, 15u);
            let l1 = fields4(quad(lo + 4u), (t / 2u) * 4u, 15u);
            let h0 = fields4(quad(hi), t * 2u, 3u);
            let h1 = fields4(quad(hi + 4u), t * 2u, 3u);
            let c0 = signed_byte_at(hb, 192u + h * 8u + t * 2u);
            let c1 = signed_byte_at(hb, 193u + h * 8u + t * 2u);
            let m = vec4<f32>(32.0);
            return Block(
                c0 * (l0.a + 16.0 * h0.a - m), c0 * (l0.b + 16.0 * h0.b - m), c0 * (l0.c + 16.0 * h0.c - m), c0 * (l0.d + 16.0 * h0.d - m),
                c1 * (l1.a + 16.0 * h1.a - m), c1 * (l1.b + 16.0 * h1.b - m), c1 * (l1.c + 16.0 * h1.c - m), c1 * (l1.d + 16.0 * h1.d - m),
                unpack2x16float(weights[hb + 52u]).x, 0.0,
            );
        }
        let d = unpack2x16float(weights[hb]);
        let sm = k_scale_min(hb, s);
        let qs = pb + select(4u, 12u, WTYPE == 7u) + (s / 2u) * 8u;
        let sh = (s % 2u) * 4u;
        let q0 = fields4(quad(qs), sh, 15u);
        let q1 = fields4(quad(qs + 4u), sh, 15u);
        var w = Block(q0.a, q0.b, q0.c, q0.d, q1.a, q1.b, q1.c, q1.d, d.x * sm.x, -d.y * sm.y);
        if WTYPE == 7u {
            let e0 = fields4(quad(hb + 4u), s, 1u);
            let e1 = fields4(quad(hb + 8u), s, 1u);
            w.a0 += 16.0 * e0.a;
            w.a1 += 16.0 * e0.b;
            w.a2 += 16.0 * e0.c;
            w.a3 += 16.0 * e0.d;
            w.a4 += 16.0 * e1.a;
            w.a5 += 16.0 * e1.b;
            w.a6 += 16.0 * e1.c;
            w.a7 += 16.0 * e1.d;
        }
        return w;
    }
    if WTYPE >= 3u {
        let hb = header_base(row, p.k / 32u, b);
        var w = block_q(row, b, weights[hb]);
        if WTYPE == 5u {
            let qh = weights[hb + 1u];
            w.a0 += fifth_bits(qh, 0u);
            w.a1 += fifth_bits(qh, 4u);
            w.a2 += fifth_bits(qh, 8u);
            w.a3 += fifth_bits(qh, 12u);
            w.a4 += fifth_bits(qh, 16u);
            w.a5 += fifth_bits(qh, 20u);
            w.a6 += fifth_bits(qh, 24u);
            w.a7 += fifth_bits(qh, 28u);
        }
        return w;
    }
    let e = row * p.k + b * 32u;
    return Block(
        float4(e), float4(e + 4u), float4(e + 8u), float4(e + 12u),
        float4(e + 16u), float4(e + 20u), float4(e + 24u), float4(e + 28u),
        1.0, 0.0,
    );
}

// Block b of row `row` of a Q4 or Q8 matrix (of Q5, all but the fifth bits), given the block's
// first header word (d, and m where the format has it).
fn block_q(row: u32, b: u32, head: u32) -> Block {
    let pb = payload_base(row, p.k / 32u, b) + payload_first();
    if WTYPE == 4u {
        let q0 = quad(pb);
        let q1 = quad(pb + 4u);
        return Block(
            signed_bytes(q0.x), signed_bytes(q0.y), signed_bytes(q0.z), signed_bytes(q0.w),
            signed_bytes(q1.x), signed_bytes(q1.y), signed_bytes(q1.z), signed_bytes(q1.w),
            unpack2x16float(head).x, 0.0,
        );
    }
    let dm = unpack2x16float(head);
    let lo = fields4(quad(pb), 0u, 15u);
    let hi = fields4(quad(pb), 4u, 15u);
    return Block(lo.a, lo.b, lo.c, lo.d, hi.a, hi.b, hi.c, hi.d, dm.x, dm.y);
}

// x[i] (a vec4), times the norm's weight g[gi] with NORM.
fn xin(i: u32, gi: u32) -> vec4<f32> {
    if NORM != 0u {
        return x[i] * g[gi];
    }
    return x[i];
}

// One block's 32 values of x (x[4 xb .. 4 xb + 32] as xin reads them from g's vec4 gb on) and,
// for formats with an offset, their sum. Each load of x is a load per lane on a CPU device
// (the lanes read one address, but the compiler cannot know it), and they cost more than the
// weights' loads: a block of x is loaded once for every row an invocation computes.
struct XBlock {
    x0: vec4<f32>,
    x1: vec4<f32>,
    x2: vec4<f32>,
    x3: vec4<f32>,
    x4: vec4<f32>,
    x5: vec4<f32>,
    x6: vec4<f32>,
    x7: vec4<f32>,
    sum: f32,
}

fn x_block(xb: u32, gb: u32) -> XBlock {
    let x0 = xin(xb, gb);
    let x1 = xin(xb + 1u, gb + 1u);
    let x2 = xin(xb + 2u, gb + 2u);
    let x3 = xin(xb + 3u, gb + 3u);
    let x4 = xin(xb + 4u, gb + 4u);
    let x5 = xin(xb + 5u, gb + 5u);
    let x6 = xin(xb + 6u, gb + 6u);
    let x7 = xin(xb + 7u, gb + 7u);
    var sum = 0.0;
    if has_offset() {
        sum = dot(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7, vec4<f32>(1.0));
    }
    return XBlock(x0, x1, x2, x3, x4, x5, x6, x7, sum);
}

// Σ over the block of w · x: scale · Σ a x + offset · Σ x.
fn block_dot(w: Block, x: XBlock) -> f32 {
    let s = dot(w.a0, x.x0) + dot(w.a1, x.x1) + dot(w.a2, x.x2) + dot(w.a3, x.x3)
        + dot(w.a4, x.x4) + dot(w.a5, x.x5) + dot(w.a6, x.x6) + dot(w.a7, x.x7);
    if has_offset() {
        return w.scale * s + w.offset * x.sum;
    }
    return w.scale * s;
}

// Σ_k W[r, k] · x[k] for the 4 rows r of W given, against the row of x starting at vec4 x0
// (x as xin reads it), each block of x loaded once for the 4.
fn rows_dot(r: vec4<u32>, x0: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    let nb = p.k / 32u;
    for (var b = 0u; b < nb; b++) {
        let xv = x_block(x0 + b * 8u, b * 8u);
        acc += vec4<f32>(block_dot(block(r.x, b), xv), block_dot(block(r.y, b), xv), block_dot(block(r.z, b), xv), block_dot(block(r.w, b), xv));
    }
    return acc;
}

// Outputs per invocation of `matvec_cpu`: 4, or 2 with GLU (each needs a gate and an up row).
fn outs_per_lane() -> u32 {
    return select(4u, 2u, GLU != 0u);
}

@compute @workgroup_size(64)
fn matvec_cpu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = wid.y;
    if t >= min(select(step.n_rows, p.rows, p.rows != 0u), 8u) {
        return;
    }
    let n_out = select(p.n, p.n / 2u, GLU != 0u);
    let o0 = gid.x * outs_per_lane();
    if o0 >= n_out {
        return;
    }
    // Outputs past the last compute the last one again and are not written.
    let last = n_out - 1u;
    let x0 = t * p.k / 4u;
    // The norm's prologue: the row's 1 / rms (x is read whole by every lane, at one address).
    var scale = 1.0;
    if NORM != 0u {
        var s = vec4<f32>(0.0);
        for (var i = 0u; i < p.k / 4u; i++) {
            let v = x[x0 + i];
            s += v * v;
        }
        scale = inverseSqrt(dot(s, vec4<f32>(1.0)) / f32(p.k) + p.eps);
    }
    var v: vec4<f32>;
    if GLU != 0u {
        // Rows: gate o0, gate o0 + 1, up o0, up o0 + 1.
        let o1 = min(o0 + 1u, last);
        let h = p.n / 2u;
        let d = rows_dot(vec4<u32>(o0, o1, o0 + h, o1 + h), x0) * scale;
        v = vec4<f32>(gate_act(d.x) * d.z, gate_act(d.y) * d.w, 0.0, 0.0);
    } else {
        v = rows_dot(min(vec4<u32>(o0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(last)), x0) * scale;
    }
    for (var i = 0u; i < outs_per_lane(); i++) {
        if o0 + i < n_out {
            store(t, o0 + i, v[i]);
        }
    }
}

// Outputs per invocation of `window_cpu` (1 to 4), each for the invocation's 4 rows of x (set
// when the pipeline is made).
const WOUTS: u32 = 4u;

// Σ over the block of w · x for 4 rows of x.
fn dots4(w: Block, a: XBlock, b: XBlock, c: XBlock, d: XBlock) -> vec4<f32> {
    return vec4<f32>(block_dot(w, a), block_dot(w, b), block_dot(w, c), block_dot(w, d));
}

@compute @workgroup_size(64)
fn window_cpu(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let rows = select(step.n_rows, p.rows, p.rows != 0u);
    let r0 = wid.y * 4u;  // first of this invocation's rows in the window
    let o0 = gid.x * WOUTS;  // first of its outputs
    if p.first + r0 >= rows || o0 >= p.n {
        return;
    }
    // Rows past the window or past x repeat its last valid row, and outputs past the last
    // repeat it; neither is written.
    let last = min(XLEN * 4u / p.k, rows - p.first) - 1u;
    let stride = p.k / 4u;
    let x0 = r0 * stride;
    let x1 = min(r0 + 1u, last) * stride;
    let x2 = min(r0 + 2u, last) * stride;
    let x3 = min(r0 + 3u, last) * stride;
    let out = min(vec4<u32>(o0) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(p.n - 1u));
    // acc[j][i]: output o0 + j of row r0 + i.
    var acc = mat4x4<f32>();
    for (var b = 0u; b < p.k / 32u; b++) {
        let o = b * 8u;
        let xa = x_block(x0 + o, 0u);
        let xb = x_block(x1 + o, 0u);
        let xc = x_block(x2 + o, 0u);
        let xd = x_block(x3 + o, 0u);
        acc[0] += dots4(block(out.x, b), xa, xb, xc, xd);
        if WOUTS > 1u {
            acc[1] += dots4(block(out.y, b), xa, xb, xc, xd);
        }
        if WOUTS > 2u {
            acc[2] += dots4(block(out.z, b), xa, xb, xc, xd);
            acc[3] += dots4(block(out.w, b), xa, xb, xc, xd);
        }
    }
    for (var j = 0u; j < WOUTS; j++) {
        for (var i = 0u; i < 4u; i++) {
            if o0 + j < p.n && r0 + i <= last {
                store(p.first + r0 + i, o0 + j, acc[j][i]);
            }
        }
    }
}
