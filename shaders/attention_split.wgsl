// attention_split.wgsl: the first pass of attention.wgsl's result for decode rows on GPUs, with
// the slots split across many workgroups (flash-decoding):
// out[r, h] = Σ_j softmax_j(q[r, h] · k[j, h / group] · scale) v[j, h / group], over the slots j
// with slot_pos[j] valid and slot_pos[j] <= positions[r], in two passes:
// `partial`: one workgroup of 64 per (HPW query heads sharing one KV head, row, split of CHUNK
//     slots); dispatch (n_heads / HPW, rows, splits). Lanes lie along head_dim (LD lanes, one
//     vec4 each, LD a power of two ≥ HD4) and take SG = 64 / LD slots at a time, so that a K or
//     V row is read by consecutive lanes and no lane holds a whole head. Each step the LD lanes
//     of a slot sum their dot products through workgroup memory; each lane keeps the online
//     softmax (max, sum, its vec4 of the weighted V) of its slots; the SG slot groups are merged
//     at the end, and the split's (acc, max, sum) is written to part.
// attention_merge.wgsl then merges the splits into out.
// With listed, the slots visited are list[1 ..= list[0]] instead of 0 .. step.n_slots.
// K and V are f32, or with KV_HALF f16 (as attention.wgsl).

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,   // usually 1 / sqrt(head_dim)
    splits: u32,  // workgroups along the slots
    listed: u32,  // 1: visit the slots in list
    window: u32,  // sliding window (0: none), as attention.wgsl
    pad0: u32,
}

@group(0) @binding(0) var<storage, read> q: array<vec4<f32>>;           // (rows, n_heads, head_dim)
@group(0) @binding(1) var<storage, read> k_cache: array<vec2<u32>>;     // (capacity, n_kv_heads, head_dim), see key4
@group(0) @binding(2) var<storage, read> v_cache: array<vec2<u32>>;     // (capacity, n_kv_heads, head_dim)
@group(0) @binding(3) var<storage, read> slot_pos: array<u32>;          // (capacity) position or 0xffffffff
@group(0) @binding(4) var<storage, read> positions: array<u32>;         // (rows)
@group(0) @binding(5) var<storage, read_write> part: array<vec4<f32>>;  // (rows, n_heads, splits, HD4 + 1): acc, then (max, sum, 0, 0)
@group(0) @binding(6) var<uniform> p: Params;
@group(0) @binding(7) var<uniform> step: Step;
@group(0) @binding(8) var<storage, read> list: array<u32>;              // (1 + capacity) count, slots; or unused

const HD4: u32 = 16u;  // head_dim / 4
const HPW: u32 = 1u;   // query heads per workgroup
const LD: u32 = 16u;   // lanes along head_dim: a power of two ≥ HD4, at most 64
const SG: u32 = 64u / LD;
const CHUNK: u32 = 64u;  // slots per split
const INVALID: u32 = 0xffffffffu;

var<workgroup> wg_n: u32;
var<workgroup> dots: array<f32, 512>;           // (HPW ≤ 8, 64) each lane's part of a dot product
var<workgroup> group_ml: array<vec2<f32>, 512>;  // (HPW, SG) each slot group's (max, sum)
var<workgroup> group_acc: array<vec4<f32>, 512>;  // (HPW, 64) each lane's weighted V

// The slot of the t-th visited position, or INVALID past the end.
fn slot_at(t: u32, n: u32) -> u32 {
    if t >= n {
        return INVALID;
    }
    if p.listed != 0u {
        return list[1u + t];
    }
    return t;
}

@compute @workgroup_size(64)
fn partial(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h0 = wid.x * HPW;
    let r = wid.y;
    if r >= step.n_rows {
        return;
    }
    let c = lid % LD;    // this lane's vec4 of head_dim
    let sg = lid / LD;   // this lane's slot group
    let on_dim = c < HD4;
    let kvh = h0 / (p.n_heads / p.n_kv_heads);
    let kv4 = p.n_kv_heads * HD4;
    let pos = positions[r];
    var qv: array<vec4<f32>, HPW>;
    var m: array<f32, HPW>;
    var l: array<f32, HPW>;
    var acc: array<vec4<f32>, HPW>;
    for (var g = 0u; g < HPW; g++) {
        if on_dim {
            qv[g] = q[(r * p.n_heads + h0 + g) * HD4 + c] * p.scale;
        }
        m[g] = MASKED;
        l[g] = 0.0;
        acc[g] = vec4<f32>(0.0);
    }
    // The slots visited, read once for the workgroup (a uniform loop bound for the barriers);
    // splits past them scan nothing and write an empty softmax.
    if lid == 0u {
        wg_n = select(step.n_slots, list[0], p.listed != 0u);
    }
    let n = workgroupUniformLoad(&wg_n);
    let start = wid.z * CHUNK;
    for (var t0 = start; t0 < min(start + CHUNK, n); t0 += SG) {
        let j = slot_at(t0 + sg, n);
        var live = j != INVALID;
        if live {
            let sp = slot_pos[j];
            live = sp != INVALID && sp <= pos && (p.window == 0u || pos - sp < p.window);
        }
        let kb = j * kv4 + kvh * HD4 + c;
        var kc = vec4<f32>(0.0);
        if live && on_dim {
            kc = key4(kb);
        }
        for (var g = 0u; g < HPW; g++) {
            dots[g * 64u + lid] = dot(qv[g], kc);
        }
        workgroupBarrier();
        var s: array<f32, HPW>;
        for (var g = 0u; g < HPW; g++) {
            var sum = 0.0;
            for (var i = 0u; i < LD; i++) {
                sum += dots[g * 64u + sg * LD + i];
            }
            s[g] = sum;
        }
        workgroupBarrier();
        if live {
            var vc = vec4<f32>(0.0);
            if on_dim {
                vc = value4(kb);
            }
            for (var g = 0u; g < HPW; g++) {
                let m_new = max(m[g], s[g]);
                let alpha = exp(m[g] - m_new);
                let w = exp(s[g] - m_new);
                l[g] = l[g] * alpha + w;
                m[g] = m_new;
                acc[g] = acc[g] * alpha + w * vc;
            }
        }
    }
    // Merge the slot groups' softmaxes: every lane of a group holds the same (max, sum).
    for (var g = 0u; g < HPW; g++) {
        if c == 0u {
            group_ml[g * SG + sg] = vec2<f32>(m[g], l[g]);
        }
        group_acc[g * 64u + lid] = acc[g];
    }
    workgroupBarrier();
    if sg == 0u && on_dim {
        for (var g = 0u; g < HPW; g++) {
            var big = MASKED;
            for (var i = 0u; i < SG; i++) {
                big = max(big, group_ml[g * SG + i].x);
            }
            var total = 0.0;
            var sum = vec4<f32>(0.0);
            for (var i = 0u; i < SG; i++) {
                // Groups that saw no slot have sum 0 and weigh nothing.
                let f = exp(group_ml[g * SG + i].x - big);
                total += group_ml[g * SG + i].y * f;
                sum += group_acc[g * 64u + i * LD + c] * f;
            }
            let o = ((r * p.n_heads + h0 + g) * p.splits + wid.z) * (HD4 + 1u);
            part[o + c] = sum;
            if c == 0u {
                part[o + HD4] = vec4<f32>(big, total, 0.0, 0.0);
            }
        }
    }
}
