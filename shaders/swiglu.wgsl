// swiglu.wgsl: out[r, i] = act(gate[r, i]) · up[r, i] (act: SiLU, or GELU with ACT = 1), from the
// stacked product of gate and up,
// gate_up (rows, 2 dim): gate in columns 0 .. dim, up in dim .. 2 dim.
// Invocation = one element; dispatch (ceil(dim / 64), rows, 1).

struct Params {
    dim: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> gate_up: array<f32>;    // (rows, 2 dim)
@group(0) @binding(1) var<storage, read_write> out: array<f32>;  // (rows, dim)
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.y >= step.n_rows || gid.x >= p.dim {
        return;
    }
    let g = gid.y * 2u * p.dim + gid.x;
    out[gid.y * p.dim + gid.x] = gate_act(gate_up[g]) * gate_up[g + p.dim];
}
