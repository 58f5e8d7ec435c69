"""Print the real-library zoo's table: ground truth against the audit's verdict, per check.

Run from the repository root: ``python tests/support/zoo_table.py [torch|keras] [model id ...]``.
A cell in bold shows ``truth / audit: verdict`` where they disagree.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support

from support.zoo_common import format_numbers, format_table, run_row


def main(argv: list[str]) -> int:
    """Run the chosen zoos (default: both) and print the table and the numbers."""
    sides = [a for a in argv if a in ("torch", "keras")] or ["torch", "keras"]
    only = {a for a in argv if a not in ("torch", "keras")}
    rows = []
    start = time.perf_counter()
    for side in sides:
        if side == "torch":
            import torch

            from support import zoo_hf as zoo
            from support import zoo_torch_truth as truth

            torch.set_num_threads(1)  # as the tests run them: tiny models, one thread
        else:
            from support import zoo_keras_hub as zoo

            truth = zoo
        for entry in zoo.entries():
            if only and entry.id not in only:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(run_row(entry, Path(tmp), truth.truth, truth.name))
    total = time.perf_counter() - start
    print(format_table(rows))
    print()
    print(format_numbers(rows))
    disagree = sum(r.truth[c] != r.verdict[c] for r in rows for c in r.truth)
    print(f"\n{len(rows)} models, {disagree} disagreements, {total:.1f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
