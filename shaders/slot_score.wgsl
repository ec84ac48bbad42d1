// slot_score.wgsl: per-slot attention mass for the release policies, from attention's
// probabilities summed over layers, mass (rows, n_heads, capacity):
//   accumulate (H2O): score[j] = (j written this step ? 0 : score[j]) + scale Σ_r Σ_h mass[r, h, j]
//   current (TOVA):   score[j] = scale Σ_h mass[last new row, h, j]
// scale = 1 / (n_heads · layers). Invocation = one slot; dispatch (ceil(capacity / 64), 1, 1).

struct Params {
    capacity: u32,
    n_heads: u32,
    accumulate: u32,  // 1: H2O, 0: TOVA
    scale: f32,
}

@group(0) @binding(0) var<storage, read> mass: array<f32>;         // (rows, n_heads, capacity)
@group(0) @binding(1) var<storage, read> slots: array<u32>;        // (rows) slots written this step
@group(0) @binding(2) var<storage, read_write> score: array<f32>;  // (capacity)
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= p.capacity {
        return;
    }
    var first = 0u;
    if p.accumulate == 0u {
        first = step.n_new - 1u;
    }
    var s = 0.0;
    for (var r = first; r < step.n_rows; r++) {
        for (var h = 0u; h < p.n_heads; h++) {
            s += mass[(r * p.n_heads + h) * p.capacity + j];
        }
    }
    s *= p.scale;
    if p.accumulate != 0u {
        var old = score[j];
        for (var r = 0u; r < step.n_rows; r++) {
            if slots[r] == j {
                old = 0.0;
            }
        }
        s += old;
    }
    score[j] = s;
}
