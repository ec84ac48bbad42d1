// cache_update.wgsl: the release decision of score-driven policies, on the GPU. Among the valid
// slots, the `sinks` first and `recent` last positions (of step.n_seen) are protected; of the
// others, the budget - protected with the highest score stay, ties going to the lower position;
// the rest are freed (slot_pos = INVALID). Nothing happens while the cache is within budget.
// With in_flight, the step's new rows (positions >= n_seen - n_new) stay and do not count
// against the budget (the oracle selects what those rows attend to).
// The k-th score is found exactly by a radix select, a byte per pass (4 histogram passes); the
// tie cut by position bit by bit (32 counting passes), only when some tied candidates stay and
// some go. The passes end early where all candidates sharing the bytes found so far stay; choose
// and narrow guess the first byte from their last call (HINT), saving a pass when right. One
// workgroup of WG lanes (set per pipeline: 256 on GPUs, fewer on CPU devices, where a
// workgroup's lanes take turns in SIMD registers at every barrier), each invocation owning a
// contiguous range of slots, a multiple of 4 read four at a time (slot_pos, src and score are
// padded to 16 bytes). Dispatch (1, 1, 1).
// Entry points: main frees slots of slot_pos in place; choose first copies the table from src
// (all capacity slots), and it and narrow (in place) then write the valid slots below
// step.n_slots as a compact ascending list (list[0] = count, list[1 + k] = the k-th slot), so
// that attention visits only the chosen slots; after the list's capacity + 1 entries, each
// choice's hint.

struct Params {
    capacity: u32,
    budget: u32,
    sinks: u32,
    recent: u32,
    in_flight: u32,  // 1: this step's new rows stay outside the budget
    hint: u32,       // choose and narrow: this choice's entry after the list (see HINT)
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> slot_pos: array<vec4<u32>>;  // (capacity) position or INVALID, padded to 16 bytes
@group(0) @binding(1) var<storage, read> score: array<vec4<f32>>;           // (capacity), padded to 16 bytes
@group(0) @binding(2) var<uniform> p: Params;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read_write> list: array<u32>;           // (1 + capacity + hints), choose and narrow
@group(0) @binding(5) var<storage, read> src: array<vec4<u32>>;            // (capacity), choose, padded to 16 bytes

const WG: u32 = 256u;  // lanes, a power of two up to 256
// 1 (choose, narrow): the first round's byte is guessed, as the one this choice found last time
// (list[1 + capacity + p.hint]); the first pass counts the candidates above and at it, and builds
// the second round's histogram of those at it. Where the k-th largest key has that byte, the
// first round needs no histogram (the same byte, need and ties as the histogram's) and the
// second no pass; else the first round's histogram is built in a pass of its own.
const HINT: u32 = 0u;
// Counts per byte value of the score keys that match the bytes chosen so far.
var<workgroup> hist: array<atomic<u32>, 256>;
// The current pass's byte, how many candidates of that byte stay, and how many it has.
var<workgroup> chosen: array<u32, 3>;
// Valid slots per invocation, for the list's offsets.
var<workgroup> counts: array<u32, WG>;
// The lanes' values being summed.
var<workgroup> red: array<u32, WG>;
const INVALID: u32 = 0xffffffffu;
fn protected_pos(pos: u32) -> bool {
    return pos < p.sinks || pos + p.recent >= step.n_seen;
}

// 0: free (or in flight), 1: protected, 2: candidate for release; for a slot holding pos.
fn kind(pos: u32) -> u32 {
    if pos == INVALID || (p.in_flight != 0u && pos + step.n_new >= step.n_seen) {
        return 0u;
    }
    return select(2u, 1u, protected_pos(pos));
}

// Sum of v over the workgroup, a uniform value (called by every invocation).
fn total(lid: u32, v: u32) -> u32 {
    red[lid] = v;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if lid < w {
            red[lid] += red[lid + w];
        }
        workgroupBarrier();
    }
    let t = workgroupUniformLoad(&red[0]);
    workgroupBarrier();
    return t;
}

// Clears the histogram (called by every invocation; a barrier follows).
fn clear_hist(lid: u32) {
    for (var i = lid; i < 256u; i += WG) {
        atomicStore(&hist[i], 0u);
    }
    workgroupBarrier();
}

// The slots are read four at a time (a vec4 of slot_pos and of score: llvmpipe loads a word per
// lane at a time, so one 16-byte load serves four slots); slot j0 + i of a vec4 counts where
// j0 + i < c1.

// The largest position cut c with count(tied, pos < c) <= need, tied meaning a candidate with
// score key thr (called by every invocation).
fn tie_cut(lid: u32, c0: u32, c1: u32, thr: u32, need: u32) -> u32 {
    var cut = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
        let cand = cut | (1u << u32(bit));
        var cnt = 0u;
        for (var j0 = c0; j0 < c1; j0 += 4u) {
            let sp = slot_pos[j0 >> 2u];
            let sc = score[j0 >> 2u];
            // unroll i 4
            cnt += select(0u, 1u, j0 + {i}u < c1 && kind(sp[{i}u]) == 2u && order_key(sc[{i}u]) == thr && sp[{i}u] < cand);
            // end unroll
        }
        if total(lid, cnt) <= need {
            cut = cand;
        }
    }
    return cut;
}

// Slots at or above step.n_slots are free: only those below are scanned, invocation lid
// owning c0 .. c1 of them (c0 a multiple of 4).
fn slots_below() -> u32 {
    return min(p.capacity, step.n_slots);
}

fn range_len() -> u32 {
    return ((slots_below() + 3u) / 4u + WG - 1u) / WG * 4u;
}

fn range_start(lid: u32) -> u32 {
    return min(lid * range_len(), slots_below());
}

fn range_end(lid: u32) -> u32 {
    return min(range_start(lid) + range_len(), slots_below());
}

// The first round's byte as this choice found it last time (HINT), read by every invocation.
// (The list is touched in blocks unrolled HINT times, so that `main`, whose dispatch binds no
// list, does not use it.)
fn hint_byte() -> u32 {
    var g = 0u;
    // unroll _ HINT
    g = list[1u + p.capacity + p.hint];
    // end unroll
    return g;
}

// Keeps the first round's byte for the next time (HINT; every invocation has read the last one).
fn set_hint(lid: u32, d: u32) {
    // unroll _ HINT
    if lid == 0u {
        list[1u + p.capacity + p.hint] = d;
    }
    // end unroll
}

// The decision over the invocation's slots c0 .. c1 (called by every invocation); returns how
// many of them hold a token after it.
fn release(lid: u32, c0: u32, c1: u32) -> u32 {
    // The first pass counts and builds the first round's histogram (of the keys' top bytes).
    clear_hist(lid);
    var n_held = 0u;
    var n_valid = 0u;
    var n_prot = 0u;
    var n_above = 0u;  // candidates whose top byte is above the guess (HINT)
    var n_at = 0u;     // and at it
    if lid == 0u {
        chosen[0] = hint_byte();
    }
    let guess = workgroupUniformLoad(&chosen[0]);
    for (var j0 = c0; j0 < c1; j0 += 4u) {
        let sp = slot_pos[j0 >> 2u];
        let sc = score[j0 >> 2u];
        // unroll i 4
        if j0 + {i}u < c1 {
            let k = kind(sp[{i}u]);
            n_held += select(0u, 1u, sp[{i}u] != INVALID);
            n_valid += select(0u, 1u, k != 0u);
            n_prot += select(0u, 1u, k == 1u);
            if k == 2u {
                let key = order_key(sc[{i}u]);
                let top = key >> 24u;
                if HINT != 0u {
                    n_above += select(0u, 1u, top > guess);
                    if top == guess {
                        n_at++;
                        atomicAdd(&hist[(key >> 16u) & 255u], 1u);
                    }
                } else {
                    atomicAdd(&hist[top], 1u);
                }
            }
        }
        // end unroll
    }
    // (The totals' barriers also complete the histogram.)
    let valid = total(lid, n_valid);
    let prot = total(lid, n_prot);
    if valid <= p.budget {
        return n_held;
    }
    let keep = p.budget - min(prot, p.budget);  // candidates that stay
    var g_above = 0u;
    var g_at = 0u;
    if HINT != 0u {
        g_above = total(lid, n_above);
        g_at = total(lid, n_at);
    }
    // The guess holds where the keep-th largest key's top byte is guess.
    let guessed = HINT != 0u && g_above < keep && keep <= g_above + g_at;

    // thr: the keep-th largest candidate key, a byte at a time from the top. need: how many
    // candidates with key == thr stay (the others above it all stay); ties: how many there are.
    // shift: how many low bits of the key are still undecided (the rounds stop early once
    // every candidate matching the bytes chosen so far stays).
    var thr = 0u;
    var need = keep;
    var ties = 0u;
    var shift = 32u;
    for (var round = 0u; round < 4u; round++) {
        shift -= 8u;
        if round == 0u && guessed {
            thr = guess;
            need = keep - g_above;
            ties = g_at;
            if ties == need {
                break;
            }
            continue;
        }
        // (With the guess right, the histogram of round 1 was built by the first pass.)
        if (round > 0u || HINT != 0u) && !(round == 1u && guessed) {
            clear_hist(lid);
            for (var j0 = c0; j0 < c1; j0 += 4u) {
                let sp = slot_pos[j0 >> 2u];
                let sc = score[j0 >> 2u];
                // unroll i 4
                if j0 + {i}u < c1 && kind(sp[{i}u]) == 2u {
                    let key = order_key(sc[{i}u]);
                    // The bytes above this one must equal those chosen.
                    if round == 0u || (key >> (shift + 8u)) == thr {
                        atomicAdd(&hist[(key >> shift) & 255u], 1u);
                    }
                }
                // end unroll
            }
            workgroupBarrier();
        }
        if lid == 0u {
            // From the largest byte down, to the bucket holding the need-th largest key.
            var d = 255u;
            var above = 0u;
            loop {
                let c = atomicLoad(&hist[d]);
                if above + c >= need || d == 0u {
                    break;
                }
                above += c;
                d -= 1u;
            }
            chosen[0] = d;
            chosen[1] = need - above;
            chosen[2] = atomicLoad(&hist[d]);
        }
        // Uniform loads (each also a barrier), so that the branch below may hold barriers.
        let d = workgroupUniformLoad(&chosen[0]);
        need = workgroupUniformLoad(&chosen[1]);
        ties = workgroupUniformLoad(&chosen[2]);
        thr = (thr << 8u) | d;
        if round == 0u {
            set_hint(lid, d);
        }
        if ties == need {
            break;
        }
    }
    // Every tied candidate stays, or some go: then the lowest positions stay.
    var cut = 0xffffffffu;
    if keep > 0u && ties != need {
        cut = tie_cut(lid, c0, c1, thr, need);
    }
    // Slots of the last vec4 at or beyond c1 keep what they hold (only this invocation writes
    // that vec4).
    for (var j0 = c0; j0 < c1; j0 += 4u) {
        var sp = slot_pos[j0 >> 2u];
        let sc = score[j0 >> 2u];
        var freed = false;
        // unroll i 4
        if j0 + {i}u < c1 && kind(sp[{i}u]) == 2u {
            let key = order_key(sc[{i}u]) >> shift;
            let stays = keep > 0u && (key > thr || (key == thr && sp[{i}u] < cut));
            if !stays {
                sp[{i}u] = INVALID;
                n_held -= 1u;
                freed = true;
            }
        }
        // end unroll
        if freed {
            slot_pos[j0 >> 2u] = sp;
        }
    }
    return n_held;
}

// The list of the valid slots below step.n_slots, the invocation's `held` of them in c0 .. c1
// (called by every invocation).
fn write_list(lid: u32, c0: u32, c1: u32, held: u32) {
    counts[lid] = held;
    workgroupBarrier();
    var off = 0u;
    for (var t = 0u; t < lid; t++) {
        off += counts[t];
    }
    for (var j0 = c0; j0 < c1; j0 += 4u) {
        let sp = slot_pos[j0 >> 2u];
        // unroll i 4
        if j0 + {i}u < c1 && sp[{i}u] != INVALID {
            list[1u + off] = j0 + {i}u;
            off++;
        }
        // end unroll
    }
    if lid == WG - 1u {
        list[0] = off;
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
    _ = release(lid, range_start(lid), range_end(lid));
}

@compute @workgroup_size(WG)
fn narrow(@builtin(local_invocation_index) lid: u32) {
    let c0 = range_start(lid);
    let c1 = range_end(lid);
    let held = release(lid, c0, c1);
    write_list(lid, c0, c1, held);
}

@compute @workgroup_size(WG)
fn choose(@builtin(local_invocation_index) lid: u32) {
    let c0 = range_start(lid);
    let c1 = range_end(lid);
    // Each invocation copies the vec4s of the slots it owns (the last one's may run beyond
    // slots_below) and a share of those above, so no barrier is needed before its own decision
    // reads them.
    for (var j0 = c0; j0 < c1; j0 += 4u) {
        slot_pos[j0 >> 2u] = src[j0 >> 2u];
    }
    for (var v = (slots_below() + 3u) / 4u + lid; v < (p.capacity + 3u) / 4u; v += WG) {
        slot_pos[v] = src[v];
    }
    let held = release(lid, c0, c1);
    write_list(lid, c0, c1, held);
}
