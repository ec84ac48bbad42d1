// select_store.wgsl: writes the selection product back into the cache proper:
// k_cache[j, :] = out[0, j, :], v_cache[j, :] = out[1, j, :] for j < budget.
// Invocation = one feature of one row; dispatch (ceil(kv_dim / 64), budget, 1).

struct Params {
    capacity: u32,
    budget: u32,
    kv_dim: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> out: array<f32>;            // (2, budget, kv_dim)
@group(0) @binding(1) var<storage, read_write> k_cache: array<f32>;  // (capacity, kv_dim)
@group(0) @binding(2) var<storage, read_write> v_cache: array<f32>;  // (capacity, kv_dim)
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d = gid.x;
    let j = gid.y;
    if d >= p.kv_dim || j >= p.budget {
        return;
    }
    k_cache[j * p.kv_dim + d] = out[j * p.kv_dim + d];
    v_cache[j * p.kv_dim + d] = out[(p.budget + j) * p.kv_dim + d];
}
