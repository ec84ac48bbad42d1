// head_norm.wgsl: RMSNorm of each head of q and k in place in the stacked q/k/v rows (Gemma 3's
// q and k norms, before RoPE): for row r and head h < n_heads + n_kv_heads, the head_dim values
// at qkv[r * width + h * head_dim ..] are divided by their rms and multiplied by the q weight
// (h < n_heads) or the k weight; v is left as it is. One workgroup of 64 per (head, row);
// dispatch (n_heads + n_kv_heads, rows, 1).

struct Params {
    head_dim: u32,
    n_heads: u32,     // q heads; the k heads follow them
    n_kv_heads: u32,
    width: u32,       // elements per row of qkv
    eps: f32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;  // (rows, width)
@group(0) @binding(1) var<storage, read> g: array<f32>;          // (2, head_dim): q weight, k weight
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let r = wid.y;
    if r >= step.n_rows || h >= p.n_heads + p.n_kv_heads {
        return;
    }
    let base = r * p.width + h * p.head_dim;
    let gb = select(0u, p.head_dim, h >= p.n_heads);
    var s = 0.0;
    for (var i = lid; i < p.head_dim; i += 64u) {
        let v = qkv[base + i];
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var w = 32u; w > 0u; w >>= 1u) {
        if lid < w {
            red[lid] += red[lid + w];
        }
        workgroupBarrier();
    }
    let scale = inverseSqrt(red[0] / f32(p.head_dim) + p.eps);
    for (var i = lid; i < p.head_dim; i += 64u) {
        qkv[base + i] = qkv[base + i] * scale * g[gb + i];
    }
}
