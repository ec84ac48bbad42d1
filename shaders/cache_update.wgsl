// cache_update.wgsl: the release decision of score-driven policies, on the GPU. Among the valid
// slots, the `sinks` first and `recent` last positions (of step.n_seen) are protected; of the
// others, the budget - protected with the highest score stay, ties going to the lower position;
// the rest are freed (slot_pos = INVALID). Nothing happens while the cache is within budget.
// With in_flight, the step's new rows (positions >= n_seen - n_new) stay and do not count
// against the budget (the oracle selects what those rows attend to).
// The k-th score and the tie cut are found exactly, bit by bit (32 + 32 counting passes).
// One workgroup of 256, each invocation owning a contiguous range of slots. Dispatch (1, 1, 1).

struct Params {
    capacity: u32,
    budget: u32,
    sinks: u32,
    recent: u32,
    in_flight: u32,  // 1: this step's new rows stay outside the budget
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> slot_pos: array<u32>;  // (capacity) position or INVALID
@group(0) @binding(1) var<storage, read> score: array<f32>;           // (capacity)
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

const WG: u32 = 256u;
const INVALID: u32 = 0xffffffffu;
fn protected_pos(pos: u32) -> bool {
    return pos < p.sinks || pos + p.recent >= step.n_seen;
}

// 0: free (or in flight), 1: protected, 2: candidate for release.
fn kind(j: u32) -> u32 {
    let pos = slot_pos[j];
    if pos == INVALID || (p.in_flight != 0u && pos + step.n_new >= step.n_seen) {
        return 0u;
    }
    return select(2u, 1u, protected_pos(pos));
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let chunk = (p.capacity + WG - 1u) / WG;
    let c0 = min(lid * chunk, p.capacity);
    let c1 = min(c0 + chunk, p.capacity);
    var n_valid = 0u;
    var n_prot = 0u;
    for (var j = c0; j < c1; j++) {
        let k = kind(j);
        n_valid += select(0u, 1u, k != 0u);
        n_prot += select(0u, 1u, k == 1u);
    }
    let valid = wg_total_u32(lid, n_valid);
    let prot = wg_total_u32(lid, n_prot);
    if valid <= p.budget {
        return;
    }
    let keep = p.budget - min(prot, p.budget);  // candidates that stay

    // The largest score key t with count(candidate, key >= t) >= keep.
    var thr = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
        let cand = thr | (1u << u32(bit));
        var cnt = 0u;
        for (var j = c0; j < c1; j++) {
            cnt += select(0u, 1u, kind(j) == 2u && order_key(score[j]) >= cand);
        }
        if wg_total_u32(lid, cnt) >= keep {
            thr = cand;
        }
    }
    var above = 0u;
    for (var j = c0; j < c1; j++) {
        above += select(0u, 1u, kind(j) == 2u && order_key(score[j]) > thr);
    }
    let n_above = wg_total_u32(lid, above);
    let need = keep - min(n_above, keep);  // tied candidates that stay, lowest positions first
    // The largest position cut c with count(tied, pos < c) <= need.
    var cut = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
        let cand = cut | (1u << u32(bit));
        var cnt = 0u;
        for (var j = c0; j < c1; j++) {
            cnt += select(0u, 1u, kind(j) == 2u && order_key(score[j]) == thr && slot_pos[j] < cand);
        }
        if wg_total_u32(lid, cnt) <= need {
            cut = cand;
        }
    }
    for (var j = c0; j < c1; j++) {
        if kind(j) == 2u {
            let key = order_key(score[j]);
            let stays = keep > 0u && (key > thr || (key == thr && slot_pos[j] < cut));
            if !stays {
                slot_pos[j] = INVALID;
            }
        }
    }
}
