// key_score.wgsl: the key index's ranking, second half. From key_logits.wgsl's logits of the
// last new row r and its ranges' softmax statistics, each slot's probability under every query
// head, summed:
//   score[j] = scale Σ_h exp(mass[r, h, j] - M[h]) / L[h]
// where M[h] is the largest of the ranges' maxima m[h, c] and L[h] = Σ_c l[h, c] exp(m[h, c] -
// M[h]) (the row's softmax over every slot it sees); exponentials below e^-60 count as 0 (as in
// key_logits.wgsl), so masked slots score nothing. Slots at or above step.n_slots score 0.
// Dispatch (ceil(capacity / 64), 1, 1). Entry points: `ranges`, whose lanes first merge the
// ranges' statistics of each head; `single`, for one range (p.chunks = 1), where the statistics
// are M and L already and no barrier is needed (on lavapipe the barrier's form cost 40 times as
// much).

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
// Each head's M and 1 / L (0 where it sees nothing), for query heads of at most 64 (checked
// where the pipeline is built).
var<workgroup> head_max: array<f32, 64>;
var<workgroup> head_inv: array<f32, 64>;

// exp(v - big) · inv, or 0 below e^-60.
fn prob(v: f32, big: f32, inv: f32) -> f32 {
    let d = v - big;
    return select(0.0, exp(max(d, -60.0)) * inv, d > -60.0);
}

@compute @workgroup_size(64)
fn ranges(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = step.n_new - 1u;
    let n = min(p.capacity, step.n_slots);
    let first = wid.x * WG;
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
        head_max[lid] = big;
        head_inv[lid] = select(0.0, 1.0 / total, total > 0.0);
    }
    workgroupBarrier();
    let j = first + lid;
    if j >= p.capacity {
        return;
    }
    var s = 0.0;
    if j < n {
        for (var h = 0u; h < p.n_heads; h++) {
            s += prob(mass[(r * p.n_heads + h) * p.capacity + j], head_max[h], head_inv[h]);
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
            let st = stats[r * p.n_heads + h];
            s += prob(mass[(r * p.n_heads + h) * p.capacity + j], st.x, select(0.0, 1.0 / st.y, st.y > 0.0));
        }
    }
    score[j] = s * p.scale;
}
