// rebuild_rows.wgsl: logs the token id of each new row by position (ids[positions[r]] =
// tokens[r], r < n_new), then fills the rebuild rows after the new ones from the selected
// released positions: positions[n_new + r] = indices[r], tokens[n_new + r] = ids[indices[r]],
// for r < n_rows - n_new. New rows sit at positions >= n_seen - n_new and rebuilt ones below,
// so the two phases touch different ids. One workgroup of 64; dispatch (1, 1, 1).

@group(0) @binding(0) var<storage, read_write> tokens: array<u32>;     // (rows)
@group(0) @binding(1) var<storage, read_write> positions: array<u32>;  // (rows)
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;        // (context) token id by position
@group(0) @binding(3) var<storage, read> indices: array<u32>;          // (R) selected positions, ascending
@group(0) @binding(4) var<uniform> step: Step;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) lid: u32) {
    let n = arrayLength(&ids);
    for (var r = lid; r < step.n_new; r += 64u) {
        let pos = positions[r];
        if pos < n {
            ids[pos] = tokens[r];
        }
    }
    for (var r = lid; step.n_new + r < step.n_rows; r += 64u) {
        let pos = indices[r];
        positions[step.n_new + r] = pos;
        tokens[step.n_new + r] = ids[min(pos, n - 1u)];
    }
}
