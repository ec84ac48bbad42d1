// key_score.wgsl: the key index's ranking, second half. From key_logits.wgsl's logits of the
// last new row r (logits[h / GROUP, j, h % GROUP], a slot's GROUP heads of one KV head in G4
// vec4s) and its ranges' softmax statistics, each slot's probability under every query head,
// summed:
//   score[j] = scale Σ_h exp(logits[h / GROUP, j, h % GROUP] - M[h]) / L[h]
// where M[h] is the largest of the ranges' maxima m[h, c] and L[h] = Σ_c l[h, c] exp(m[h, c] -
// M[h]) (the row's softmax over every slot it sees); exponentials below e^-60 count as 0 (as in
// key_logits.wgsl), so masked slots score nothing. Slots at or above step.n_slots are free:
// their scores are left as they were (no choice reads them), so a long cache's workgroups beyond
// the slots in use return at once.
// Dispatch (ceil(capacity / 64), 1, 1) for `ranges`, (ceil(capacity / 256), 1, 1) for `single`,
// whose invocations take 4 slots each. Entry points: `ranges`, whose lanes first merge the
// ranges' statistics of each head (GPUs); `single`, reading each head's M and L from
// stats[p.merged + r · n_heads + h]: the statistics of one range (p.chunks = 1, p.merged = 0),
// or those `merge` wrote there (dispatch (1, 1, 1), a lane per head). On CPU devices a
// workgroup barrier is dear (on llvmpipe the `ranges` form took 2.4 ms a dispatch whatever the
// slots, against 0.1-0.4), so there the merge is a dispatch of its own, of the scan's lanes'
// statistics (key_logits.wgsl's LANE_STATS).

struct Params {
    n_heads: u32,
    capacity: u32,
    chunks: u32,
    scale: f32,
    merged: u32,  // where `single` reads the heads' statistics (vec2s into stats)
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> stats: array<vec2<f32>>;  // (rows, n_heads, chunks), then (rows, n_heads) merged
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<storage, read> logits: array<vec4<f32>>;  // (n_heads / GROUP, capacity, G4)
@group(0) @binding(4) var<storage, read_write> score: array<f32>;   // (capacity)

const WG: u32 = 64u;
const GROUP: u32 = 3u;  // query heads per KV head
const G4: u32 = 1u;     // vec4s of a slot's logits per KV head: ceil(GROUP / 4)
const N_KV: u32 = 3u;   // KV heads (n_heads / GROUP)
const SLOTS: u32 = 4u;  // slots per invocation of `single` (the heads' statistics read once for them)
// Each head's M and 1 / L (0 where it sees nothing), for query heads of at most 64 (checked
// where the pipeline is built).
var<workgroup> head_max: array<f32, 64>;
var<workgroup> head_inv: array<f32, 64>;

// exp(v - big) · inv, or 0 below e^-60.
fn prob(v: f32, big: f32, inv: f32) -> f32 {
    let d = v - big;
    return select(0.0, exp(max(d, -60.0)) * inv, d > -60.0);
}

// Head h's merged statistics (M, L) of row r.
fn merged_stats(r: u32, h: u32) -> vec2<f32> {
    let st = (r * p.n_heads + h) * p.chunks;
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
    return vec2<f32>(big, total);
}

@compute @workgroup_size(64)
fn merge(@builtin(local_invocation_index) lid: u32) {
    let r = step.n_new - 1u;
    if lid < p.n_heads {
        stats[p.merged + r * p.n_heads + lid] = merged_stats(r, lid);
    }
}

@compute @workgroup_size(64)
fn ranges(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = step.n_new - 1u;
    let n = min(p.capacity, step.n_slots);
    let first = wid.x * WG;
    if first >= n {
        return;
    }
    if lid < p.n_heads {
        let st = merged_stats(r, lid);
        head_max[lid] = st.x;
        head_inv[lid] = select(0.0, 1.0 / st.y, st.y > 0.0);
    }
    workgroupBarrier();
    let j = first + lid;
    if j >= n {
        return;
    }
    var s = 0.0;
    for (var g = 0u; g < p.n_heads / GROUP; g++) {
        // unroll v G4
        {
            let w = logits[(g * p.capacity + j) * G4 + {v}u];
            // unroll i 4
            if 4u * {v}u + {i}u < GROUP {
                let h = g * GROUP + 4u * {v}u + {i}u;
                s += prob(w[{i}u], head_max[h], head_inv[h]);
            }
            // end unroll
        }
        // end unroll
    }
    score[j] = s * p.scale;
}

@compute @workgroup_size(64)
fn single(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = step.n_new - 1u;
    let n = min(p.capacity, step.n_slots);
    let j0 = gid.x * SLOTS;
    if j0 >= n {
        return;
    }
    // Each head's M and 1 / L, read once for the invocation's slots (in variables of their own,
    // per KV head, vec4 and component; those beyond GROUP are read but not used).
    let sb = p.merged + r * p.n_heads;
    // unroll g N_KV
    // unroll v G4
    // unroll i 4
    let st{g}_{v}_{i} = stats[sb + min({g}u * GROUP + 4u * {v}u + {i}u, p.n_heads - 1u)];
    let inv{g}_{v}_{i} = select(0.0, 1.0 / st{g}_{v}_{i}.y, st{g}_{v}_{i}.y > 0.0);
    // end unroll
    // end unroll
    // end unroll
    for (var j = j0; j < min(j0 + SLOTS, n); j++) {
        var s = 0.0;
        // unroll g N_KV
        // unroll v G4
        {
            let w = logits[({g}u * p.capacity + j) * G4 + {v}u];
            // unroll i 4
            if 4u * {v}u + {i}u < GROUP {
                s += prob(w[{i}u], st{g}_{v}_{i}.x, inv{g}_{v}_{i});
            }
            // end unroll
        }
        // end unroll
        // end unroll
        score[j] = s * p.scale;
    }
}
