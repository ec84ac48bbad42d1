// slot_assign.wgsl: places this step's rows in the lowest free slots: slots[r] = the r-th slot
// with slot_pos = INVALID, for r < step.n_rows (for policies whose releases the GPU decides).
// One workgroup of 256, each invocation owning a contiguous range of slots. Dispatch (1, 1, 1).

struct Params {
    capacity: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> slot_pos: array<u32>;    // (capacity)
@group(0) @binding(1) var<storage, read_write> slots: array<u32>; // (rows)
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

const WG: u32 = 256u;
const INVALID: u32 = 0xffffffffu;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let chunk = (p.capacity + WG - 1u) / WG;
    let c0 = min(lid * chunk, p.capacity);
    let c1 = min(c0 + chunk, p.capacity);
    var free = 0u;
    for (var j = c0; j < c1; j++) {
        free += select(0u, 1u, slot_pos[j] == INVALID);
    }
    var r = wg_prefix_u32(lid, free);
    for (var j = c0; j < c1; j++) {
        if slot_pos[j] == INVALID && r < step.n_rows {
            slots[r] = j;
            r += 1u;
        }
    }
}
