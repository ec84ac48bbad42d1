// key_logits.wgsl: the key index's ranking, first half. For the last new row r = n_new - 1 and
// every query head h, the short-key logit of each slot j below step.n_slots,
// s = scale · q[r, h] · k[h / group, j], over the slots the row sees (as attention.wgsl's
// visible: valid, not after the row's position, within the window); a slot it does not see
// scores MASKED. logits[h / GROUP, j, h % GROUP] = s: a slot's logits under the GROUP heads of
// one KV head side by side in G4 = ceil(GROUP / 4) vec4s, which a lane stores in G4 writes
// (llvmpipe writes, as it loads, a word per lane at a time). The slots are cut into p.chunks
// ranges of chunk_len(n) slots (a multiple of 64) and each range keeps its softmax's statistics,
// stats[r, h, chunk] = (m, Σ exp(s - m)) for the range's largest logit m; key_score.wgsl merges
// the ranges' statistics and turns the logits into probabilities, so no pass runs over every
// slot in one workgroup and this one reads each slot once.
//
// One workgroup of 64 per (GROUP query heads sharing a KV head, range): dispatch
// (n_heads / GROUP, 1, chunks). The workgroup's heads share each key read; a lane takes the
// slots j0 + lid, j0 + lid + 64, ... of its range, keeping a running maximum and a sum of
// exponentials relative to it (rescaled when the maximum grows, which is rare after the first
// slots), and the lanes' pairs are merged at the end; with LANE_STATS (CPU devices, where a
// workgroup barrier is dear) each lane's pair is written out and key_score.wgsl's `merge`
// merges them. Exponentials below e^-60 of the maximum
// count as 0, so that none is subnormal (CPUs compute those far more slowly). R4 = rank / 4,
// GROUP and G4 are set per pipeline. Short keys (KEYS) are f32, f16 pairs packed in a u32 (as
// pack2x16float writes them), or int8 (as pack4x8snorm writes them) times an f32 scale per key,
// the scales after all the keys; each KV head's keys together (a workgroup reads cache lines of
// its own), read in 16-byte words (the buffer padded to 16 bytes): with f16 and R4 even, each
// word holds two vec4s of one head's key (R8 = R4 / 2 words); with int8 and R4 a multiple of 4,
// four (R16 = R4 / 4 words); else one vec4 is read at a time (RN = R4). llvmpipe loads a word
// per lane at a time, so fewer, wider loads are what it reads fastest.

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    rank: u32,
    scale: f32,
    capacity: u32,  // slots in the cache
    chunks: u32,    // slot ranges (workgroups along z)
    window: u32,    // sliding window: keys at pos - window or before are not seen (0: none)
    pad: u32,
}

@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;              // (rows, n_heads, rank)
@group(0) @binding(1) var<storage, read> k_cache: array<vec4<u32>>;        // (n_kv_heads, capacity, rank), padded
@group(0) @binding(2) var<storage, read> slot_pos: array<u32>;             // (capacity) position or INVALID
@group(0) @binding(3) var<storage, read> positions: array<u32>;            // (rows)
@group(0) @binding(4) var<storage, read_write> logits: array<vec4<f32>>;   // (n_kv_heads, capacity, G4)
@group(0) @binding(5) var<storage, read_write> stats: array<vec2<f32>>;    // (rows, n_heads, chunks) or (rows, n_heads, chunks, WG)
@group(0) @binding(6) var<uniform> p: Params;
@group(0) @binding(7) var<uniform> step: Step;

const R4: u32 = 4u;       // rank / 4
const RN: u32 = 0u;       // vec4s read one at a time: R4, or 0 where R8 or R16 read them
const R8: u32 = 2u;       // f16 words holding two vec4s each: R4 / 2, or 0
const R16: u32 = 0u;      // int8 words holding four vec4s each: R4 / 4, or 0
const GROUP: u32 = 3u;    // query heads per workgroup (of those sharing one KV head)
const G4: u32 = 1u;       // vec4s of a slot's logits: ceil(GROUP / 4)
const KEYS: u32 = 1u;     // short keys: 0 f32, 1 f16, 2 int8 with a scale per key
const LANE_STATS: u32 = 0u;  // 1: statistics per lane, not per range (CPU devices)
const WG: u32 = 64u;
const INVALID: u32 = 0xffffffffu;

var<workgroup> lanes: array<f32, 64>;

// The vec4 `e` of the short keys (int8: unscaled, as 4-byte word e).
fn key4(e: u32) -> vec4<f32> {
    if KEYS == 1u {
        let w = k_cache[e >> 1u];
        let h = select(w.xy, w.zw, (e & 1u) != 0u);
        return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
    }
    if KEYS == 2u {
        return unpack4x8snorm(k_cache[e >> 2u][e & 3u]);
    }
    return bitcast<vec4<f32>>(k_cache[e]);
}

// The int8 scale of key j of KV head kvh (after every key's R4 words).
fn key_scale(kvh: u32, j: u32) -> f32 {
    let e = (p.n_kv_heads * R4 + kvh) * p.capacity + j;
    return bitcast<f32>(k_cache[e >> 2u][e & 3u]);
}

// x · e^d, or 0 where d ≤ -60 (d ≤ 0 here).
fn scaled(x: f32, d: f32) -> f32 {
    return select(0.0, x * exp(max(d, -60.0)), d > -60.0);
}

fn visible(sp: u32, pos: u32) -> bool {
    return sp != INVALID && sp <= pos && (p.window == 0u || pos - sp < p.window);
}

// Slots per range for n slots in use: the ranges' share, rounded up to a multiple of 64 (whole
// rounds of the workgroup's lanes).
fn chunk_len(n: u32) -> u32 {
    return ((n + p.chunks - 1u) / p.chunks + 63u) / 64u * 64u;
}

// The workgroup's total (op 0: max, 1: sum) of every lane's v (called by every invocation).
fn reduce(lid: u32, v: f32, op: u32) -> f32 {
    lanes[lid] = v;
    workgroupBarrier();
    var t = lanes[0];
    for (var i = 1u; i < WG; i++) {
        if op == 0u {
            t = max(t, lanes[i]);
        } else {
            t += lanes[i];
        }
    }
    workgroupBarrier();
    return t;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h0 = wid.x * GROUP;
    let kvh = h0 / (p.n_heads / p.n_kv_heads);
    let chunk = wid.z;
    let r = step.n_new - 1u;
    let n = min(p.capacity, step.n_slots);
    let len = chunk_len(n);
    let j0 = min(chunk * len, n);
    let j1 = min(j0 + len, n);
    let pos = positions[r];
    // The KV head's keys, slot after slot (each workgroup reads lines of its own).
    let kb0 = kvh * p.capacity * R4;
    // The GROUP heads' queries, running maxima and sums in variables of their own (written out
    // per head and vector: see `unroll` in src/shaders.rs).
    let qb = (r * p.n_heads + h0) * R4;
    // unroll g GROUP
    // unroll c RN
    let q{g}_{c} = q[qb + {g}u * R4 + {c}u] * p.scale;
    // end unroll
    // unroll c R8
    let qx{g}_{c} = q[qb + {g}u * R4 + 2u * {c}u] * p.scale;
    let qy{g}_{c} = q[qb + {g}u * R4 + 2u * {c}u + 1u] * p.scale;
    // end unroll
    // unroll c R16
    let qa{g}_{c} = q[qb + {g}u * R4 + 4u * {c}u] * p.scale;
    let qb{g}_{c} = q[qb + {g}u * R4 + 4u * {c}u + 1u] * p.scale;
    let qc{g}_{c} = q[qb + {g}u * R4 + 4u * {c}u + 2u] * p.scale;
    let qd{g}_{c} = q[qb + {g}u * R4 + 4u * {c}u + 3u] * p.scale;
    // end unroll
    var m{g} = MASKED;
    var l{g} = 0.0;
    // end unroll
    let lb = kvh * p.capacity * G4;
    for (var j = j0 + lid; j < j1; j += WG) {
        let seen = visible(slot_pos[j], pos);
        var out: array<vec4<f32>, G4>;
        // unroll g GROUP
        var s{g} = MASKED;
        // end unroll
        if seen {
            let kb = kb0 + j * R4;
            // unroll c RN
            let k{c} = key4(kb + {c}u);
            // end unroll
            // unroll c R8
            let w{c} = k_cache[(kb >> 1u) + {c}u];
            let kx{c} = vec4<f32>(unpack2x16float(w{c}.x), unpack2x16float(w{c}.y));
            let ky{c} = vec4<f32>(unpack2x16float(w{c}.z), unpack2x16float(w{c}.w));
            // end unroll
            // unroll c R16
            let b{c} = k_cache[(kb >> 2u) + {c}u];
            // end unroll
            var sc = 1.0;
            if KEYS == 2u {
                sc = key_scale(kvh, j);
            }
            // unroll g GROUP
            s{g} = 0.0;
            // unroll c RN
            s{g} += dot(q{g}_{c}, k{c});
            // end unroll
            // unroll c R8
            s{g} += dot(qx{g}_{c}, kx{c});
            s{g} += dot(qy{g}_{c}, ky{c});
            // end unroll
            // unroll c R16
            s{g} += dot(qa{g}_{c}, unpack4x8snorm(b{c}.x)) + dot(qb{g}_{c}, unpack4x8snorm(b{c}.y));
            s{g} += dot(qc{g}_{c}, unpack4x8snorm(b{c}.z)) + dot(qd{g}_{c}, unpack4x8snorm(b{c}.w));
            // end unroll
            s{g} *= sc;
            // end unroll
        }
        // unroll g GROUP
        out[{g}u / 4u][{g}u % 4u] = s{g};
        // end unroll
        // unroll v G4
        logits[lb + j * G4 + {v}u] = out[{v}u];
        // end unroll
        // unroll g GROUP
        if s{g} > m{g} {
            l{g} = scaled(l{g}, m{g} - s{g});
            m{g} = s{g};
        }
        l{g} += select(0.0, scaled(1.0, s{g} - m{g}), seen);
        // end unroll
    }
    // With LANE_STATS each lane's own statistics, a range of WG of them (key_score.wgsl's
    // `merge` merges them: no barrier here); else the range's: the lanes' largest, and their
    // sums relative to it.
    if LANE_STATS != 0u {
        // unroll g GROUP
        stats[((r * p.n_heads + h0 + {g}u) * p.chunks + chunk) * WG + lid] = vec2<f32>(m{g}, l{g});
        // end unroll
        return;
    }
    // unroll g GROUP
    {
        let big = reduce(lid, m{g}, 0u);
        let total = reduce(lid, scaled(l{g}, m{g} - big), 1u);
        if lid == 0u {
            stats[(r * p.n_heads + h0 + {g}u) * p.chunks + chunk] = vec2<f32>(big, total);
        }
    }
    // end unroll
}
