// table_copy.wgsl: dst[j] = src[j] for j < arrayLength(dst) (the oracle's selection starts
// from the full slot table). Invocation = one entry; dispatch (ceil(n / 64), 1, 1).

@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if j < arrayLength(&dst) {
        dst[j] = src[j];
    }
}
