// matvec_sg.wgsl: `matvec_wide` (matmul.wgsl) with its sums reduced by subgroupAdd, for adapters
// with subgroups; appended to matmul.wgsl (src/shaders.rs, MATMUL_SG).

@compute @workgroup_size(64)
fn matvec_wide_sg(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) subgroups: u32,
) {
    let acc = wide_sums(lid, wid.x);
    // Each subgroup's sum, then lane a adds accumulator a's over the subgroups.
    for (var a = 0u; a < 9u; a++) {
        let s = subgroupAdd(acc[a]);
        if lane == 0u {
            red[a * 64u + sg] = s;
        }
    }
    workgroupBarrier();
    if lid < 9u {
        var t = 0.0;
        for (var j = 0u; j < subgroups; j++) {
            t += red[lid * 64u + j];
        }
        red[lid * 64u] = t;
    }
    workgroupBarrier();
    wide_finish(lid, wid.x);
}
