// attention.wgsl: grouped-query attention of each row over the slot-based KV cache:
// out[r, h] = Σ_j softmax_j(q[r, h] · k[j, h / group] · scale) v[j, h / group], over the slots j
// with slot_pos[j] valid and slot_pos[j] <= positions[r] (causal by original position), and
// within p.window positions of it where the layer has a sliding window.
//
// One workgroup of 64 per (RPW consecutive rows, HPW query heads sharing one KV head); dispatch
// (n_heads / HPW, ceil(rows / RPW), 1). HD4 = head_dim / 4, HPW and RPW are set per pipeline
// (GPUs: RPW = 1 and HPW * HD4 <= 64, the lane's registers). Each lane takes the slots lid,
// lid + 64, ... and keeps its own online softmax (running max, sum and weighted V) for each of
// its RPW x HPW (row, head) pairs, so a K or V row is read once for all the heads that share it
// and all the rows of the workgroup (prompt rows on CPU devices, where every lane's load costs
// as much as its arithmetic), and the scan needs no barrier; the 64 partial softmaxes are
// merged at the end through workgroup memory. The loops over a lane's pairs and vectors are
// unrolled (src/shaders.rs, `unroll`), so that every index into its arrays is a constant.
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
const RPW: u32 = 1u;   // rows per workgroup
const NQ: u32 = 1u;    // RPW * HPW (set with them): (row, head) pairs, pair g is row g / HPW, head g % HPW
const VALUES: u32 = 1u;   // 0: probabilities only
const WG: u32 = 64u;
const INVALID: u32 = 0xffffffffu;
// Merging: 8 vec4 of every lane's accumulator per round.
const ROUND: u32 = 8u;

var<workgroup> lane_m: array<f32, 64>;
var<workgroup> lane_l: array<f32, 64>;
var<workgroup> lane_acc: array<vec4<f32>, 512>;  // (ROUND, 64)
var<workgroup> pair_m: array<f32, NQ>;
var<workgroup> pair_l: array<f32, NQ>;

// Whether the key at position sp (INVALID: a free slot) is seen by a query at pos.
fn visible(sp: u32, pos: u32) -> bool {
    return sp != INVALID && sp <= pos && (p.window == 0u || pos - sp < p.window);
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h0 = wid.x * HPW;
    let r0 = wid.y * RPW;
    if r0 >= step.n_rows {
        return;
    }
    let kvh = h0 / (p.n_heads / p.n_kv_heads);
    let kv4 = p.n_kv_heads * HD4;
    // Rows past the step's last repeat it (same work, nothing written).
    var pos: array<u32, RPW>;
    // unroll ur RPW
    pos[ur] = positions[min(r0 + ur, step.n_rows - 1u)];
    // end unroll
    var qv: array<vec4<f32>, NQ * HD4>;
    var m: array<f32, NQ>;
    var l: array<f32, NQ>;
    var acc: array<vec4<f32>, NQ * HD4>;
    // unroll ug NQ
    {
        let qb = (min(r0 + ug / HPW, step.n_rows - 1u) * p.n_heads + h0 + ug % HPW) * HD4;
        // unroll uc HD4
        qv[ug * HD4 + uc] = q[qb + uc] * p.scale;
        acc[ug * HD4 + uc] = vec4<f32>(0.0);
        // end unroll
        m[ug] = MASKED;
        l[ug] = 0.0;
    }
    // end unroll

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
        var seen: array<bool, RPW>;
        var any = false;
        // unroll ur RPW
        seen[ur] = visible(sp, pos[ur]);
        any = any || seen[ur];
        // end unroll
        if !any {
            continue;
        }
        let kb = j * kv4 + kvh * HD4;
        var s: array<f32, NQ>;
        // unroll ug NQ
        s[ug] = 0.0;
        // end unroll
        // unroll uc HD4
        {
            let kc = key4(kb + uc);
            // unroll ug NQ
            s[ug] += dot(qv[ug * HD4 + uc], kc);
            // end unroll
        }
        // end unroll
        // One exponential per pair: the new score either raises the running max (the old sum
        // scales by exp(m - s), the new weight is 1) or not (scale 1, weight exp(s - m)).
        var alpha: array<f32, NQ>;
        var w: array<f32, NQ>;
        // unroll ug NQ
        {
            let d = s[ug] - m[ug];
            let e = exp(-abs(d));
            let up = d > 0.0;
            let on = seen[ug / HPW];
            alpha[ug] = select(1.0, select(1.0, e, up), on);
            w[ug] = select(0.0, select(e, 1.0, up), on);
            m[ug] = select(m[ug], s[ug], on && up);
            l[ug] = l[ug] * alpha[ug] + w[ug];
        }
        // end unroll
        if VALUES != 0u {
            // unroll uc HD4
            {
                let vc = value4(kb + uc);
                // unroll ug NQ
                acc[ug * HD4 + uc] = acc[ug * HD4 + uc] * alpha[ug] + w[ug] * vc;
                // end unroll
            }
            // end unroll
        }
    }

    // Merge the lanes' softmaxes, pair by pair.
    for (var g = 0u; g < NQ; g++) {
        let r = r0 + g / HPW;
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
            pair_m[g] = big;
            pair_l[g] = total_l;
        }
        let o = (r * p.n_heads + h0 + g % HPW) * HD4;
        for (var c0 = 0u; c0 < select(0u, HD4, VALUES != 0u); c0 += ROUND) {
            for (var cc = 0u; cc < ROUND; cc++) {
                if c0 + cc < HD4 {
                    lane_acc[cc * WG + lid] = acc[g * HD4 + c0 + cc] * f;
                }
            }
            workgroupBarrier();
            if lid < ROUND && c0 + lid < HD4 && r < step.n_rows {
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
        for (var g = 0u; g < NQ; g++) {
            let r = r0 + g / HPW;
            if r >= step.n_rows {
                break;
            }
            let big = pair_m[g];
            let total_l = pair_l[g];
            let base = (r * p.n_heads + h0 + g % HPW) * p.capacity;
            // Slots from step.n_slots up are free: their probabilities are left as they were.
            for (var j = lid; j < min(p.capacity, step.n_slots); j += WG) {
                var prob = 0.0;
                if total_l > 0.0 {
                    let sp = slot_pos[j];
                    if visible(sp, pos[g / HPW]) {
                        let kb = j * kv4 + kvh * HD4;
                        var s = 0.0;
                        // unroll uc HD4
                        s += dot(qv[g * HD4 + uc], key4(kb + uc));
                        // end unroll
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
