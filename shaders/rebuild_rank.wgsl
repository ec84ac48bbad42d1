// rebuild_rank.wgsl: ADORE's score of every earlier token for the current one (t = n_seen - 1),
// cached or released, as one matrix-vector product over the stored controller keys:
// pos_score[i] = q · keys[i] / sqrt(d_c) + bias[min(t - i, max_distance)] for i < t, and
// MASKED for i >= t. rebuild_mask then masks the cached ones, leaving the rebuild candidates.
// Invocation = one position; dispatch (ceil(context / 64), 1, 1).

@group(0) @binding(0) var<storage, read> weights: array<f32>;          // packed controller weights
@group(0) @binding(1) var<storage, read> state: array<f32>;            // h (d_c), then q (d_c)
@group(0) @binding(2) var<storage, read> keys: array<f32>;             // (context, d_c)
@group(0) @binding(3) var<storage, read_write> pos_score: array<f32>;  // (context)
@group(0) @binding(4) var<uniform> p: ControllerParams;
@group(0) @binding(5) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= arrayLength(&pos_score) {
        return;
    }
    let t = step.n_seen - 1u;
    if i >= t {
        pos_score[i] = MASKED;
        return;
    }
    let d = p.d_c;
    var dot = 0.0;
    for (var k = 0u; k < d; k++) {
        dot += state[d + k] * keys[i * d + k];
    }
    pos_score[i] = dot / sqrt(f32(d)) + weights[p.off_bias + min(t - i, p.max_distance)];
}
