// matmul.wgsl: y = x · Wᵀ, i.e. y[r, n] = Σ_k x[r, k] · W[n, k], with W dequantized in the kernel.
//
// The matrix-vector entries (`matvec`, `matvec_row`) can fuse the steps around a product, in
// this order:
//   1. with NORM, RMSNorm of x as it is read: x[r, k] / sqrt(mean_k(x[r, :]²) + eps) · g[k];
//   2. the product;
//   3. with GLU, SwiGLU of stacked gate and up rows: y[r, o] = silu(gate_o) · up_o, where W's
//      rows 0 .. n/2 are gate and n/2 .. n are up (n/2 outputs);
//   4. the store: written, or with ADD added to y (a residual add), into y's columns.
//
// Two shapes per case: one with workgroup cooperation (shared memory, barriers), for GPUs,
// and one where each invocation works alone, for CPU-backed devices (lavapipe, SwiftShader),
// where barriers cost far more than arithmetic.
// `matvec` (decode, up to 8 rows): workgroup of 64 = 8 weight rows × 8 lanes splitting k;
//     dispatch (ceil(outputs / 8), 1, 1), or (ceil(outputs / 4), 1, 1) with GLU.
// `matvec_row` (decode, up to 8 rows): one output per invocation, rows one after another;
//     dispatch (ceil(outputs / 64), 1, 1).
// `matvec_wide` (decode, one row; quantized weights in the rows layout, or float weights whose
//     rows are whole 16-byte words): a workgroup of 64 computes WIDE outputs (with GLU, WIDE
//     gate and up pairs); its lanes split each row in 16-byte words, neighbouring lanes reading
//     neighbouring words, and the sums meet in workgroup memory. `matvec_wide_sg`
//     (matvec_sg.wgsl, where the adapter has subgroups) reduces with subgroupAdd instead.
//     Dispatch (ceil(outputs / WIDE), 1, 1).
// `tiled` (prefill): workgroup of 256 computes a 64 × 64 tile of y, 4 × 4 per invocation,
//     stepping k by 32; dispatch (ceil(n / 64), ceil(rows / 64), 1).
// `blocked` (prefill): each invocation computes 4 outputs × 4 rows from global memory;
//     workgroup of 64 covers 64 outputs × 16 rows; dispatch (ceil(n / 64), ceil(rows / 16), 1).

struct Params {
    k: u32,         // input features
    n: u32,         // output features
    rows: u32,      // rows of x; 0 = step.n_rows
    first: u32,     // unused here (matvec_cpu.wgsl's window)
    y_stride: u32,  // elements between rows of y
    y_offset: u32,  // y's column of output 0
    eps: f32,       // NORM: RMSNorm's epsilon
    pad1: u32,
}

// 1: y += x · Wᵀ (a residual add in the epilogue); 0: y = x · Wᵀ.
override ADD: u32 = 0u;
// 1: x normalised by RMSNorm with weight g as it is read (matrix-vector entries only).
override NORM: u32 = 0u;
// 1: SwiGLU of W's stacked gate and up rows, n / 2 outputs (matrix-vector entries only).
override GLU: u32 = 0u;

@group(0) @binding(0) var<storage, read> weights: array<u32>;  // W: (n, k) in format WTYPE
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (rows, k)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // (rows, y_stride)
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;
// Bound for the matrix-vector entries only; without NORM any buffer of k values, unread.
@group(0) @binding(5) var<storage, read> g: array<f32>;        // (k) the norm's weight

fn n_rows() -> u32 {
    return select(step.n_rows, p.rows, p.rows != 0u);
}

// Output `o` of row `r`, placed and written as the epilogue says.
fn store(r: u32, o: u32, v: f32) {
    let i = r * p.y_stride + p.y_offset + o;
    if ADD != 0u {
        y[i] = y[i] + v;
    } else {
        y[i] = v;
    }
}

// x[i .. i + 8], zero past `valid` values.
fn x8(i: u32, valid: u32) -> W8 {
    if valid >= 8u {
        return W8(vec4<f32>(x[i], x[i + 1u], x[i + 2u], x[i + 3u]), vec4<f32>(x[i + 4u], x[i + 5u], x[i + 6u], x[i + 7u]));
    }
    var v: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        if j < valid {
            v[j] = x[i + j];
        }
    }
    return W8(vec4<f32>(v[0], v[1], v[2], v[3]), vec4<f32>(v[4], v[5], v[6], v[7]));
}

// Outputs written: n, or n / 2 with GLU.
fn n_out() -> u32 {
    return select(p.n, p.n / 2u, GLU != 0u);
}

// x[r, k0 .. k0 + 8] as the product reads it: times the norm's weight with NORM (the row's
// 1 / rms is applied to the sum), zero past k.
fn xin8(r: u32, k0: u32) -> W8 {
    let v = x8(r * p.k + k0, p.k - k0);
    if NORM == 0u {
        return v;
    }
    var gv: array<f32, 8>;
    for (var j = 0u; j < 8u; j++) {
        if k0 + j < p.k {
            gv[j] = g[k0 + j];
        }
    }
    return W8(v.lo * vec4<f32>(gv[0], gv[1], gv[2], gv[3]), v.hi * vec4<f32>(gv[4], gv[5], gv[6], gv[7]));
}

// RMSNorm's 1 / rms of row r from the values a lane summed (Σ x²), or 1 without NORM.
fn rms_scale(sum_sq: f32) -> f32 {
    if NORM == 0u {
        return 1.0;
    }
    return inverseSqrt(sum_sq / f32(p.k) + p.eps);
}

// The epilogue of output o of row r from its gate and up sums (up unused without GLU).
fn finish(r: u32, o: u32, gate: f32, up: f32) {
    if GLU != 0u {
        store(r, o, gate_act(gate) * up);
    } else {
        store(r, o, gate);
    }
}

const MV_ROWS: u32 = 8u;
var<workgroup> partial: array<f32, 512>;  // (MV_ROWS, 64)
var<workgroup> scales: array<f32, 8>;     // (MV_ROWS) each row's 1 / rms

@compute @workgroup_size(64)
fn matvec(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    // Weight row of this lane's group: 8 outputs; with GLU the gate rows of 4 outputs, then
    // their up rows.
    let slot = lid / 8u;
    let lane = lid % 8u;
    var out = wid.x * 8u + slot;
    if GLU != 0u {
        out = wid.x * 4u + slot % 4u + (slot / 4u) * (p.n / 2u);
    }
    let valid = select(out < p.n, wid.x * 4u + slot % 4u < p.n / 2u, GLU != 0u);
    let rows = min(n_rows(), MV_ROWS);
    let groups = (p.k + 7u) / 8u;
    if NORM != 0u {
        // The norm's prologue: every row's Σ x², 64 lanes, then one lane per row.
        for (var t = 0u; t < MV_ROWS; t++) {
            var s = 0.0;
            if t < rows {
                for (var i = lid; i < p.k; i += 64u) {
                    let v = x[t * p.k + i];
                    s += v * v;
                }
            }
            partial[t * 64u + lid] = s;
        }
        workgroupBarrier();
        if lid < MV_ROWS {
            var s = 0.0;
            for (var j = 0u; j < 64u; j++) {
                s += partial[lid * 64u + j];
            }
            scales[lid] = rms_scale(s);
        }
        workgroupBarrier();
    }
    var acc: array<f32, 8>;
    if valid {
        for (var gi = lane; gi < groups; gi += 8u) {
            let w = dequant8(out, gi, p.k);
            let k0 = gi * 8u;
            for (var t = 0u; t < rows; t++) {
                acc[t] += dot8(w, xin8(t, k0));
            }
        }
    }
    for (var t = 0u; t < MV_ROWS; t++) {
        partial[t * 64u + lid] = acc[t];
    }
    workgroupBarrier();
    let last_slot = select(8u, 4u, GLU != 0u);
    if lane == 0u && slot < last_slot && valid {
        let o = select(out, wid.x * 4u + slot, GLU != 0u);
        for (var t = 0u; t < rows; t++) {
            var s = 0.0;
            var u = 0.0;
            for (var j = 0u; j < 8u; j++) {
                s += partial[t * 64u + lid + j];
                if GLU != 0u {
                    u += partial[t * 64u + lid + 32u + j];
                }
            }
            let scale = select(1.0, scales[t], NORM != 0u);
            finish(t, o, s * scale, u * scale);
        }
    }
}

const TS: u32 = 33u;  // padded row stride of the shared tiles
var<workgroup> xs: array<f32, 2112>;  // (64 rows, 32 k), stride TS
var<workgroup> ws: array<f32, 2112>;  // (64 outputs, 32 k), stride TS

@compute @workgroup_size(256)
fn tiled(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let rows = n_rows();
    let n0 = wid.x * 64u;
    let r0 = wid.y * 64u;
    let tx = lid % 16u;
    let ty = lid / 16u;
    var acc: array<f32, 16>;
    for (var k0 = 0u; k0 < p.k; k0 += 32u) {
        // W tile: invocation lid dequantizes 8 weights of output n0 + lid / 4.
        let wn = lid / 4u;
        let wg = lid % 4u;
        var w = W8(vec4<f32>(0.0), vec4<f32>(0.0));
        if n0 + wn < p.n {
            w = dequant8(n0 + wn, k0 / 8u + wg, p.k);
        }
        for (var i = 0u; i < 4u; i++) {
            ws[wn * TS + wg * 8u + i] = w.lo[i];
            ws[wn * TS + wg * 8u + 4u + i] = w.hi[i];
        }
        // X tile: 8 values per invocation.
        for (var i = 0u; i < 8u; i++) {
            let idx = lid * 8u + i;
            let xr = idx / 32u;
            let xk = idx % 32u;
            var v = 0.0;
            if r0 + xr < rows && k0 + xk < p.k {
                v = x[(r0 + xr) * p.k + k0 + xk];
            }
            xs[xr * TS + xk] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                a[i] = xs[(ty + 16u * i) * TS + kk];
                b[i] = ws[(tx + 16u * i) * TS + kk];
            }
            for (var i = 0u; i < 4u; i++) {
                for (var j = 0u; j < 4u; j++) {
                    acc[i * 4u + j] += a[i] * b[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let n = n0 + tx + 16u * j;
            if r < rows && n < p.n {
                store(r, n, acc[i * 4u + j]);
            }
        }
    }
}

// Σ_k W[row, k] · x[t, k] (x as xin8 reads it).
fn row_dot(row: u32, t: u32) -> f32 {
    var acc = 0.0;
    for (var gi = 0u; gi < (p.k + 7u) / 8u; gi++) {
        acc += dot8(dequant8(row, gi, p.k), xin8(t, gi * 8u));
    }
    return acc;
}

@compute @workgroup_size(64)
fn matvec_row(@builtin(global_invocation_id) gid: vec3<u32>) {
    let out = gid.x;
    if out >= n_out() {
        return;
    }
    let rows = min(n_rows(), MV_ROWS);
    for (var t = 0u; t < rows; t++) {
        var sum_sq = 0.0;
        if NORM != 0u {
            for (var i = 0u; i < p.k; i++) {
                let v = x[t * p.k + i];
                sum_sq += v * v;
            }
        }
        let scale = rms_scale(sum_sq);
        var up = 0.0;
        if GLU != 0u {
            up = row_dot(out + p.n / 2u, t) * scale;
        }
        finish(t, out, row_dot(out, t) * scale, up);
    }
}

@compute @workgroup_size(64)
fn blocked(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let rows = n_rows();
    let n0 = (wid.x * 16u + lid % 16u) * 4u;
    let r0 = (wid.y * 4u + lid / 16u) * 4u;
    if n0 >= p.n || r0 >= rows {
        return;
    }
    // Out-of-range outputs and rows repeat the last valid one; their results are not written.
    let o = vec4<u32>(min(n0, p.n - 1u), min(n0 + 1u, p.n - 1u), min(n0 + 2u, p.n - 1u), min(n0 + 3u, p.n - 1u));
    let r = vec4<u32>(r0, min(r0 + 1u, rows - 1u), min(r0 + 2u, rows - 1u), min(r0 + 3u, rows - 1u)) * p.k;
    let groups = (p.k + 7u) / 8u;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var g = 0u; g < groups; g++) {
        let k0 = g * 8u;
        let valid = p.k - k0;
        let w0 = dequant8(o.x, g, p.k);
        let w1 = dequant8(o.y, g, p.k);
        let w2 = dequant8(o.z, g, p.k);
        let w3 = dequant8(o.w, g, p.k);
        let x0 = x8(r.x + k0, valid);
        let x1 = x8(r.y + k0, valid);
        let x2 = x8(r.z + k0, valid);
        let x3 = x8(r.w + k0, valid);
        a0 += vec4<f32>(dot8(w0, x0), dot8(w1, x0), dot8(w2, x0), dot8(w3, x0));
        a1 += vec4<f32>(dot8(w0, x1), dot8(w1, x1), dot8(w2, x1), dot8(w3, x1));
        a2 += vec4<f32>(dot8(w0, x2), dot8(w1, x2), dot8(w2, x2), dot8(w3, x2));
        a3 += vec4<f32>(dot8(w0, x3), dot8(w1, x3), dot8(w2, x3), dot8(w3, x3));
    }
    let acc = array<vec4<f32>, 4>(a0, a1, a2, a3);
    for (var t = 0u; t < 4u; t++) {
        for (var j = 0u; j < 4u; j++) {
            if r0 + t < rows && n0 + j < p.n {
                store(r0 + t, n0 + j, acc[t][j]);
            }
        }
    }
}

// Outputs per `matvec_wide` workgroup (1, 2 or 4).
override WIDE: u32 = 4u;
// The weights again, as 16-byte words (`matvec_wide` only).
@group(0) @binding(6) var<storage, read> wv: array<vec4<u32>>;
// Per accumulator (8 weight rows, then Σ x²) the sums of the 64 lanes.
var<workgroup> red: array<f32, 576>;

// Weights per unit: one 16-byte word of a row (for Q6K, 64 weights from three).
fn unit_weights() -> u32 {
    switch WTYPE {
        case 0u: { return 4u; }
        case 1u, 2u: { return 8u; }
        case 4u: { return 16u; }
        case 8u: { return 64u; }
        default: { return 32u; }
    }
}

// Index in x of the 4 values that xs[i] of unit u holds.
fn unit_x(u: u32, i: u32) -> u32 {
    if WTYPE == 6u || WTYPE == 7u {
        // Pair j of sub-blocks, half h of each: sub-block 2 j's 16 weights, then 2 j + 1's.
        let v = u % 8u;
        return (u / 8u) * 256u + (v / 2u) * 64u + (i / 4u) * 32u + (v % 2u) * 16u + (i % 4u) * 4u;
    }
    if WTYPE == 8u {
        // Half n of the super-block, part q: 16 weights from each of its four quarters.
        let a = u % 4u;
        return (u / 4u) * 256u + (a / 2u) * 128u + (i / 4u) * 32u + (a % 2u) * 16u + (i % 4u) * 4u;
    }
    return u * unit_weights() + i * 4u;
}

// Σ_w W[row, w] · x[w] over the weights of unit u, given its x values (xs) and their sums by
// 16 (xsum).
fn unit_dot(row: u32, u: u32, xs: ptr<function, array<vec4<f32>, 16>>, xsum: ptr<function, array<f32, 4>>) -> f32 {
    if WTYPE == 0u {
        return dot(bitcast<vec4<f32>>(wv[row * (p.k / 4u) + u]), (*xs)[0]);
    }
    if WTYPE <= 2u {
        let w = wv[row * (p.k / 8u) + u];
        return dot(vec4<f32>(halves(w.x), halves(w.y)), (*xs)[0]) + dot(vec4<f32>(halves(w.z), halves(w.w)), (*xs)[1]);
    }
    let bw = select(32u, 256u, WTYPE >= 6u);
    let nb = p.k / bw;
    let pv = row * (row_words(nb) / 4u);  // the row's first 16-byte word
    if WTYPE == 8u {
        let b = u / 4u;
        let a = u % 4u;
        let n = a / 2u;
        let part = a % 2u;
        let base = pv + b * 12u;
        let qa = wv[base + n * 4u + part];
        let qb = wv[base + n * 4u + 2u + part];
        let qh = wv[base + 8u + n * 2u + part];
        let hb = header_base(row, nb, b);
        var total = 0.0;
        for (var t = 0u; t < 4u; t++) {
            let lo = select(qa, qb, t % 2u == 1u);
            var s = 0.0;
            for (var c = 0u; c < 4u; c++) {
                let q = bit_fields(lo[c], (t / 2u) * 4u, 15u) + 16.0 * bit_fields(qh[c], t * 2u, 3u) - vec4<f32>(32.0);
                s += dot(q, (*xs)[t * 4u + c]);
            }
            total += signed_byte_at(hb, 192u + n * 8u + t * 2u + part) * s;
        }
        return unpack2x16float(weights[hb + 52u]).x * total;
    }
    let q = wv[pv + u];
    if WTYPE == 4u {
        var s = 0.0;
        for (var c = 0u; c < 4u; c++) {
            s += dot(signed_bytes(q[c]), (*xs)[c]);
        }
        return unpack2x16float(weights[header_base(row, nb, u / 2u)]).x * s;
    }
    if WTYPE == 6u || WTYPE == 7u {
        let b = u / 8u;
        let v = u % 8u;
        let j = v / 2u;
        let hb = header_base(row, nb, b);
        var s0 = 0.0;
        var s1 = 0.0;
        for (var c = 0u; c < 4u; c++) {
            var lo = nibbles(q[c], 0u);
            var hi = nibbles(q[c], 4u);
            if WTYPE == 7u {
                let qh = weights[hb + 4u + (v % 2u) * 4u + c];
                lo += 16.0 * bit_fields(qh, 2u * j, 1u);
                hi += 16.0 * bit_fields(qh, 2u * j + 1u, 1u);
            }
            s0 += dot(lo, (*xs)[c]);
            s1 += dot(hi, (*xs)[4u + c]);
        }
        let d = unpack2x16float(weights[hb]);
        let sm0 = k_scale_min(hb, 2u * j);
        let sm1 = k_scale_min(hb, 2u * j + 1u);
        return d.x * (sm0.x * s0 + sm1.x * s1) - d.y * (sm0.y * (*xsum)[0] + sm1.y * (*xsum)[1]);
    }
    // Q4 and Q5: the unit is a block.
    let hb = header_base(row, nb, u);
    let dm = unpack2x16float(weights[hb]);
    var s = 0.0;
    for (var c = 0u; c < 4u; c++) {
        var lo = nibbles(q[c], 0u);
        var hi = nibbles(q[c], 4u);
        if WTYPE == 5u {
            let qh = weights[hb + 1u];
            lo += fifth_bits(qh, c * 4u);
            hi += fifth_bits(qh, 16u + c * 4u);
        }
        s += dot(lo, (*xs)[c]) + dot(hi, (*xs)[4u + c]);
    }
    return dm.x * s + dm.y * ((*xsum)[0] + (*xsum)[1]);
}

// Weight row `a` of workgroup `w`'s accumulators (with GLU the gate rows, then the up rows);
// p.n where it has none.
fn wide_row(w: u32, a: u32) -> u32 {
    let o = w * WIDE + a % WIDE;
    if GLU != 0u {
        return select(p.n, o + (a / WIDE) * (p.n / 2u), o < p.n / 2u && a < 2u * WIDE);
    }
    return select(p.n, o, o < p.n && a < WIDE);
}

// This lane's share of each accumulator: units lid, lid + 64, ... of the workgroup's rows.
fn wide_sums(lid: u32, w: u32) -> array<f32, 9> {
    var acc: array<f32, 9>;
    let units = p.k / unit_weights();
    let vecs = min(unit_weights() / 4u, 16u);
    for (var u = lid; u < units; u += 64u) {
        var xs: array<vec4<f32>, 16>;
        var xsum: array<f32, 4>;
        for (var i = 0u; i < vecs; i++) {
            let e = unit_x(u, i);
            var v = vec4<f32>(x[e], x[e + 1u], x[e + 2u], x[e + 3u]);
            if NORM != 0u {
                acc[8] += dot(v, v);
                v *= vec4<f32>(g[e], g[e + 1u], g[e + 2u], g[e + 3u]);
            }
            xs[i] = v;
            xsum[i / 4u] += v.x + v.y + v.z + v.w;
        }
        for (var a = 0u; a < 8u; a++) {
            let row = wide_row(w, a);
            if row < p.n {
                acc[a] += unit_dot(row, u, &xs, &xsum);
            }
        }
    }
    return acc;
}

// The epilogue, once red[a * 64] holds accumulator a's total: lane i < WIDE writes output i.
fn wide_finish(lid: u32, w: u32) {
    let o = w * WIDE + lid;
    if lid < WIDE && o < n_out() && n_rows() > 0u {
        let scale = rms_scale(red[512]);
        finish(0u, o, red[lid * 64u] * scale, red[(WIDE + lid) * 64u] * scale);
    }
}

@compute @workgroup_size(64)
fn matvec_wide(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let acc = wide_sums(lid, wid.x);
    for (var a = 0u; a < 9u; a++) {
        red[a * 64u + lid] = acc[a];
    }
    workgroupBarrier();
    for (var half = 32u; half > 0u; half >>= 1u) {
        if lid < half {
            for (var a = 0u; a < 9u; a++) {
                red[a * 64u + lid] += red[a * 64u + lid + half];
            }
        }
        workgroupBarrier();
    }
    wide_finish(lid, wid.x);
}
