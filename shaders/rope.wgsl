// rope.wgsl: one step's q, k and v from their stacked product, qkv (rows, q_dim + 2 kv_dim), into
// place: rotary positions on q and k at each row's own position,
// (a, b) <- (a cos θ - b sin θ, a sin θ + b cos θ), θ = pos · base^(-2i / head_dim),
// q and k written rotated to their own buffers, k and v stored in the row's KV slot, and with
// write_table the slot table too (it is shared by every layer). Pairs are (2i, 2i+1) when
// interleaved (llama.cpp's GGUF layout) and (i, i + head_dim/2) otherwise (Hugging Face's
// rotate-half). With BIAS, bias (q_dim + 2 kv_dim) is added to q, k and v first. Invocation = one pair of q, one pair of k or one element of v, in that order;
// dispatch (ceil(((n_heads + n_kv_heads) · head_dim / 2 + kv_dim) / 64), rows, 1).

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    theta: f32,        // rope base
    interleaved: u32,  // 1: pairs (2i, 2i+1); 0: pairs (i, i + head_dim/2)
    write_table: u32,  // 1 for one layer per step
    capacity: u32,     // slots in the cache
    pad: u32,
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;            // (rows, q_dim + 2 kv_dim)
@group(0) @binding(1) var<storage, read_write> q: array<f32>;        // (rows, q_dim), rotated
@group(0) @binding(2) var<storage, read_write> k: array<f32>;        // (rows, kv_dim), rotated
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;  // (capacity, kv_dim)
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;  // (capacity, kv_dim)
@group(0) @binding(5) var<storage, read> slots: array<u32>;          // (rows) target slot
@group(0) @binding(6) var<storage, read_write> slot_pos: array<u32>; // (capacity) position or 0xffffffff
@group(0) @binding(7) var<storage, read> positions: array<u32>;      // (rows)
@group(0) @binding(8) var<uniform> p: Params;
@group(0) @binding(9) var<uniform> step: Step;
// Without BIAS, bound to qkv and unread.
@group(0) @binding(10) var<storage, read> bias: array<f32>;          // (q_dim + 2 kv_dim)

// 1: bias added to q, k and v before the rotation.
override BIAS: u32 = 0u;

// Element e of row `row` of qkv, with its bias.
fn qkv_at(row: u32, e: u32) -> f32 {
    if BIAS != 0u {
        return qkv[row + e] + bias[e];
    }
    return qkv[row + e];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y;
    let half_dim = p.head_dim / 2u;
    let q_dim = p.n_heads * p.head_dim;
    let kv_dim = p.n_kv_heads * p.head_dim;
    let q_pairs = p.n_heads * half_dim;
    let k_pairs = p.n_kv_heads * half_dim;
    var j = gid.x;
    if r >= step.n_rows || j >= q_pairs + k_pairs + kv_dim {
        return;
    }
    let row = r * (q_dim + 2u * kv_dim);
    let slot = slots[r];
    let cached = slot < p.capacity;
    if p.write_table != 0u && j == 0u && cached {
        slot_pos[slot] = positions[r];
    }
    if j >= q_pairs + k_pairs {
        // v: stored as it is.
        let i = j - q_pairs - k_pairs;
        if cached {
            v_cache[slot * kv_dim + i] = qkv_at(row, q_dim + kv_dim + i);
        }
        return;
    }
    let is_k = j >= q_pairs;
    if is_k {
        j -= q_pairs;
    }
    let h = j / half_dim;
    let i = j % half_dim;
    var ia = h * p.head_dim + i;
    var ib = ia + half_dim;
    if p.interleaved != 0u {
        ia = h * p.head_dim + 2u * i;
        ib = ia + 1u;
    }
    let inv_freq = exp2(-(2.0 * f32(i) / f32(p.head_dim)) * log2(p.theta));
    let angle = f32(positions[r]) * inv_freq;
    let c = cos(angle);
    let s = sin(angle);
    let src = select(0u, q_dim, is_k);
    let a = qkv_at(row, src + ia);
    let b = qkv_at(row, src + ib);
    let ra = a * c - b * s;
    let rb = a * s + b * c;
    if !is_k {
        q[r * q_dim + ia] = ra;
        q[r * q_dim + ib] = rb;
        return;
    }
    k[r * kv_dim + ia] = ra;
    k[r * kv_dim + ib] = rb;
    if cached {
        k_cache[slot * kv_dim + ia] = ra;
        k_cache[slot * kv_dim + ib] = rb;
    }
}
