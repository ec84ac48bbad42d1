// key_score.wgsl: the key index's ranking, second half. From key_logits.wgsl's per-range
// softmaxes of the last new row r, each slot's probability under every query head, summed:
//   score[j] = scale Σ_h mass[r, h, j] · exp(m[h, c] - M[h]) / L[h]
// where c is slot j's range, M[h] the largest of the ranges' maxima and L[h] = Σ_c l[h, c]
// exp(m[h, c] - M[h]) (the row's softmax over every slot it sees); a range whose maximum is
// below exp(-60) of the largest counts as 0 (as key_logits.wgsl's small exponentials). Slots at
// or above step.n_slots score 0. Dispatch (ceil(capacity / 64), 1, 1).
// Entry points: `ranges`, a workgroup of 64 slots in one range (ranges are multiples of 64
// long) whose lanes first compute the factor of each head; `single`, for one range (p.chunks =
// 1), where the factor is 1 / L[h] and needs no barrier (on lavapipe the barrier's form cost
// 40 times as much).

struct Params {
    n_heads: u32,
    capacity: u32,
    chunks: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> mass: array<f32>;          // (rows, n_heads, capacity)
@group(0) @binding(1) var<storage, read> stats: array<vec2<f32>>;   // (rows, n_heads, chunks)
@group(0) @binding(2) var<storage, read_write> score: array<f32>;   // (capacity)
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

const WG: u32 = 64u;
// Query heads of at most 64 (checked where the pipeline is built).
var<workgroup> factor: array<f32, 64>;

// As key_logits.wgsl's chunk_len.
fn chunk_len(n: u32) -> u32 {
    return ((n + p.chunks - 1u) / p.chunks + 63u) / 64u * 64u;
}

@compute @workgroup_size(64)
fn ranges(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = step.n_new - 1u;
    let n = min(p.capacity, step.n_slots);
    let first = wid.x * WG;
    let chunk = first / chunk_len(n);
    if lid < p.n_heads && first < n {
        let st = (r * p.n_heads + lid) * p.chunks;
        var big = MASKED;
        for (var c = 0u; c < p.chunks; c++) {
            big = max(big, stats[st + c].x);
        }
        var total = 0.0;
        for (var c = 0u; c < p.chunks; c++) {
            let s = stats[st + c];
            // A range that saw no slot has l = 0 and weighs nothing.
            total += s.y * exp(max(s.x - big, -60.0));
        }
        let d = stats[st + chunk].x - big;
        factor[lid] = select(0.0, exp(max(d, -60.0)) / total, total > 0.0 && d > -60.0);
    }
    workgroupBarrier();
    let j = first + lid;
    if j >= p.capacity {
        return;
    }
    var s = 0.0;
    if j < n {
        for (var h = 0u; h < p.n_heads; h++) {
            s += mass[(r * p.n_heads + h) * p.capacity + j] * factor[h];
        }
    }
    score[j] = s * p.scale;
}

@compute @workgroup_size(64)
fn single(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = step.n_new - 1u;
    let n = min(p.capacity, step.n_slots);
    let j = gid.x;
    if j >= p.capacity {
        return;
    }
    var s = 0.0;
    if j < n {
        for (var h = 0u; h < p.n_heads; h++) {
            let total = stats[r * p.n_heads + h].y;
            s += select(0.0, mass[(r * p.n_heads + h) * p.capacity + j] / total, total > 0.0);
        }
    }
    score[j] = s * p.scale;
}
