// attend_list.wgsl: the valid slots of a slot table as a compact list, ascending, so that
// attention over a few chosen slots of a long table visits only those:
//   list[0] = count, list[1 + k] = the k-th slot j < step.n_slots with table[j] != INVALID.
// One workgroup of 256, each invocation owning a contiguous range of slots. Dispatch (1, 1, 1).

struct Params {
    capacity: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read> table: array<u32>;        // (capacity) position or INVALID
@group(0) @binding(1) var<storage, read_write> list: array<u32>;   // (1 + capacity)
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;

const WG: u32 = 256u;
const INVALID: u32 = 0xffffffffu;

var<workgroup> counts: array<u32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n = min(step.n_slots, p.capacity);
    let chunk = (n + WG - 1u) / WG;
    let c0 = min(lid * chunk, n);
    let c1 = min(c0 + chunk, n);
    var c = 0u;
    for (var j = c0; j < c1; j++) {
        c += select(0u, 1u, table[j] != INVALID);
    }
    counts[lid] = c;
    workgroupBarrier();
    var off = 0u;
    for (var t = 0u; t < lid; t++) {
        off += counts[t];
    }
    for (var j = c0; j < c1; j++) {
        if table[j] != INVALID {
            list[1u + off] = j;
            off++;
        }
    }
    if lid == WG - 1u {
        list[0] = off;
    }
}
