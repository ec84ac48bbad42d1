// matmul.wgsl: y = x · Wᵀ, i.e. y[r, n] = Σ_k x[r, k] · W[n, k], with W dequantized in the kernel.
//
// `matvec` (decode, up to 8 rows): workgroup of 64 = 8 outputs × 8 lanes splitting k;
//     dispatch (ceil(n / 8), 1, 1).
// `tiled` (prefill): workgroup of 256 computes a 64 × 64 tile of y, 4 × 4 per invocation,
//     stepping k by 32; dispatch (ceil(n / 64), ceil(rows / 64), 1).

struct Params {
    k: u32,     // input features
    n: u32,     // output features
    rows: u32,  // rows of x; 0 = step.n_rows
    pad: u32,
}

@group(0) @binding(0) var<storage, read> weights: array<u32>;  // W: (n, k) in format WTYPE
@group(0) @binding(1) var<storage, read> x: array<f32>;        // (rows, k)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // (rows, n)
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

fn n_rows() -> u32 {
    return select(step.n_rows, p.rows, p.rows != 0u);
}

const MV_ROWS: u32 = 8u;
var<workgroup> partial: array<f32, 512>;  // (MV_ROWS, 64)

@compute @workgroup_size(64)
fn matvec(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let out = wid.x * 8u + lid / 8u;
    let lane = lid % 8u;
    let rows = min(n_rows(), MV_ROWS);
    let groups = (p.k + 7u) / 8u;
    var acc: array<f32, 8>;
    if out < p.n {
        for (var g = lane; g < groups; g += 8u) {
            let w = dequant8(out, g, p.k);
            let k0 = g * 8u;
            let kmax = min(8u, p.k - k0);
            for (var t = 0u; t < rows; t++) {
                let xb = t * p.k + k0;
                var s = 0.0;
                for (var i = 0u; i < kmax; i++) {
                    s += w[i] * x[xb + i];
                }
                acc[t] += s;
            }
        }
    }
    for (var t = 0u; t < MV_ROWS; t++) {
        partial[t * 64u + lid] = acc[t];
    }
    workgroupBarrier();
    if lane == 0u && out < p.n {
        for (var t = 0u; t < rows; t++) {
            var s = 0.0;
            for (var j = 0u; j < 8u; j++) {
                s += partial[t * 64u + lid + j];
            }
            y[t * p.n + out] = s;
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
        var w: array<f32, 8>;
        if n0 + wn < p.n {
            w = dequant8(n0 + wn, k0 / 8u + wg, p.k);
        }
        for (var i = 0u; i < 8u; i++) {
            ws[wn * TS + wg * 8u + i] = w[i];
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
                y[r * p.n + n] = acc[i * 4u + j];
            }
        }
    }
}
