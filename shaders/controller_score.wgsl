// controller_score.wgsl: the ADORE score of every cached token for the current query:
// score[j] = q · keys[pos_j] / sqrt(d_c) + bias[min(t - pos_j, max_distance)], t = step.n_seen - 1,
// for each valid slot j (0 for free slots). Invocation = one slot; dispatch (ceil(capacity / 64), 1, 1).

@group(0) @binding(0) var<storage, read> weights: array<f32>;       // packed controller weights
@group(0) @binding(1) var<storage, read> state: array<f32>;         // h (d_c), then q (d_c)
@group(0) @binding(2) var<storage, read> keys: array<f32>;          // (context, d_c)
@group(0) @binding(3) var<storage, read> slot_pos: array<u32>;      // (capacity)
@group(0) @binding(4) var<storage, read_write> score: array<f32>;   // (capacity)
@group(0) @binding(5) var<uniform> p: ControllerParams;
@group(0) @binding(6) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= p.capacity {
        return;
    }
    let pos = slot_pos[j];
    if pos == 0xffffffffu {
        score[j] = 0.0;
        return;
    }
    let d = p.d_c;
    var dot = 0.0;
    for (var k = 0u; k < d; k++) {
        dot += state[d + k] * keys[pos * d + k];
    }
    let t = step.n_seen - 1u;
    let dist = min(t - min(pos, t), p.max_distance);
    score[j] = dot / sqrt(f32(d)) + weights[p.off_bias + dist];
}
