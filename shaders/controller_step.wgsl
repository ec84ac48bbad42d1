// controller_step.wgsl: the ADORE controller over this step's new rows (not rebuilt ones), in order: for each row r,
// u = P e_r (e_r: the token's embedding, or its residual-stream row divided by the row's root mean
// square when input_norm is set), h = GRU(u, h) (gates r, z, n as in PyTorch), and
// keys[pos_r] = W_k h; after the last row, q = W_q h. The recurrence makes rows sequential:
// one workgroup of 256 splits each row's products. Dispatch (1, 1, 1).

@group(0) @binding(0) var<storage, read> x: array<f32>;             // (rows, hidden) embeddings or residual stream
@group(0) @binding(1) var<storage, read> positions: array<u32>;     // (rows)
@group(0) @binding(2) var<storage, read> weights: array<f32>;       // packed controller weights
@group(0) @binding(3) var<storage, read_write> state: array<f32>;   // h (d_c), then q (d_c)
@group(0) @binding(4) var<storage, read_write> keys: array<f32>;    // (context, d_c) by position
// A storage buffer, not a uniform one: lavapipe (Mesa 22.3) inlines uniform values that bound
// loops by recompiling the kernel at each dispatch, and kept every copy (0.3 MB per token).
@group(0) @binding(5) var<storage, read> p: ControllerParams;
@group(0) @binding(6) var<uniform> step: Step;

const WG: u32 = 256u;
var<workgroup> u: array<f32, 256>;
var<workgroup> h: array<f32, 256>;
var<workgroup> gi: array<f32, 768>;
var<workgroup> gh: array<f32, 768>;
var<workgroup> partial: array<f32, 256>;

// Added to a row's mean square before normalising (Controller::INPUT_EPS).
const INPUT_EPS: f32 = 1e-6;

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32) {
    let d = p.d_c;
    for (var i = lid; i < d; i += WG) {
        h[i] = state[i];
    }
    workgroupBarrier();
    for (var r = 0u; r < step.n_new; r++) {
        // The input's scale: 1, or the inverse root mean square of the row.
        var inv = 1.0;
        if (p.input_norm != 0u) {
            var acc = 0.0;
            for (var k = lid; k < p.hidden; k += WG) {
                let v = x[r * p.hidden + k];
                acc += v * v;
            }
            partial[lid] = acc;
            workgroupBarrier();
            for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
                if (lid < stride) {
                    partial[lid] += partial[lid + stride];
                }
                workgroupBarrier();
            }
            inv = inverseSqrt(partial[0] / f32(p.hidden) + INPUT_EPS);
            workgroupBarrier();
        }
        // u = P e
        for (var i = lid; i < d; i += WG) {
            var s = 0.0;
            for (var k = 0u; k < p.hidden; k++) {
                s += weights[p.off_proj + i * p.hidden + k] * x[r * p.hidden + k];
            }
            u[i] = s * inv;
        }
        workgroupBarrier();
        // Gate pre-activations from the input and from the state.
        for (var g = lid; g < 3u * d; g += WG) {
            var a = weights[p.off_b_ih + g];
            var b = weights[p.off_b_hh + g];
            for (var k = 0u; k < d; k++) {
                a += weights[p.off_w_ih + g * d + k] * u[k];
                b += weights[p.off_w_hh + g * d + k] * h[k];
            }
            gi[g] = a;
            gh[g] = b;
        }
        workgroupBarrier();
        for (var i = lid; i < d; i += WG) {
            let rg = sigmoid(gi[i] + gh[i]);
            let z = sigmoid(gi[d + i] + gh[d + i]);
            let n = tanh(gi[2u * d + i] + rg * gh[2u * d + i]);
            u[i] = (1.0 - z) * n + z * h[i];
        }
        workgroupBarrier();
        for (var i = lid; i < d; i += WG) {
            h[i] = u[i];
        }
        workgroupBarrier();
        // The token's key, stored by position.
        let pos = positions[r];
        for (var i = lid; i < d; i += WG) {
            var s = 0.0;
            for (var k = 0u; k < d; k++) {
                s += weights[p.off_w_k + i * d + k] * h[k];
            }
            keys[pos * d + i] = s;
        }
        workgroupBarrier();
    }
    for (var i = lid; i < d; i += WG) {
        var s = 0.0;
        for (var k = 0u; k < d; k++) {
            s += weights[p.off_w_q + i * d + k] * h[k];
        }
        state[i] = h[i];
        state[d + i] = s;
    }
}
