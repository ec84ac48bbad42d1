// short_rows.wgsl: the key index's short vectors of this step's rows at one layer. For row r
// and KV head g, with the layer's maps a_g and b_g (head_dim × rank each, a scaled already):
//   short query  qs[r, h, c] = Σ_i a_g[i, c] q[r, h, i]   for the GROUP query heads h of g
//   short key    keys[g, slots[r], c] = Σ_i b_g[i, c] k[r, g, i], stored as KEYS says
// (f32; f16 pairs packed in a u32 as pack2x16float writes them; or int8, four to a u32 as
// pack4x8snorm writes them, of the key divided by its largest magnitude s, with s stored as an
// f32 after every key's words); a row whose slot is at or beyond the capacity stores no key.
// With QUERIES = 0 only the keys (a prompt's rows). One kernel for what a block-diagonal product
// of each, and a KV write, would do in three. Invocation = two neighbouring outputs (c, c + 1)
// of one vector, the GROUP queries' then the key's; dispatch (ceil((GROUP + 1) · rank / 2 / 64),
// n_kv_heads, rows). An int8 key needs all its values for its scale: the key's first invocation
// computes them all, the others return.

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    rank: u32,
    capacity: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;             // (rows, n_heads, head_dim)
@group(0) @binding(1) var<storage, read> k: array<f32>;             // (rows, n_kv_heads, head_dim)
@group(0) @binding(2) var<storage, read> maps: array<vec2<f32>>;    // (2, n_kv_heads, head_dim, rank): a, then b
@group(0) @binding(3) var<storage, read_write> qs: array<f32>;      // (rows, n_heads, rank)
@group(0) @binding(4) var<storage, read_write> keys: array<u32>;    // (n_kv_heads, capacity, rank) words
@group(0) @binding(5) var<storage, read> slots: array<u32>;         // (rows) the rows' slots
@group(0) @binding(6) var<uniform> p: Params;
@group(0) @binding(7) var<uniform> step: Step;

const GROUP: u32 = 3u;    // query heads per KV head
const KEYS: u32 = 1u;     // keys stored as 0: f32, 1: f16 pairs, 2: int8 with a scale per key
const W4: u32 = 4u;       // int8 keys: words of a key, rank / 4
const QUERIES: u32 = 1u;  // 0: keys only

// Row r's short key of KV head g (its key vector at x0 in k), stored as int8 and a scale: W4
// words of four values each, in variables of their own (see `unroll` in src/shaders.rs).
fn int8_key(r: u32, g: u32, x0: u32, pairs: u32) {
    let slot = slots[r];
    if slot >= p.capacity {
        return;
    }
    // unroll w W4
    var a{w} = vec4<f32>(0.0);
    // end unroll
    let m0 = (p.n_kv_heads + g) * p.head_dim * pairs;
    for (var i = 0u; i < p.head_dim; i++) {
        let x = k[x0 + i];
        let mi = m0 + i * pairs;
        // unroll w W4
        a{w} += vec4<f32>(maps[mi + 2u * {w}u], maps[mi + 2u * {w}u + 1u]) * x;
        // end unroll
    }
    var big = 0.0;
    // unroll w W4
    big = max(big, max(max(abs(a{w}.x), abs(a{w}.y)), max(abs(a{w}.z), abs(a{w}.w))));
    // end unroll
    let inv = select(0.0, 1.0 / big, big > 0.0);
    let base = (g * p.capacity + slot) * W4;
    // unroll w W4
    keys[base + {w}u] = pack4x8snorm(a{w} * inv);
    // end unroll
    keys[p.n_kv_heads * p.capacity * W4 + g * p.capacity + slot] = bitcast<u32>(big);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let g = gid.y;
    let r = gid.z;
    let pairs = p.rank / 2u;
    let vec = gid.x / pairs;       // 0 .. GROUP - 1: a query head of g; GROUP: the key
    let c = 2u * (gid.x % pairs);
    if r >= step.n_rows || vec > GROUP || (vec < GROUP && QUERIES == 0u) {
        return;
    }
    let is_key = vec == GROUP;
    let h = g * GROUP + vec;
    let x0 = select((r * p.n_heads + h) * p.head_dim, (r * p.n_kv_heads + g) * p.head_dim, is_key);
    let m0 = ((select(0u, p.n_kv_heads, is_key) + g) * p.head_dim * p.rank + c) / 2u;
    if is_key && KEYS == 2u {
        if c == 0u {
            int8_key(r, g, x0, pairs);
        }
        return;
    }
    var acc = vec2<f32>(0.0);
    if is_key {
        for (var i = 0u; i < p.head_dim; i++) {
            acc += maps[m0 + i * pairs] * k[x0 + i];
        }
    } else {
        for (var i = 0u; i < p.head_dim; i++) {
            acc += maps[m0 + i * pairs] * q[x0 + i];
        }
    }
    if !is_key {
        let o = (r * p.n_heads + h) * p.rank + c;
        qs[o] = acc.x;
        qs[o + 1u] = acc.y;
        return;
    }
    let slot = slots[r];
    if slot >= p.capacity {
        return;
    }
    let e = (g * p.capacity + slot) * p.rank + c;
    if KEYS == 1u {
        keys[e / 2u] = pack2x16float(acc);
    } else {
        keys[e] = bitcast<u32>(acc.x);
        keys[e + 1u] = bitcast<u32>(acc.y);
    }
}
