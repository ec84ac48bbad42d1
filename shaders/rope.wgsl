// rope.wgsl: one step's q, k and v from their stacked product, qkv (rows, q_dim + 2 kv_dim), into
// place: rotary positions on q and k at each row's own position,
// (a, b) <- (a cos θ - b sin θ, a sin θ + b cos θ), θ = pos · base^(-2i / head_dim) / f_i
// (f_i: RoPE scaling's divisor of pair i, 1 without),
// q and k written rotated to their own buffers, k and v stored in the row's KV slot, and with
// write_table the slot table too (it is shared by every layer). Pairs are (2i, 2i+1) when
// interleaved (llama.cpp's GGUF layout) and (i, i + head_dim/2) otherwise (Hugging Face's
// rotate-half). With BIAS, bias (q_dim + 2 kv_dim) is added to q, k and v first.
// The caches hold f32, or with HALF f16 pairs packed in a u32 (pack2x16float): then each k
// invocation rotates two consecutive pairs, so that it writes whole words (head_dim % 4 == 0).
// Invocation = one pair of q, one pair (two with HALF) of k, or one word of v, in that order;
// dispatch (ceil((n_heads · head_dim / 2 + (n_kv_heads · head_dim / 2 + kv_dim) / (1 + HALF)) / 64), rows, 1).

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    theta: f32,        // rope base
    interleaved: u32,  // 1: pairs (2i, 2i+1); 0: pairs (i, i + head_dim/2)
    write_table: u32,  // 1 for one layer per step
    capacity: u32,     // slots in the cache
    pad: u32,
    factors: array<vec4<f32>, 32>,  // pair i's frequency divisor at [i / 4][i % 4] (RoPE scaling; 1: none)
}

@group(0) @binding(0) var<storage, read> qkv: array<f32>;            // (rows, q_dim + 2 kv_dim)
@group(0) @binding(1) var<storage, read_write> q: array<f32>;        // (rows, q_dim), rotated
@group(0) @binding(2) var<storage, read_write> k: array<f32>;        // (rows, kv_dim), rotated
@group(0) @binding(3) var<storage, read_write> k_cache: array<u32>;  // (capacity, kv_dim) f32 or f16 words
@group(0) @binding(4) var<storage, read_write> v_cache: array<u32>;  // (capacity, kv_dim) f32 or f16 words
@group(0) @binding(5) var<storage, read> slots: array<u32>;          // (rows) target slot
@group(0) @binding(6) var<storage, read_write> slot_pos: array<u32>; // (capacity) position or 0xffffffff
@group(0) @binding(7) var<storage, read> positions: array<u32>;      // (rows)
@group(0) @binding(8) var<uniform> p: Params;
@group(0) @binding(9) var<uniform> step: Step;
// Without BIAS, bound to qkv and unread.
@group(0) @binding(10) var<storage, read> bias: array<f32>;          // (q_dim + 2 kv_dim)

// 1: bias added to q, k and v before the rotation.
override BIAS: u32 = 0u;
const HALF: u32 = 0u;  // 1: the caches hold f16

// Element e of row `row` of qkv, with its bias.
fn qkv_at(row: u32, e: u32) -> f32 {
    if BIAS != 0u {
        return qkv[row + e] + bias[e];
    }
    return qkv[row + e];
}

// Pair i of head h of the q (src 0) or k (src q_dim) part of row `row` of qkv, rotated for
// position pos: (index of a within the head's part, of b, rotated a, rotated b).
struct Rotated {
    ia: u32,
    ib: u32,
    a: f32,
    b: f32,
}

fn rotate(row: u32, src: u32, h: u32, i: u32, pos: u32) -> Rotated {
    let half_dim = p.head_dim / 2u;
    var ia = h * p.head_dim + i;
    var ib = ia + half_dim;
    if p.interleaved != 0u {
        ia = h * p.head_dim + 2u * i;
        ib = ia + 1u;
    }
    let inv_freq = exp2(-(2.0 * f32(i) / f32(p.head_dim)) * log2(p.theta)) / p.factors[i / 4u][i % 4u];
    let angle = f32(pos) * inv_freq;
    let c = cos(angle);
    let s = sin(angle);
    let a = qkv_at(row, src + ia);
    let b = qkv_at(row, src + ib);
    return Rotated(ia, ib, a * c - b * s, a * s + b * c);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y;
    let half_dim = p.head_dim / 2u;
    let q_dim = p.n_heads * p.head_dim;
    let kv_dim = p.n_kv_heads * p.head_dim;
    let q_pairs = p.n_heads * half_dim;
    let k_units = (p.n_kv_heads * half_dim) >> HALF;
    let v_words = kv_dim >> HALF;
    let j = gid.x;
    if r >= step.n_rows || j >= q_pairs + k_units + v_words {
        return;
    }
    let row = r * (q_dim + 2u * kv_dim);
    let slot = slots[r];
    let cached = slot < p.capacity;
    let pos = positions[r];
    if p.write_table != 0u && j == 0u && cached {
        slot_pos[slot] = pos;
    }
    if j < q_pairs {
        let x = rotate(row, 0u, j / half_dim, j % half_dim, pos);
        q[r * q_dim + x.ia] = x.a;
        q[r * q_dim + x.ib] = x.b;
        return;
    }
    if j >= q_pairs + k_units {
        // v: stored as it is.
        let i = j - q_pairs - k_units;
        let v0 = q_dim + kv_dim;
        if cached {
            if HALF != 0u {
                v_cache[slot * v_words + i] = pack2x16float(vec2<f32>(qkv_at(row, v0 + 2u * i), qkv_at(row, v0 + 2u * i + 1u)));
            } else {
                v_cache[slot * v_words + i] = bitcast<u32>(qkv_at(row, v0 + i));
            }
        }
        return;
    }
    // k: one pair, or with HALF pairs i and i + 1 (i even) of one head.
    let u = (j - q_pairs) << HALF;
    let h = u / half_dim;
    let x = rotate(row, q_dim, h, u % half_dim, pos);
    k[r * kv_dim + x.ia] = x.a;
    k[r * kv_dim + x.ib] = x.b;
    if HALF == 0u {
        if cached {
            k_cache[slot * kv_dim + x.ia] = bitcast<u32>(x.a);
            k_cache[slot * kv_dim + x.ib] = bitcast<u32>(x.b);
        }
        return;
    }
    let y = rotate(row, q_dim, h, u % half_dim + 1u, pos);
    k[r * kv_dim + y.ia] = y.a;
    k[r * kv_dim + y.ib] = y.b;
    if cached {
        let base = slot * (kv_dim / 2u);
        if p.interleaved != 0u {
            // Elements ia, ib = ia + 1, then y's two: two words.
            k_cache[base + x.ia / 2u] = pack2x16float(vec2<f32>(x.a, x.b));
            k_cache[base + y.ia / 2u] = pack2x16float(vec2<f32>(y.a, y.b));
        } else {
            // y.ia = x.ia + 1 and y.ib = x.ib + 1: the words at x.ia and at x.ib.
            k_cache[base + x.ia / 2u] = pack2x16float(vec2<f32>(x.a, y.a));
            k_cache[base + x.ib / 2u] = pack2x16float(vec2<f32>(x.b, y.b));
        }
    }
}
