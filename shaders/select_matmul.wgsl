// select_matmul.wgsl: one layer's cache update by multiplication (the paper's technique):
// out_k = sel · k_cache and out_v = sel · v_cache, sel (budget, capacity) one-hot, caches
// (capacity, kv_dim), outputs (budget, kv_dim) each, stored K then V in `out`. A dense product:
// O(budget · capacity · kv_dim) multiply-adds where a scatter moves O(budget · kv_dim) values.
// Invocation = one feature of one output row; dispatch (ceil(kv_dim / 64), budget, 1).

struct Params {
    capacity: u32,
    budget: u32,
    kv_dim: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> sel: array<f32>;        // (budget, capacity)
@group(0) @binding(1) var<storage, read> k_cache: array<f32>;    // (capacity, kv_dim)
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;    // (capacity, kv_dim)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (2, budget, kv_dim)
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = gid.x;
    let j = gid.y;
    if d >= p.kv_dim || j >= p.budget {
        return;
    }
    var k = 0.0;
    var v = 0.0;
    for (var s = 0u; s < p.capacity; s++) {
        let w = sel[j * p.capacity + s];
        k += w * k_cache[s * p.kv_dim + d];
        v += w * v_cache[s * p.kv_dim + d];
    }
    out[j * p.kv_dim + d] = k;
    out[(p.budget + j) * p.kv_dim + d] = v;
}
