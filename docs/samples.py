"""Regenerate the README's output samples from a real run of the demo.

    python docs/samples.py            # print the samples a fresh run gives
    python docs/samples.py --write    # put them into README.md
    python docs/samples.py --check    # exit 1 (with a diff) when README.md differs

Each sample in README.md follows a marker line ``<!-- sample: NAME -->`` and is the
fenced block right after it. The samples come from running the README's demo command,
``pytest examples --padaudit-report``, in an 80-column terminal. tests/plugin/test_examples.py
runs the demo once and fails when a README sample differs from that run.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: the README's demo command, as run here (plus no cache, so a run leaves nothing behind).
DEMO = ("examples", "--padaudit-report", "-p", "no:cacheprovider")
COLUMNS = "80"
MARKER = re.compile(r"^<!-- sample: (?P<name>[\w-]+) -->$")


def run_demo() -> str:
    """Run the demo as the README shows it; return its terminal output."""
    env = {**os.environ, "COLUMNS": COLUMNS, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *DEMO],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout


def samples(output: str) -> dict[str, str]:
    """Cut the README's samples out of the demo's output."""
    lines = output.splitlines()
    return {
        "failure": "\n".join(_failure(lines, "LeakyClassifier (torch)")),
        "report": "\n".join(_report(lines)),
    }


def _failure(lines: Sequence[str], needle: str) -> list[str]:
    """Return the failure message (without pytest's frame) of the test that names ``needle``."""
    start = next(
        i for i, line in enumerate(lines) if line.startswith("padaudit found") and needle in line
    )
    end = next(i for i in range(start, len(lines)) if "padaudit reproduction" in lines[i])
    return _strip_tail(lines[start:end])


def _report(lines: Sequence[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if " padaudit report " in line)
    end = next(i for i in range(start, len(lines)) if re.match(r"\d+ tables? audited", lines[i]))
    return list(lines[start : end + 1])


def _strip_tail(lines: Sequence[str]) -> list[str]:
    out = list(lines)
    while out and not out[-1].strip():
        out.pop()
    return out


def render(readme: str, fresh: dict[str, str]) -> str:
    """Return ``readme`` with every marked sample replaced by its fresh text."""
    lines = readme.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        match = MARKER.match(lines[i])
        if match and i + 1 < len(lines) and lines[i + 1].startswith("```"):
            name = match["name"]
            if name not in fresh:
                raise SystemExit(f"README.md names an unknown sample {name!r}")
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            out += [lines[i + 1], *fresh[name].splitlines(), lines[end]]
            i = end
        i += 1
    return "\n".join(out) + "\n"


def diff(readme: str, expected: str) -> str:
    return "".join(
        difflib.unified_diff(
            readme.splitlines(True), expected.splitlines(True), "README.md", "fresh run"
        )
    )


def main(argv: Sequence[str]) -> int:
    fresh = samples(run_demo())
    readme = README.read_text(encoding="utf-8")
    expected = render(readme, fresh)
    if "--write" in argv:
        README.write_text(expected, encoding="utf-8")
        return 0
    if "--check" in argv:
        changes = diff(readme, expected)
        sys.stdout.write(changes or "README.md samples are up to date\n")
        return 1 if changes else 0
    for name, text in fresh.items():
        print(f"<!-- sample: {name} -->\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
