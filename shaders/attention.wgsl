// attention.wgsl: grouped-query attention of each row over the slot-based KV cache:
// out[r, h] = Σ_j softmax_j(q[r, h] · k[j, h / group] · scale) v[j, h / group], over the slots j
// with slot_pos[j] valid and slot_pos[j] <= positions[r] (causal by original position).
// One workgroup of 64 per (head, row); slots are scanned in tiles of 256 (4 per invocation)
// with an online (numerically stable) softmax. Dispatch (n_heads, rows, 1). head_dim <= 256.
// With write_mass, a second pass stores each slot's attention probability for this row and
// head in mass[r, h, slot] (1: overwrite, 2: add, to sum over layers), for the release policies.

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,        // usually 1 / sqrt(head_dim)
    capacity: u32,     // slots in the cache (row stride of mass)
    write_mass: u32,   // 0: no mass, 1: mass = p, 2: mass += p
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;          // (rows, n_heads, head_dim)
@group(0) @binding(1) var<storage, read> k_cache: array<f32>;    // (capacity, n_kv_heads, head_dim)
@group(0) @binding(2) var<storage, read> v_cache: array<f32>;    // (capacity, n_kv_heads, head_dim)
@group(0) @binding(3) var<storage, read> slot_pos: array<u32>;   // (capacity) position or 0xffffffff
@group(0) @binding(4) var<storage, read> positions: array<u32>;  // (rows)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (rows, n_heads, head_dim)
@group(0) @binding(6) var<uniform> p: Params;
@group(0) @binding(7) var<uniform> step: Step;
@group(0) @binding(8) var<storage, read_write> mass: array<f32>; // (rows, n_heads, capacity) or unused

const INVALID: u32 = 0xffffffffu;
var<workgroup> qs: array<f32, 256>;
const TILE: u32 = 256u;
var<workgroup> scores: array<f32, 256>;
var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let h = wid.x;
    let r = wid.y;
    if r >= step.n_rows {
        return;
    }
    let hd = p.head_dim;
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let kv_stride = p.n_kv_heads * hd;
    let pos = positions[r];
    for (var d = lid; d < hd; d += 64u) {
        qs[d] = q[(r * p.n_heads + h) * hd + d];
    }
    workgroupBarrier();

    var m = MASKED;  // running max
    var l = 0.0;     // running sum of exp
    var acc: array<f32, 4>;  // output dims lid, lid + 64, ...
    for (var t0 = 0u; t0 < step.n_slots; t0 += TILE) {
        // Scores of this tile: slots t0 + lid + 64 i.
        var s: array<f32, 4>;
        var tile_max = MASKED;
        for (var i = 0u; i < 4u; i++) {
            let j = t0 + lid + 64u * i;
            s[i] = MASKED;
            if j < step.n_slots {
                let sp = slot_pos[j];
                if sp != INVALID && sp <= pos {
                    let kb = j * kv_stride + kvh * hd;
                    var dot = 0.0;
                    for (var d = 0u; d < hd; d++) {
                        dot += qs[d] * k_cache[kb + d];
                    }
                    s[i] = dot * p.scale;
                }
            }
            tile_max = max(tile_max, s[i]);
        }
        red[lid] = tile_max;
        workgroupBarrier();
        for (var w = 32u; w > 0u; w >>= 1u) {
            if lid < w {
                red[lid] = max(red[lid], red[lid + w]);
            }
            workgroupBarrier();
        }
        let m_new = max(m, red[0]);
        workgroupBarrier();
        var e_sum = 0.0;
        for (var i = 0u; i < 4u; i++) {
            var e = 0.0;
            if s[i] > MASKED * 0.5 {
                e = exp(s[i] - m_new);
            }
            scores[lid + 64u * i] = e;
            e_sum += e;
        }
        red[lid] = e_sum;
        workgroupBarrier();
        for (var w = 32u; w > 0u; w >>= 1u) {
            if lid < w {
                red[lid] += red[lid + w];
            }
            workgroupBarrier();
        }
        let alpha = exp(m - m_new);
        l = l * alpha + red[0];
        let n_tile = min(TILE, step.n_slots - t0);
        for (var c = 0u; c < 4u; c++) {
            let d = lid + c * 64u;
            if d < hd {
                var a = acc[c] * alpha;
                for (var jj = 0u; jj < n_tile; jj++) {
                    a += scores[jj] * v_cache[(t0 + jj) * kv_stride + kvh * hd + d];
                }
                acc[c] = a;
            }
        }
        m = m_new;
        workgroupBarrier();
    }
    for (var c = 0u; c < 4u; c++) {
        let d = lid + c * 64u;
        if d < hd {
            out[(r * p.n_heads + h) * hd + d] = select(0.0, acc[c] / l, l > 0.0);
        }
    }
    if p.write_mass != 0u {
        let base = (r * p.n_heads + h) * p.capacity;
        for (var j = lid; j < p.capacity; j += 64u) {
            var prob = 0.0;
            let sp = slot_pos[j];
            if j < step.n_slots && sp != INVALID && sp <= pos && l > 0.0 {
                let kb = j * kv_stride + kvh * hd;
                var dot = 0.0;
                for (var d = 0u; d < hd; d++) {
                    dot += qs[d] * k_cache[kb + d];
                }
                prob = exp(dot * p.scale - m) / l;
            }
            if p.write_mass == 2u {
                mass[base + j] += prob;
            } else {
                mass[base + j] = prob;
            }
        }
    }
}
