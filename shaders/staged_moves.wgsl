// staged_moves.wgsl: the staged cache update of `CacheUpdate::Matmul`. Slots 0..budget are the
// cache proper and budget..capacity stage the rows of a step. After the release decision, the
// k-th free cache slot receives the k-th surviving staged row (both in slot order):
// src[j] = j for a kept cache slot, the staged slot moving into j, or INVALID. The slot table
// and the per-slot scores move with the rows and the staging slots end empty; the K/V rows
// themselves move by the selection-matrix product (select_matrix, select_matmul).
// One workgroup of 256, each invocation owning a contiguous range of slots. Dispatch (1, 1, 1).

struct Params {
    capacity: u32,
    budget: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> slot_pos: array<u32>;  // (capacity)
@group(0) @binding(1) var<storage, read_write> score: array<f32>;     // (capacity)
@group(0) @binding(2) var<storage, read_write> src: array<u32>;       // (capacity): src, then staged rows by rank
@group(0) @binding(3) var<uniform> p: Params;

const WG: u32 = 256u;
const INVALID: u32 = 0xffffffffu;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let chunk = (p.capacity + WG - 1u) / WG;
    let c0 = min(lid * chunk, p.capacity);
    let c1 = min(c0 + chunk, p.capacity);
    var free = 0u;
    var staged = 0u;
    for (var j = c0; j < c1; j++) {
        let valid = slot_pos[j] != INVALID;
        free += select(0u, 1u, j < p.budget && !valid);
        staged += select(0u, 1u, j >= p.budget && valid);
    }
    var free_rank = wg_prefix_u32(lid, free);
    var staged_rank = wg_prefix_u32(lid, staged);
    let n_staged = wg_total_u32(lid, staged);
    // Staged rows listed by rank after the budget entries of src.
    for (var j = c0; j < c1; j++) {
        if j >= p.budget && slot_pos[j] != INVALID {
            src[p.budget + staged_rank] = j;
            staged_rank += 1u;
        }
    }
    storageBarrier();
    workgroupBarrier();
    for (var j = c0; j < min(c1, p.budget); j++) {
        if slot_pos[j] != INVALID {
            src[j] = j;
        } else {
            src[j] = select(INVALID, src[p.budget + free_rank], free_rank < n_staged);
            free_rank += 1u;
        }
    }
    storageBarrier();
    workgroupBarrier();
    for (var j = c0; j < min(c1, p.budget); j++) {
        let s = src[j];
        if s != INVALID && s != j {
            slot_pos[j] = slot_pos[s];
            score[j] = score[s];
        }
    }
    storageBarrier();
    workgroupBarrier();
    for (var j = max(c0, p.budget); j < c1; j++) {
        slot_pos[j] = INVALID;
    }
}
