"""Why one SID table may serve the generator worse than another: per table, the share of validation
targets whose semantic tokens collide with another item's (the disambiguation token then numbers
them arbitrarily), and how predictable each SID position is from behaviour (top-10 accuracy of a
bigram "token p of the previous item -> token p of the next", counted on the training split).

    python scripts/sid_diagnostics.py --dataset DATA --table NAME=TOKENIZER_DIR [...] --out benchmarks/sid_diagnostics
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mmq_rec.recdata import RecDataset
from mmq_rec.recdata.io import write_json, write_text
from mmq_rec.tokenizer.sid import SIDTable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--table", action="append", required=True, metavar="NAME=TOKENIZER_DIR")
    ap.add_argument("--out", required=True, help="writes OUT.md and OUT.json")
    args = ap.parse_args()
    # leave-one-out: [-1] test, [-2] validation, the rest training
    seqs = [s.tolist() for s in RecDataset.load(args.dataset).sequences() if len(s) >= 3]
    valid = [s[-2] for s in seqs]
    rows = []
    for spec in args.table:
        name, _, tok = spec.partition("=")
        table = SIDTable.load(Path(tok) / "sid_table.json")
        codes, ns = table.codes, table.num_semantic
        groups = Counter(map(tuple, codes[:, :ns].tolist()))
        collide = float(np.mean([groups[tuple(codes[i, :ns])] > 1 for i in valid]))
        acc = []
        for p in range(ns):
            big: dict[int, Counter] = defaultdict(Counter)
            for s in seqs:
                for a, b in zip(s[:-3], s[1:-2], strict=True):  # training transitions only
                    big[codes[a, p]][codes[b, p]] += 1
            hits = [codes[s[-2], p] in {k for k, _ in big[codes[s[-3], p]].most_common(10)} for s in seqs]
            acc.append(round(float(np.mean(hits)), 3))
        entropy = [round(e, 2) for e in table.quality()["entropy"]]
        rows.append({"table": name, "tokenizer_dir": tok, "sid_length": int(codes.shape[1]),
                     "valid_targets_in_collisions": round(collide, 3), "bigram_top10_accuracy": acc,
                     "entropy_bits": entropy})
    cmd = "python scripts/sid_diagnostics.py --dataset " + args.dataset + " " + " ".join(f"--table {t}" for t in args.table)
    md = ["# SID tables: collisions where the targets are, and behavioural predictability per position", "",
          f"Command: `{cmd} --out {args.out}`", "",
          "| table | SID length | validation targets whose semantic tokens collide | top-10 bigram accuracy per position "
          "| entropy per position (bits) |",
          "|---|---:|---:|---|---|"]
    md += [f"| {r['table']} | {r['sid_length']} | {r['valid_targets_in_collisions']:.3f} | "
           f"{', '.join(f'{a:.3f}' for a in r['bigram_top10_accuracy'])} | "
           f"{', '.join(f'{e:.2f}' for e in r['entropy_bits'])} |" for r in rows]
    write_json(Path(args.out + ".json"), {"generated_by": "scripts/sid_diagnostics.py", "command": cmd, "rows": rows})
    write_text(Path(args.out + ".md"), "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
