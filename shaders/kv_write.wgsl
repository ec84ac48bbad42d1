// kv_write.wgsl: stores this step's keys and values in their KV slots:
// k_cache[slots[r], :] = k[r, :], v_cache[slots[r], :] = v[r, :]; with write_table, also
// slot_pos[slots[r]] = positions[r] (the slot table is shared by every layer). With VALUES = 0
// only k is stored (v and v_cache are bound but untouched).
// The caches hold f32, or with HALF f16 pairs packed in a u32 (pack2x16float).
// Invocation = one word of one row's cache entry; dispatch (ceil(words / 64), rows, 1), with
// words = kv_dim (f32) or kv_dim / 2 (f16).

struct Params {
    kv_dim: u32,       // n_kv_heads · head_dim
    write_table: u32,  // 1 for one layer per step
    capacity: u32,     // slots in the cache
    pad: u32,
}

@group(0) @binding(0) var<storage, read> k: array<f32>;               // (rows, kv_dim)
@group(0) @binding(1) var<storage, read> v: array<f32>;               // (rows, kv_dim)
@group(0) @binding(2) var<storage, read_write> k_cache: array<u32>;   // (capacity, kv_dim) f32 or f16 words
@group(0) @binding(3) var<storage, read_write> v_cache: array<u32>;   // (capacity, kv_dim) f32 or f16 words
@group(0) @binding(4) var<storage, read> slots: array<u32>;           // (rows) target slot
@group(0) @binding(5) var<storage, read_write> slot_pos: array<u32>;  // (capacity) position or 0xffffffff
@group(0) @binding(6) var<storage, read> positions: array<u32>;       // (rows)
@group(0) @binding(7) var<uniform> p: Params;
@group(0) @binding(8) var<uniform> step: Step;

const HALF: u32 = 0u;  // 1: the caches hold f16
const VALUES: u32 = 1u;  // 0: keys only

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y;
    let i = gid.x;
    let words = p.kv_dim >> HALF;
    if r >= step.n_rows || i >= words {
        return;
    }
    let slot = slots[r];
    if slot >= p.capacity {
        return;
    }
    let e = r * p.kv_dim + (i << HALF);
    if HALF != 0u {
        k_cache[slot * words + i] = pack2x16float(vec2<f32>(k[e], k[e + 1u]));
        if VALUES != 0u {
            v_cache[slot * words + i] = pack2x16float(vec2<f32>(v[e], v[e + 1u]));
        }
    } else {
        k_cache[slot * words + i] = bitcast<u32>(k[e]);
        if VALUES != 0u {
            v_cache[slot * words + i] = bitcast<u32>(v[e]);
        }
    }
    if p.write_table != 0u && i == 0u {
        slot_pos[slot] = positions[r];
    }
}
