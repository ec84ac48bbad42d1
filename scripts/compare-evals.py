#!/usr/bin/env python3
"""Paired comparison of `adore eval --json` files: top-1 agreement per text and pooled over all
texts, each run's difference to a reference run with the standard error of the paired
difference, computed from the per-position outcomes (`agreement_by_position`).

Runs of the same text and token count pair position by position even when they come from
separate evals (full attention's predictions are the same in each). A run is named
`POLICY@BUDGET` (`oracle/controller-protected@128`).

usage: scripts/compare-evals.py --reference sink@128 [--alias OLD=NEW ...] FILE.json [FILE.json ...]
(--alias: rows of policy OLD count as NEW, for a run measured under another name)
"""
import argparse
import json
import math
import sys
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="the run differences are taken to, as POLICY@BUDGET")
    ap.add_argument("--alias", action="append", default=[], help="OLD=NEW: rows of policy OLD count as NEW")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    alias = dict(x.split("=", 1) for x in a.alias)
    # text -> run -> (hits, mean KL, perplexity)
    runs = defaultdict(dict)
    for f in a.files:
        d = json.load(open(f))
        text = f"{d['text']} ({d['tokens']} tokens)"
        for r in d["rows"]:
            if r["budget"] is None:
                continue
            name = f"{alias.get(r['policy'], r['policy'])}@{r['budget']}"
            hits = [c == "1" for c in r["agreement_by_position"]]
            old = runs[text].get(name)
            if old is not None and old[0] != hits:
                sys.exit(f"{name} on {text} appears twice with different outcomes")
            runs[text][name] = (hits, r["mean_kl"], r["ppl"])
    names = sorted({n for t in runs.values() for n in t})
    print("| run | " + " | ".join(runs) + " | all texts: top-1 / mean KL | vs " + a.reference + " (SE) |")
    print("|---|" + "---:|" * (len(runs) + 2))
    for n in names:
        cells, pooled, diffs, kl_sum = [], [], [], 0.0
        for t, rs in runs.items():
            if n not in rs:
                cells.append("-")
                continue
            hits, kl, ppl = rs[n]
            cells.append(f"{sum(hits) / len(hits):.3f} / {kl:.3f} / {ppl:.2f}")
            pooled += hits
            kl_sum += kl * len(hits)
            if a.reference in rs:
                ref = rs[a.reference][0]
                if len(ref) != len(hits):
                    sys.exit(f"{n} and {a.reference} on {t} cover different positions")
                diffs += [int(x) - int(y) for x, y in zip(hits, ref)]
        complete = all(n in rs for rs in runs.values())
        top1 = f"{sum(pooled) / len(pooled):.3f} / {kl_sum / len(pooled):.3f}" if pooled and complete else "-"
        if diffs and complete and n != a.reference:
            mean = sum(diffs) / len(diffs)
            var = sum((x - mean) ** 2 for x in diffs) / (len(diffs) - 1)
            se = math.sqrt(var / len(diffs))
            vs = f"{mean:+.4f} ({se:.4f}; {mean / se:+.1f} SE)" if se > 0 else f"{mean:+.4f} (0)"
        else:
            vs = "-"
        print(f"| {n} | " + " | ".join(cells) + f" | {top1} | {vs} |")


if __name__ == "__main__":
    main()
