// topk.wgsl: exact top-k selection over n scores, ties broken toward the lower index:
// selected[i] = 1 for the k largest scores[i] (and 0 otherwise); indices[0..k) lists them in
// ascending index order. The k-th largest value is found exactly by building its order key
// bit by bit (32 counting passes); then, of the scores equal to it, the lowest indices fill
// the remaining places. With `bounded`, only the first min(n, step.n_seen) scores take part
// (the rest are left alone): the positions seen so far. One workgroup of 256, each invocation
// owning a contiguous chunk. Dispatch (1, 1, 1).

struct Params {
    n: u32,  // number of scores
    k: u32,  // how many to select (k >= n selects all)
    bounded: u32,  // 1: n = min(n, step.n_seen)
    pad: u32,
}

@group(0) @binding(0) var<storage, read> scores: array<f32>;         // (n)
@group(0) @binding(1) var<storage, read_write> selected: array<u32>; // (n) 1 = selected
@group(0) @binding(2) var<storage, read_write> indices: array<u32>;  // (k) selected indices, ascending
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<uniform> step: Step;

const WG: u32 = 256u;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n = select(p.n, min(p.n, step.n_seen), p.bounded != 0u);
    let chunk = (n + WG - 1u) / WG;
    let c0 = min(lid * chunk, n);
    let c1 = min(c0 + chunk, n);
    let k = min(p.k, n);

    // The largest key t with count(key >= t) >= k (0 when k = 0 keeps nothing below).
    var thr = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
        let cand = thr | (1u << u32(bit));
        var cnt = 0u;
        for (var i = c0; i < c1; i++) {
            cnt += select(0u, 1u, order_key(scores[i]) >= cand);
        }
        if wg_total_u32(lid, cnt) >= k {
            thr = cand;
        }
    }
    // Scores above the threshold are all selected; ties fill what is left, lowest index first.
    var above = 0u;
    var ties = 0u;
    for (var i = c0; i < c1; i++) {
        let key = order_key(scores[i]);
        above += select(0u, 1u, key > thr);
        ties += select(0u, 1u, key == thr);
    }
    let n_above = wg_total_u32(lid, above);
    let tie_room = select(k - n_above, 0u, k == 0u || n_above >= k);
    var tie_seen = wg_prefix_u32(lid, ties);
    var mine = 0u;
    for (var i = c0; i < c1; i++) {
        let key = order_key(scores[i]);
        var take = key > thr;
        if key == thr {
            take = tie_seen < tie_room;
            tie_seen += 1u;
        }
        take = take && k > 0u;
        selected[i] = select(0u, 1u, take);
        mine += select(0u, 1u, take);
    }
    // Compact the selected indices in ascending order.
    var out = wg_prefix_u32(lid, mine);
    for (var i = c0; i < c1; i++) {
        if selected[i] != 0u {
            indices[out] = i;
            out += 1u;
        }
    }
}
