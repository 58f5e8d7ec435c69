"""Benchmark pytest-padaudit against the bare training work it wraps.

Run ``python bench/run.py`` (``--quick`` for fewer repeats). Every figure is a ratio measured
inside one run, because absolute times on shared machines are noise, or a time where its
target is one. Prints a table with each figure beside its target and writes
``bench/results/latest.json``. ``--parts suite`` times the project's own test run (minutes),
which a default run lists without a value.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import suite  # noqa: E402
from first import first_audits  # noqa: E402
from frameworks import FRAMEWORKS, SMALL, Bench  # noqa: E402
from jitted import jitted_ratios  # noqa: E402
from real import MODELS, RealModel  # noqa: E402
from timing import interleaved, paired  # noqa: E402

BATCH, SEQ = 32, 128


def startup(repeats: int) -> list[dict[str, object]]:
    """Run a one-test file with ``-p pytest_padaudit.plugin`` and without, plugins isolated.

    ``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1`` keeps every other installed plugin out, whose import
    times (hypothesis' alone is about a second) would drown the figure. Runs are interleaved
    and the figure is the median of the per-round differences. A third arm loads an empty
    plugin with ``-p``: what pytest itself charges for any ``-p`` plugin (it scans every
    installed distribution's entry points for the name), which the plugin cannot change.
    Bytecode caching stays on, as on a user's machine: the warm-up run writes the caches.
    """
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "test_one.py").write_text("def test_one():\n    assert True\n")
        (root / "padaudit_bench_empty.py").write_text('"""An empty pytest plugin."""\n')
        (root / "conftest.py").write_text(
            "import sys\n"
            "def pytest_unconfigure(config):\n"
            "    heavy = [m for m in ('torch', 'tensorflow', 'keras', 'jax') if m in sys.modules]\n"
            "    open('heavy.txt', 'w').write(' '.join(heavy))\n"
        )
        base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_one.py"]
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"

        def run(*extra: str) -> Callable[[], object]:
            return lambda: subprocess.run(
                [*base, *extra], cwd=root, env=env, check=True, capture_output=True
            )

        plugin = run("-p", "pytest_padaudit.plugin")
        plugin()  # the warm-up below runs it first: bytecode caches are written by then
        tp, tn, te = interleaved((plugin, run(), run("-p", "padaudit_bench_empty")), repeats)
        plugin()
        heavy = (root / "heavy.txt").read_text().split()
    extra = statistics.median(a - b for a, b in zip(tp, tn, strict=True)) * 1e3
    own = statistics.median(a - b for a, b in zip(tp, te, strict=True)) * 1e3
    ms = [f"{statistics.median(t) * 1e3:.0f}" for t in (tp, tn, te)]
    return [
        {
            "figure": f"pytest start-up, -p pytest_padaudit.plugin vs none, autoload off "
            f"(median of {repeats} paired differences)",
            "value": extra,
            "unit": "ms",
            "target": "<= +10 ms, no framework imported",
            "ok": extra <= 10 and not heavy,
            "detail": f"{ms[0]} vs {ms[1]} ms; frameworks imported: {heavy or 'none'}",
        },
        {
            "figure": "  of which the plugin's own (vs an empty -p plugin; information only)",
            "value": own,
            "unit": "ms",
            "target": "",
            "ok": None,
            "detail": f"empty -p plugin {ms[2]} ms",
        },
    ]


def ratios(bench: Bench, repeats: int) -> list[dict[str, object]]:
    """Time the audit against the bare work on one framework's models."""
    from pytest_padaudit import audit

    rows = []
    grad_times = {}
    for name, make in bench.models():
        options = {"batch_size": BATCH, "seq_len": SEQ}
        n = max(3, repeats // 3) if "1M" in name or "encoder" in name else repeats

        model = make()

        def grad_audit(model: object = model, options: dict = options) -> object:
            return audit(model, checks=("grad",), **options)

        grad, fb = paired(grad_audit, bench.forward_backward(model), n)
        model = make()

        def full_audit(model: object = model, options: dict = options) -> object:
            return audit(model, **options)

        full, step = paired(full_audit, bench.train_step(model), n)
        grad_times[name] = (grad, fb)
        rows.append(
            {
                "figure": f"{bench.name} {name}: audit(grad) / bare forward+backward",
                "value": grad / fb,
                "unit": "x",
                "target": "<= 1.2x",
                "ok": grad / fb <= 1.2,
                "detail": f"{grad * 1e3:.1f} / {fb * 1e3:.1f} ms",
            }
        )
        rows.append(
            {
                "figure": f"{bench.name} {name}: default audit / bare train step",
                "value": full / step,
                "unit": "x",
                "target": "<= 2.5x",
                "ok": full / step <= 2.5,
                "detail": f"{full * 1e3:.1f} / {step * 1e3:.1f} ms",
            }
        )
    (g1, f1), (g0, f0) = grad_times["pool 1M"], grad_times["pool 10k"]
    scaling = (g1 / g0) / (f1 / f0)
    rows.append(
        {
            "figure": f"{bench.name}: grad-check 1M/10k vocab over bare forward+backward 1M/10k",
            "value": scaling,
            "unit": "",
            "target": "<= 1.2",
            "ok": scaling <= 1.2,
            "detail": f"audit {g1 / g0:.2f}x, bare {f1 / f0:.2f}x",
        }
    )
    return rows


def small_encoder_ratio(bench: Bench, repeats: int) -> dict[str, object]:
    """Time a default audit of the small encoder against a bare train step, both 16 x 64."""
    from pytest_padaudit import audit

    batch, seq = SMALL
    model = bench.small_encoder()
    full, step = paired(
        lambda: audit(model, batch_size=batch, seq_len=seq), bench.train_step(model, SMALL), repeats
    )
    return {
        "figure": f"small encoder (2 layers, d=128, batch {batch}x{seq}), {bench.name}: "
        "default audit / train step",
        "value": full / step,
        "unit": "x",
        "target": "<= 2.5x",
        "ok": full / step <= 2.5,
        "detail": f"{full * 1e3:.1f} / {step * 1e3:.1f} ms",
    }


def real_ratios(real: RealModel, repeats: int) -> list[dict[str, object]]:
    """Time the audit of a real-library model against its bare work, each on a fresh model.

    Issue 21 holds the default audit to 2.5x the train step, and the keras-hub model's one
    audit to an absolute time; audit(grad) over forward+backward stays a figure only.
    """
    from pytest_padaudit import audit

    options = {"batch_size": BATCH, "seq_len": SEQ, **real.options}
    n = max(3, repeats // 3)
    model = real.make()
    grad, fb = paired(
        lambda: audit(model, checks=("grad",), **options), real.forward_backward(model), n
    )
    other = real.make()
    full, step = paired(lambda: audit(other, **options), real.train_step(other), n)
    rows: list[dict[str, object]] = [
        {
            "figure": f"{real.name}: audit(grad) / bare forward+backward",
            "value": grad / fb,
            "unit": "x",
            "target": "info (1.2x on the pools)",
            "ok": None,
            "detail": f"{grad * 1e3:.1f} / {fb * 1e3:.1f} ms",
        },
        {
            "figure": f"{real.name}: default audit / bare train step",
            "value": full / step,
            "unit": "x",
            "target": "<= 2.5x",
            "ok": full / step <= 2.5,
            "detail": f"{full * 1e3:.1f} / {step * 1e3:.1f} ms",
        },
    ]
    if real.audit_target_s is not None:
        rows.append(
            {
                "figure": f"{real.name}: one audit",
                "value": full,
                "unit": "s",
                "target": f"<= {real.audit_target_s:g} s",
                "ok": full <= real.audit_target_s,
                "detail": f"median warm default audit at {BATCH}x{SEQ}; "
                f"bare train step {step * 1e3:.1f} ms",
            }
        )
    return rows


def memory(bench: Bench) -> dict[str, object]:
    """Measure in a fresh process: peak RSS after an audit minus after bare train steps."""
    code = (
        f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
        "from frameworks import FRAMEWORKS\n"
        f"print(FRAMEWORKS[{bench.name!r}]().peak_rss_extra())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError((out.stderr.strip().splitlines() or ["no output"])[-1])
    extra, table = (float(x) for x in out.stdout.split()[-2:])
    return {
        "figure": f"{bench.name} pool 1M: peak RSS of an audit minus a bare train step",
        "value": extra / table,
        "unit": "x tables",
        "target": "<= 1.1x the audited tables' bytes",
        "ok": extra / table <= 1.1,
        "detail": f"{extra / 2**20:.0f} MiB extra, tables {table / 2**20:.0f} MiB",
    }


def stamped(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Note the 1-minute load average beside each figure just measured."""
    for row in rows:
        row["load"] = round(os.getloadavg()[0], 1)
    return rows


def measured(label: str, part: Callable[..., object], *args: object) -> list[dict[str, object]]:
    """Run ``part(*args)`` (one row or a list) and stamp its rows; a raise gives a failed row.

    The other parts' figures still print: the source under test may be mid-edit.
    """
    try:
        got = part(*args)
    except Exception as error:
        return [{"figure": f"{label}: failed: {error!r}"[:160], "value": None, "ok": False}]
    return stamped(got if isinstance(got, list) else [got])


#: what a run measures unless ``--parts`` says otherwise; ``suite`` takes minutes
PARTS = ("startup", "first", "jitted", "ratios", "real", "memory")
ALL_PARTS = (*PARTS, "suite")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    parser.add_argument("--only", choices=sorted(FRAMEWORKS), help="one framework")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(ALL_PARTS)} (default: all but suite)",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - set(ALL_PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(ALL_PARTS))}; choose from {ALL_PARTS}")
    repeats = 5 if args.quick else 15
    started = time.time()
    rows = measured("startup", startup, 20) if "startup" in parts else []
    rows += measured("first", first_audits) if "first" in parts and not args.only else []
    if "jitted" in parts and not args.only:
        rows += measured("jitted", jitted_ratios, repeats)
    for name, make in FRAMEWORKS.items():
        if (args.only and name != args.only) or not parts & {"ratios", "real", "memory"}:
            continue
        bench = make()
        if not bench.available():
            rows.append({"figure": f"{name}: not installed", "value": None, "ok": None})
            continue
        if "ratios" in parts:
            rows += measured(f"{name} ratios", ratios, bench, repeats)
            rows += measured(f"{name} small encoder", small_encoder_ratio, bench, repeats)
        if "real" in parts:
            for real in MODELS:
                if real.module.split(",")[0] != bench.module:
                    continue
                if not real.available():
                    rows.append(
                        {"figure": f"{real.name}: not installed", "value": None, "ok": None}
                    )
                    continue
                rows += measured(real.name, real_ratios, real, repeats)
        if "memory" in parts:
            rows += measured(f"{name} memory", memory, bench)
    if "suite" in parts:
        rows += measured("suite", suite.suite)
    elif parts == set(PARTS):
        rows.append(suite.placeholder())
    print_table(rows)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    load = "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"\nmachine: {machine}; {load}; took {time.time() - started:.0f} s")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(
        json.dumps({"machine": machine, "load": load, "rows": rows}, indent=2)
    )
    return 0 if all(r["ok"] is not False for r in rows) else 1


def print_table(rows: list[dict[str, object]]) -> None:
    head = ("figure", "value", "target", "ok", "load", "detail")
    cells = [
        (
            str(r["figure"]),
            "" if r.get("value") is None else f"{r['value']:.2f} {r.get('unit', '')}".strip(),
            str(r.get("target", "")),
            {True: "yes", False: "NO", None: "-"}[r["ok"]],
            str(r.get("load", "")),
            str(r.get("detail", "")),
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    for line in [head, tuple("-" * w for w in widths), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
