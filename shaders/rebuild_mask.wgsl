// rebuild_mask.wgsl: removes the cached tokens from the rebuild candidates:
// pos_score[slot_pos[j]] = MASKED for every valid slot j. Invocation = one slot;
// dispatch (ceil(capacity / 64), 1, 1).

@group(0) @binding(0) var<storage, read> slot_pos: array<u32>;         // (capacity)
@group(0) @binding(1) var<storage, read_write> pos_score: array<f32>;  // (context)

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j >= arrayLength(&slot_pos) {
        return;
    }
    let pos = slot_pos[j];
    if pos < arrayLength(&pos_score) {
        pos_score[pos] = MASKED;
    }
}
