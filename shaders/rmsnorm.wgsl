// rmsnorm.wgsl: y[r, i] = x[r, i] / sqrt(mean_i(x[r, :]²) + eps) · g[i], or added to y.
// One workgroup of 256 per row; dispatch (1, rows, 1). With last_only, the only workgroup
// normalises the step's last new row into row 0 of y (for the LM head of a prompt).

struct Params {
    dim: u32,
    eps: f32,
    last_only: u32,  // 1: read row step.n_new - 1 (the last new token), write row 0
    pad: u32,
}

// 1: y += the normalised row. An override, not a parameter: lavapipe recompiles a kernel whose
// branches a uniform value steers at every dispatch, and keeps each copy.
override ADD: u32 = 0u;

@group(0) @binding(0) var<storage, read> x: array<f32>;        // (rows, dim)
@group(0) @binding(1) var<storage, read> g: array<f32>;        // (dim)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;  // (rows, dim) or (1, dim)
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = wid.y;
    if r >= step.n_rows || (p.last_only != 0u && r != 0u) {
        return;
    }
    let src = select(r, step.n_new - 1u, p.last_only != 0u);
    var s = 0.0;
    for (var i = lid; i < p.dim; i += 256u) {
        let v = x[src * p.dim + i];
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var h = 128u; h > 0u; h >>= 1u) {
        if lid < h {
            red[lid] += red[lid + h];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(red[0] / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += 256u) {
        let v = x[src * p.dim + i] * scale * g[i];
        if ADD != 0u {
            y[r * p.dim + i] += v;
        } else {
            y[r * p.dim + i] = v;
        }
    }
}
