// quest_score.wgsl: Quest's page scores for one layer: each page's upper bound on the last new
// row's attention logits (Σ_d max(q_d · min_d, q_d · max_d)), summed over the query heads, written
// to every slot of the page, for cache_update to choose whole pages by:
//   score[j] = Σ_h Σ_d max(q[r, h, d] · bounds[j / PAGE, 0, kvh(h) d], q[r, h, d] · bounds[j / PAGE, 1, kvh(h) d])
// with r = step.n_new - 1. Pages past the slots in use are left alone.
// Invocation = one page; dispatch (ceil(pages / 64), 1, 1).

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    capacity: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;              // (rows, n_heads, head_dim), after RoPE
@group(0) @binding(1) var<storage, read> bounds: array<f32>;         // (pages, 2, kv_dim)
@group(0) @binding(2) var<storage, read_write> score: array<f32>;    // (capacity)
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

const PAGE: u32 = 16u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let page = gid.x;
    if page * PAGE >= min(p.capacity, step.n_slots) {
        return;
    }
    let kv_dim = p.n_kv_heads * p.head_dim;
    let group = p.n_heads / p.n_kv_heads;
    let r = step.n_new - 1u;
    let lo = page * 2u * kv_dim;
    let hi = lo + kv_dim;
    var s = 0.0;
    for (var h = 0u; h < p.n_heads; h++) {
        let qb = (r * p.n_heads + h) * p.head_dim;
        let kb = (h / group) * p.head_dim;
        for (var d = 0u; d < p.head_dim; d++) {
            let qd = q[qb + d];
            s += max(qd * bounds[lo + kb + d], qd * bounds[hi + kb + d]);
        }
    }
    for (var j = page * PAGE; j < min(page * PAGE + PAGE, p.capacity); j++) {
        score[j] = s;
    }
}
