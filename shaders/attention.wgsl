// attention.wgsl: grouped-query attention of each row over the slot-based KV cache:
// out[r, h] = Σ_j softmax_j(q[r, h] · k[j, h / group] · scale) v[j, h / group], over the slots j
// with slot_pos[j] valid and slot_pos[j] <= positions[r] (causal by original position), and
// within p.window positions of it where the layer has a sliding window.
//
// One workgroup of WG lanes (64, or 8 on CPU devices) per (row, HPW query heads sharing one KV
// head); dispatch (n_heads / HPW, rows, 1). HD4 = head_dim / 4, HPW and WG are set per pipeline,
// HPW * HD4 <= 64. Each lane takes the slots lid, lid + WG, ... and keeps its own online softmax
// (running max, sum and weighted V) for each of its HPW heads, so a K or V row is read once for
// all the heads that share it and the scan needs no barrier; the WG partial softmaxes are merged
// at the end through workgroup memory.
// With listed, the slots visited are list[1 ..= list[0]] (written by cache_update.wgsl's choose
// and narrow: the valid slots of a long table with few of them) instead of 0 .. step.n_slots.
// With write_mass, a last pass stores each slot's attention probability for this row and head in
// mass[r, h, slot] (1: overwrite, 2: add, to sum over layers), for the release policies, for the
// slots below step.n_slots (those above are free and keep what they held).
// K and V are f32, or with KV_HALF f16 (pairs packed in a u32, as pack2x16float writes them).
// With VALUES = 0 only the probabilities are wanted: V is not read and out is not written.

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,        // usually 1 / sqrt(head_dim)
    capacity: u32,     // slots in the cache (row stride of mass)
    write_mass: u32,   // 0: no mass, 1: mass = p, 2: mass += p
    listed: u32,       // 1: visit the slots in list
    window: u32,       // sliding window: keys at pos - window or before are not seen (0: none)
}

@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;          // (rows, n_heads, head_dim)
@group(0) @binding(1) var<storage, read> k_cache: array<vec2<u32>>;    // (capacity, n_kv_heads, head_dim), see key4
@group(0) @binding(2) var<storage, read> v_cache: array<vec2<u32>>;    // (capacity, n_kv_heads, head_dim), or unused
@group(0) @binding(3) var<storage, read> slot_pos: array<u32>;         // (capacity) position or 0xffffffff
@group(0) @binding(4) var<storage, read> positions: array<u32>;        // (rows)
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;  // (rows, n_heads, head_dim)
@group(0) @binding(6) var<uniform> p: Params;
@group(0) @binding(7) var<uniform> step: Step;
@group(0) @binding(8) var<storage, read_write> mass: array<f32>;       // (rows, n_heads, capacity) or unused
@group(0) @binding(9) var<storage, read> list: array<u32>;             // (1 + capacity) count, slots; or unused

const HD4: u32 = 16u;  // head_dim / 4
const HPW: u32 = 1u;   // query heads per workgroup
const VALUES: u32 = 1u;   // 0: probabilities only
const WG: u32 = 64u;  // lanes: 8 to 64, at least ROUND
const INVALID: u32 = 0xffffffffu;
// Merging: 8 vec4 of every lane's accumulator per round.
const ROUND: u32 = 8u;

var<workgroup> lane_m: array<f32, 64>;
var<workgroup> lane_l: array<f32, 64>;
var<workgroup> lane_acc: array<vec4<f32>, 512>;  // (ROUND, 64)
var<workgroup> head_m: array<f32, HPW>;
var<workgroup> head_l: array<f32, HPW>;

// Whether the key at position sp (INVALID: a free slot) is seen by a query at pos.
fn visible(sp: u32, pos: u32) -> bool {
    return sp != INVALID && sp <= pos && (p.window == 0u || pos - sp < p.window);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h0 = wid.x * HPW;
    let r = wid.y;
    if r >= step.n_rows {
        return;
    }
    let kvh = h0 / (p.n_heads / p.n_kv_heads);
    let kv4 = p.n_kv_heads * HD4;
    let pos = positions[r];
    var qv: array<vec4<f32>, HPW * HD4>;
    for (var i = 0u; i < HPW * HD4; i++) {
        qv[i] = q[(r * p.n_heads + h0) * HD4 + i] * p.scale;
    }
    var m: array<f32, HPW>;
    var l: array<f32, HPW>;
    var acc: array<vec4<f32>, HPW * HD4>;
    for (var g = 0u; g < HPW; g++) {
        m[g] = MASKED;
        l[g] = 0.0;
    }
    for (var i = 0u; i < HPW * HD4; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    var n = step.n_slots;
    if p.listed != 0u {
        n = list[0];
    }
    for (var t = lid; t < n; t += WG) {
        var j = t;
        if p.listed != 0u {
            j = list[1u + t];
        }
        let sp = slot_pos[j];
        if !visible(sp, pos) {
            continue;
        }
        let kb = j * kv4 + kvh * HD4;
        var s: array<f32, HPW>;
        for (var g = 0u; g < HPW; g++) {
            s[g] = 0.0;
        }
        for (var c = 0u; c < HD4; c++) {
            let kc = key4(kb + c);
            for (var g = 0u; g < HPW; g++) {
                s[g] += dot(qv[g * HD4 + c], kc);
            }
        }
        var alpha: array<f32, HPW>;
        var w: array<f32, HPW>;
        for (var g = 0u; g < HPW; g++) {
            let m_new = max(m[g], s[g]);
            alpha[g] = exp(m[g] - m_new);
            w[g] = exp(s[g] - m_new);
            l[g] = l[g] * alpha[g] + w[g];
            m[g] = m_new;
        }
        if VALUES != 0u {
            for (var c = 0u; c < HD4; c++) {
                let vc = value4(kb + c);
                for (var g = 0u; g < HPW; g++) {
                    acc[g * HD4 + c] = acc[g * HD4 + c] * alpha[g] + w[g] * vc;
                }
            }
        }
    }

    // Merge the lanes' softmaxes, head by head.
    for (var g = 0u; g < HPW; g++) {
        lane_m[lid] = m[g];
        workgroupBarrier();
        var big = MASKED;
        for (var t = 0u; t < WG; t++) {
            big = max(big, lane_m[t]);
        }
        // Lanes that saw no slot have l = 0 and weigh nothing.
        let f = exp(m[g] - big);
        lane_l[lid] = l[g] * f;
        workgroupBarrier();
        var total_l = 0.0;
        for (var t = 0u; t < WG; t++) {
            total_l += lane_l[t];
        }
        if lid == 0u {
            head_m[g] = big;
            head_l[g] = total_l;
        }
        let o = (r * p.n_heads + h0 + g) * HD4;
        for (var c0 = 0u; c0 < select(0u, HD4, VALUES != 0u); c0 += ROUND) {
            for (var cc = 0u; cc < ROUND; cc++) {
                if c0 + cc < HD4 {
                    lane_acc[cc * WG + lid] = acc[g * HD4 + c0 + cc] * f;
                }
            }
            workgroupBarrier();
            if lid < ROUND && c0 + lid < HD4 {
                var sum = vec4<f32>(0.0);
                for (var t = 0u; t < WG; t++) {
                    sum += lane_acc[lid * WG + t];
                }
                out[o + c0 + lid] = select(vec4<f32>(0.0), sum / total_l, total_l > 0.0);
            }
            workgroupBarrier();
        }
    }

    if p.write_mass != 0u {
        workgroupBarrier();
        for (var g = 0u; g < HPW; g++) {
            let big = head_m[g];
            let total_l = head_l[g];
            let base = (r * p.n_heads + h0 + g) * p.capacity;
            // Slots from step.n_slots up are free: their probabilities are left as they were.
            for (var j = lid; j < min(p.capacity, step.n_slots); j += WG) {
                var prob = 0.0;
                if total_l > 0.0 {
                    let sp = slot_pos[j];
                    if visible(sp, pos) {
                        let kb = j * kv4 + kvh * HD4;
                        var s = 0.0;
                        for (var c = 0u; c < HD4; c++) {
                            s += dot(qv[g * HD4 + c], key4(kb + c));
                        }
                        prob = exp(s - big) / total_l;
                    }
                }
                if p.write_mass == 2u {
                    mass[base + j] += prob;
                } else {
                    mass[base + j] = prob;
                }
            }
        }
    }
}
