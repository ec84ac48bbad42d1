// sample.wgsl: picks the next token from logits row 0 and writes it to tokens[0].
// temperature <= 0: argmax (ties to the lower id). Otherwise softmax(logits / T) restricted to
// the top_k largest logits (0 = all) and then to the smallest set of highest-probability tokens
// whose mass reaches top_p; a seeded uniform draw u(seed, step.counter) picks within it.
// Thresholds are found exactly by building the order key bit by bit (32 counting passes).
// One workgroup of 256; each invocation owns a contiguous chunk of the vocabulary.
// Dispatch (1, 1, 1).

struct Params {
    vocab: u32,
    top_k: u32,        // 0 = no top-k filter
    temperature: f32,  // <= 0: greedy
    top_p: f32,        // 1 = no top-p filter
    seed: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> logits: array<f32>;       // (1, vocab)
@group(0) @binding(1) var<storage, read_write> tokens: array<u32>; // [0] <- sampled id
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

const WG: u32 = 256u;
var<workgroup> redf: array<f32, 256>;
var<workgroup> redu: array<u32, 256>;
var<workgroup> found: u32;

fn sum_f(lid: u32, v: f32) -> f32 {
    redf[lid] = v;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if lid < w {
            redf[lid] += redf[lid + w];
        }
        workgroupBarrier();
    }
    let total = redf[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let chunk = (p.vocab + WG - 1u) / WG;
    let c0 = min(lid * chunk, p.vocab);
    let c1 = min(c0 + chunk, p.vocab);

    // Max logit and its lowest index.
    var best = c0;
    var best_v = MASKED;
    for (var i = c0; i < c1; i++) {
        if logits[i] > best_v {
            best_v = logits[i];
            best = i;
        }
    }
    redf[lid] = best_v;
    redu[lid] = select(0xffffffffu, best, c0 < c1);
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if lid < w {
            let ov = redf[lid + w];
            let oi = redu[lid + w];
            if ov > redf[lid] || (ov == redf[lid] && oi < redu[lid]) {
                redf[lid] = ov;
                redu[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let max_v = redf[0];
    let argmax = redu[0];
    workgroupBarrier();
    if p.temperature <= 0.0 || p.top_k == 1u {
        if lid == 0u {
            tokens[0] = argmax;
        }
        return;
    }
    let inv_t = 1.0 / p.temperature;

    // Top-k: the largest key t with count(key >= t) >= top_k.
    var thr = 0u;
    if p.top_k > 0u && p.top_k < p.vocab {
        for (var bit = 31i; bit >= 0i; bit--) {
            let cand = thr | (1u << u32(bit));
            var cnt = 0u;
            for (var i = c0; i < c1; i++) {
                cnt += select(0u, 1u, order_key(logits[i]) >= cand);
            }
            if wg_total_u32(lid, cnt) >= p.top_k {
                thr = cand;
            }
        }
    }

    // Top-p over the tokens kept so far: the largest key t with mass(key >= t) >= top_p · Z.
    if p.top_p < 1.0 {
        var z = 0.0;
        for (var i = c0; i < c1; i++) {
            if order_key(logits[i]) >= thr {
                z += exp((logits[i] - max_v) * inv_t);
            }
        }
        let target_mass = p.top_p * sum_f(lid, z);
        var thr_p = thr;
        for (var bit = 31i; bit >= 0i; bit--) {
            let cand = thr_p | (1u << u32(bit));
            var mass = 0.0;
            for (var i = c0; i < c1; i++) {
                if order_key(logits[i]) >= cand {
                    mass += exp((logits[i] - max_v) * inv_t);
                }
            }
            if sum_f(lid, mass) >= target_mass {
                thr_p = cand;
            }
        }
        thr = max(thr, thr_p);
    }

    // Draw: prefix sums of the kept mass over the chunks, in vocabulary order.
    var mine = 0.0;
    for (var i = c0; i < c1; i++) {
        if order_key(logits[i]) >= thr {
            mine += exp((logits[i] - max_v) * inv_t);
        }
    }
    redf[lid] = mine;
    if lid == 0u {
        found = argmax;
    }
    workgroupBarrier();
    if lid == 0u {
        // Exclusive prefix sums, in order (256 adds).
        var run = 0.0;
        for (var t = 0u; t < WG; t++) {
            let v = redf[t];
            redf[t] = run;
            run += v;
        }
        redu[0] = bitcast<u32>(run);
    }
    workgroupBarrier();
    let total = bitcast<f32>(redu[0]);
    let u = uniform01(p.seed, step.counter) * total;
    let start = redf[lid];
    if mine > 0.0 && u >= start && u < start + mine {
        var run = start;
        var pick = c1;
        for (var i = c0; i < c1; i++) {
            if order_key(logits[i]) >= thr {
                run += exp((logits[i] - max_v) * inv_t);
                pick = i;
                if u < run {
                    break;
                }
            }
        }
        found = pick;
    }
    workgroupBarrier();
    if lid == 0u {
        tokens[0] = found;
    }
}
