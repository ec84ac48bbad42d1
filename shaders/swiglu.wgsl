// swiglu.wgsl: gate[r, i] <- silu(gate[r, i]) · up[r, i], in place.
// Invocation = one element; dispatch (ceil(dim / 64), rows, 1).

struct Params {
    dim: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> gate: array<f32>;  // (rows, dim)
@group(0) @binding(1) var<storage, read> up: array<f32>;          // (rows, dim)
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.y >= step.n_rows || gid.x >= p.dim {
        return;
    }
    let i = gid.y * p.dim + gid.x;
    gate[i] = silu(gate[i]) * up[i];
}
