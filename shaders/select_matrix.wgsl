// select_matrix.wgsl: the one-hot selection matrix of the staged cache update:
// sel[j, s] = 1 if src[j] == s else 0, (budget, capacity). Invocation = one entry;
// dispatch (ceil(capacity / 64), budget, 1).

struct Params {
    capacity: u32,
    budget: u32,
    kv_dim: u32,
    pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<u32>;         // (budget)
@group(0) @binding(1) var<storage, read_write> sel: array<f32>;   // (budget, capacity)
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    let j = gid.y;
    if s >= p.capacity || j >= p.budget {
        return;
    }
    sel[j * p.capacity + s] = select(0.0, 1.0, src[j] == s);
}
