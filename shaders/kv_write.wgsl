// kv_write.wgsl: stores this step's keys and values in their KV slots:
// k_cache[slots[r], :] = k[r, :], v_cache[slots[r], :] = v[r, :]; with write_table, also
// slot_pos[slots[r]] = positions[r] (the slot table is shared by every layer).
// Invocation = one feature of one row; dispatch (ceil(kv_dim / 64), rows, 1).

struct Params {
    kv_dim: u32,       // n_kv_heads · head_dim
    write_table: u32,  // 1 for one layer per step
    capacity: u32,     // slots in the cache
    pad: u32,
}

@group(0) @binding(0) var<storage, read> k: array<f32>;               // (rows, kv_dim)
@group(0) @binding(1) var<storage, read> v: array<f32>;               // (rows, kv_dim)
@group(0) @binding(2) var<storage, read_write> k_cache: array<f32>;   // (capacity, kv_dim)
@group(0) @binding(3) var<storage, read_write> v_cache: array<f32>;   // (capacity, kv_dim)
@group(0) @binding(4) var<storage, read> slots: array<u32>;           // (rows) target slot
@group(0) @binding(5) var<storage, read_write> slot_pos: array<u32>;  // (capacity) position or 0xffffffff
@group(0) @binding(6) var<storage, read> positions: array<u32>;       // (rows)
@group(0) @binding(7) var<uniform> p: Params;
@group(0) @binding(8) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.y;
    let i = gid.x;
    if r >= step.n_rows || i >= p.kv_dim {
        return;
    }
    let slot = slots[r];
    if slot >= p.capacity {
        return;
    }
    k_cache[slot * p.kv_dim + i] = k[r * p.kv_dim + i];
    v_cache[slot * p.kv_dim + i] = v[r * p.kv_dim + i];
    if p.write_table != 0u && i == 0u {
        slot_pos[slot] = positions[r];
    }
}
