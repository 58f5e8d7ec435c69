"""``--padaudit-report``: terminal table, JSON, Markdown, JUnit, reproduction, xdist."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET

import pytest

from pytest_padaudit.render import report as render

pytest.importorskip("torch")  # the pytester runs audit torch models (conftest.py warms torch up)

MODELS = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, padding_idx=0):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 4, padding_idx=padding_idx)
        self.out = nn.Linear(4, 3)

    def forward(self, ids):
        return self.out(self.emb(ids))


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder_stack_with_a_long_name = nn.ModuleDict(
            {"token_embedding_table_for_subword_pieces": nn.Embedding(20, 4, padding_idx=0)}
        )
        self.out = nn.Linear(4, 3)

    def forward(self, ids):
        stack = self.encoder_stack_with_a_long_name
        return self.out(stack["token_embedding_table_for_subword_pieces"](ids))
"""

TESTS = """
import pytest
from padmodels import Tiny


@pytest.fixture
def model():
    return Tiny()


@pytest.mark.padaudit
def test_clean(model):
    pass


def test_leaky(padaudit):
    padaudit(Tiny(padding_idx=None), pad_idx=0)


def test_two(padaudit):
    padaudit(Tiny())
    padaudit(Tiny(), seed=5)


def test_nothing():
    pass
"""

CLEAN_ROW = ["test_report_demo.py::test_clean", "torch", "Tiny", "emb", "0", "0", "0"]


@pytest.fixture
def demo(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    pytester.makepyfile(padmodels=MODELS, test_report_demo=TESTS)
    return pytester


def section(result: pytest.RunResult) -> list[str]:
    """Return the lines of the ``padaudit report`` terminal section (one, asserted)."""
    lines = result.outlines
    starts = [i for i, line in enumerate(lines) if " padaudit report " in line]
    assert len(starts) == 1, "\n".join(lines)
    body = lines[starts[0] + 1 :]
    end = next((i for i, line in enumerate(body) if line.startswith("=")), len(body))
    return body[:end]


def test_terminal_table_has_clean_and_leaking_rows(demo: pytest.Pytester) -> None:
    result = demo.runpytest("--padaudit-report")
    result.assert_outcomes(passed=3, failed=1)
    lines = section(result)
    assert lines[0].split() == [
        *("test", "framework", "model", "layer", "pad", "id"),
        *("grad", "max|g|", "update", "max|Δ|", "inv.", "rel.", "diff", "verdict"),
    ]
    rows = {line.split()[0]: line.split() for line in lines[2:-1]}
    assert rows["test_report_demo.py::test_clean"] == [*CLEAN_ROW, "0", "clean"]
    leaky = rows["test_report_demo.py::test_leaky"]
    assert leaky[:5] == ["test_report_demo.py::test_leaky", "torch", "Tiny", "emb", "0"]
    assert float(leaky[5]) > 0 and float(leaky[6]) > 0 and leaky[7] == "(no_padding_idx)"
    assert leaky[-3:] == ["LEAK:", "grad,", "update"]
    assert [line.split()[0] for line in lines[2:-1]].count("test_report_demo.py::test_two") == 2
    assert "test_nothing" not in "\n".join(lines)
    assert lines[-1] == "4 tables audited in 3 tests: 1 leaking"


def test_leaking_rows_are_red_when_colour_is_on(demo: pytest.Pytester) -> None:
    result = demo.runpytest("--padaudit-report", "--color=yes")
    lines = section(result)
    leak = [line for line in lines if "LEAK" in line]
    clean = [line for line in lines if "test_clean" in line]
    assert len(leak) == 1 and "\x1b[31m" in leak[0]
    assert len(clean) == 1 and "\x1b[31m" not in clean[0]
    assert "\x1b[31m" in lines[-1]  # the total says there is a leak


def test_long_layer_and_test_names_are_never_cut(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "150")
    pytester.makepyfile(
        padmodels=MODELS,
        test_long=textwrap.dedent(
            """
            import pytest
            from padmodels import Deep, Tiny

            @pytest.mark.parametrize("name", ["a-parameter-id-that-makes-this-test-id-long"])
            def test_deep_model_with_a_rather_long_test_function_name(padaudit, name):
                padaudit(Deep())

            def test_short(padaudit):
                padaudit(Tiny())
            """
        ),
    )
    result = pytester.runpytest("--padaudit-report")
    result.assert_outcomes(passed=2)
    lines = section(result)
    assert all(len(line) <= 150 for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    assert "…" not in text
    test_id = (
        "test_long.py::test_deep_model_with_a_rather_long_test_function_name"
        "[a-parameter-id-that-makes-this-test-id-long]"
    )
    assert f"{test_id} · Deep (torch)" in lines  # the parameter id is whole
    layer = "encoder_stack_with_a_long_name.token_embedding_table_for_subword_pieces"
    assert any(line.split()[0] == layer for line in lines if line.strip())
    assert "test_long.py::test_short · Tiny (torch)" in lines


def test_narrow_terminal_puts_each_audit_under_a_heading(
    demo: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = demo.runpytest("--padaudit-report")
    lines = section(result)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    assert lines[0].split() == [
        "layer",
        "pad",
        "max|g|",
        "max|Δ|",
        "(cause)",
        "inv.diff",
        "verdict",
    ]
    headings = [line for line in lines if not line.startswith(" ")]
    assert headings[:4] == [
        "test_report_demo.py::test_clean · Tiny (torch)",
        "test_report_demo.py::test_leaky · Tiny (torch)",
        "test_report_demo.py::test_two · Tiny (torch)",
        "test_report_demo.py::test_two · Tiny (torch)",
    ]
    leaky = lines[lines.index(headings[1]) + 1].split()
    assert leaky[0] == "emb" and leaky[-3:] == ["LEAK:", "grad,", "update"]
    assert lines[-1] == "4 tables audited in 3 tests: 1 leaking"


def test_json_markdown_and_term_at_once(demo: pytest.Pytester) -> None:
    result = demo.runpytest(
        "--padaudit-report=json:out/audits.json",
        "--padaudit-report=md:summary.md",
        "--padaudit-report",
    )
    result.assert_outcomes(passed=3, failed=1)
    assert section(result)[-2] == f"padaudit json report written to {demo.path / 'out/audits.json'}"
    data = json.loads((demo.path / "out/audits.json").read_text())
    assert data["version"] == render.JSON_VERSION
    assert data["summary"] == {
        "tests": 3,
        "audits": 4,
        "tables": 4,
        "leaking": 1,
        "allowed": 0,
        "skipped": 0,
        "failed_audits": 1,
    }
    tests = [a["test"] for a in data["audits"]]
    assert tests == [f"test_report_demo.py::test_{n}" for n in ("clean", "leaky", "two", "two")]
    assert [a["seed"] for a in data["audits"]] == [0, 0, 0, 5]
    assert [a["options"]["seed"] for a in data["audits"]] == [0, 0, 0, 5]
    leaky = data["audits"][1]
    assert leaky["passed"] is False and leaky["options"]["pad_idx"] == 0
    assert [(f["check"], f["layer"], f["cause"]) for f in leaky["findings"]] == [
        ("grad", "emb", "no_padding_idx"),
        ("update", "emb", "no_padding_idx"),
    ]
    md = (demo.path / "summary.md").read_text()
    assert md.startswith("### padaudit report\n\n**4 tables audited in 3 tests: 1 leaking**\n")
    assert "| test | framework | model | layer | pad id | grad max\\|g\\| |" in md
    assert (
        "| `test_report_demo.py::test_clean` | torch | Tiny | `emb` | 0 | 0 | 0 | 0 | ✅ clean |"
        in md
    )
    leak_rows = [line for line in md.splitlines() if "❌ **LEAK: grad, update**" in line]
    assert len(leak_rows) == 1 and "test_leaky" in leak_rows[0]
    assert "<summary>2 findings</summary>" in md and "construct it with padding_idx=0" in md


def test_ini_sets_the_default_and_none_drops_it(demo: pytest.Pytester) -> None:
    demo.makeini("[pytest]\npadaudit_report = json:ini.json term\n")
    result = demo.runpytest()
    assert section(result)[-2] == "4 tables audited in 3 tests: 1 leaking"
    assert json.loads((demo.path / "ini.json").read_text())["summary"]["audits"] == 4
    (demo.path / "ini.json").unlink()
    result = demo.runpytest("--padaudit-report=none")
    assert "padaudit report" not in result.stdout.str()
    assert not (demo.path / "ini.json").exists()


def test_bad_report_value_is_a_usage_error(demo: pytest.Pytester) -> None:
    result = demo.runpytest("--padaudit-report=html")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--padaudit-report='html' is not a padaudit report: pass term, json, json:PATH, json-*"]
    )


def test_a_path_after_the_bare_option_stays_a_path(demo: pytest.Pytester) -> None:
    """``pytest --padaudit-report tests`` reports on the terminal and runs ``tests`` only."""
    sub = demo.mkdir("tests")
    (demo.path / "test_report_demo.py").rename(sub / "test_report_demo.py")
    (demo.path / "padmodels.py").rename(sub / "padmodels.py")
    demo.makepyfile(test_outside="def test_outside():\n    assert False\n")
    result = demo.runpytest("--padaudit-report", "tests")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # test_leaky, not a usage error
    result.assert_outcomes(passed=3, failed=1)  # test_outside was not collected
    assert section(result)[-1] == "4 tables audited in 3 tests: 1 leaking"
    result = demo.runpytest("--padaudit-report", "json:r.json", "tests")
    assert json.loads((demo.path / "r.json").read_text())["summary"]["audits"] == 4


def test_md_without_path_appends_to_github_step_summary(
    demo: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = demo.path / "step_summary.md"
    summary.write_text("## earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    result = demo.runpytest("--padaudit-report=md")
    result.stdout.fnmatch_lines([f"padaudit md report appended to {summary}"])
    text = summary.read_text()
    assert text.startswith("## earlier step\n### padaudit report\n")
    assert text.count("❌ **LEAK") == 1
    assert not (demo.path / render_default("md")).exists()


def render_default(kind: str) -> str:
    from pytest_padaudit.plugin.reporting import DEFAULT_PATHS

    return DEFAULT_PATHS[kind]


def test_junit_xml_carries_each_audit_as_properties(demo: pytest.Pytester) -> None:
    demo.runpytest("--junitxml=junit.xml")
    cases = {c.get("name"): c for c in ET.parse(demo.path / "junit.xml").iter("testcase")}
    props = {
        name: [(p.get("name"), p.get("value")) for p in case.iter("property")]
        for name, case in cases.items()
    }
    assert props["test_nothing"] == []
    assert [n for n, _ in props["test_two"]] == ["padaudit", "padaudit_json"] * 2
    (name, line), (_, raw) = props["test_leaky"]
    assert name == "padaudit"
    assert line.startswith("Tiny (torch), seed 0: LEAK: [grad] emb: pad-row gradient max|g| = ")
    audit = json.loads(raw)
    assert audit["test"] == "test_report_demo.py::test_leaky" and audit["passed"] is False
    assert props["test_clean"][0] == ("padaudit", "Tiny (torch), seed 0: passed (1 table)")


@pytest.mark.usefixtures("ci")  # as on a developer's machine and as on CI
def test_failing_audit_attaches_the_reproduction(demo: pytest.Pytester) -> None:
    result = demo.runpytest("--padaudit-seed=3")
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    assert out.count(" padaudit reproduction ") == 1
    assert out.index("PadLeakError") < out.index(" padaudit reproduction ")
    # each line once: reproduce and rerun are in the failure message, not again below it
    assert out.count("reproduce: audit(model, pad_idx=0, seed=3)") == 1
    assert out.count("rerun:     pytest 'test_report_demo.py::test_leaky' --padaudit-seed=3") == 1
    result.stdout.fnmatch_lines(
        [
            "*- padaudit reproduction -*",
            "model:     Tiny (torch), seed 3",
            'options:   {"allow": [], *"pad_idx": 0, *"seed": 3, *}',
            "batch:     pad id 0, right padding, lengths [[]16, *], seed 3; ids:",
            "  [[]*, 0]",
        ]
    )


def test_json_hook_in_conftest_adjusts_the_data(demo: pytest.Pytester) -> None:
    demo.makeconftest(
        """
        def padaudit_report_json(config, data):
            data["ci"] = {"seed_option": config.getoption("padaudit_seed")}
            for audit in data["audits"]:
                del audit["batch"]["ids"]
        """
    )
    demo.runpytest("--padaudit-report=json", "--padaudit-seed=2")
    data = json.loads((demo.path / render_default("json")).read_text())
    assert data["ci"] == {"seed_option": 2}
    assert all("ids" not in a["batch"] and a["batch"]["seed"] == 2 for a in data["audits"])


def test_json_hook_is_a_pytest_hook_a_conftest_implements_natively(
    demo: pytest.Pytester,
) -> None:
    demo.makeconftest(
        """
        def pytest_padaudit_report_json(config, data):
            data["order"] = ["pytest"]

        def padaudit_report_json(config, data):
            data["order"].append("padaudit")
        """
    )
    result = demo.runpytest("--padaudit-report=json")
    result.assert_outcomes(passed=3, failed=1)
    data = json.loads((demo.path / render_default("json")).read_text())
    assert data["order"] == ["pytest", "padaudit"]  # the pytest hook first, then padaudit's


def test_result_hook_in_conftest_collects_and_vetoes(demo: pytest.Pytester) -> None:
    demo.makeconftest(
        """
        SEEN = []

        def padaudit_audit_finished(report):
            SEEN.append(report.model)
            for finding in report.findings:
                finding.allowed = True  # veto: this project accepts the leak

        def pytest_sessionfinish(session):
            print("audits seen:", len(SEEN))
        """
    )
    result = demo.runpytest("--padaudit-report", "-s")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*audits seen: 4*"])
    leaky = next(line for line in section(result) if "test_leaky" in line)
    assert leaky.endswith("  allowed: no_padding_idx")
    assert section(result)[-1] == "4 tables audited in 3 tests: 0 leaking, 1 allowed"


def test_xdist_controller_prints_one_merged_report(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    summary = pytester.path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    pytester.makepyfile(padmodels=MODELS, test_report_demo=TESTS)
    pytester.makepyfile(
        test_more=textwrap.dedent(
            """
            import pytest
            from padmodels import Tiny

            @pytest.mark.parametrize("seed", [1, 2, 3])
            def test_seeded(padaudit, seed):
                padaudit(Tiny(), seed=seed)
            """
        )
    )
    result = pytester.runpytest_subprocess(
        "-n", "2", "--padaudit-report", "--padaudit-report=json:merged.json", "--padaudit-report=md"
    )
    result.assert_outcomes(passed=6, failed=1)
    expected = [
        *(f"test_more.py::test_seeded[{s}]" for s in (1, 2, 3)),
        *(f"test_report_demo.py::test_{n}" for n in ("clean", "leaky", "two", "two")),
    ]
    lines = section(result)
    assert [line.split()[0] for line in lines[2:-3]] == expected
    assert lines[-3] == "7 tables audited in 6 tests: 1 leaking"
    assert lines[-2] == f"padaudit json report written to {pytester.path / 'merged.json'}"
    assert lines[-1] == f"padaudit md report appended to {summary}"
    data = json.loads((pytester.path / "merged.json").read_text())
    assert [a["test"] for a in data["audits"]] == expected
    assert [a["seed"] for a in data["audits"][:3]] == [1, 2, 3]
    text = summary.read_text()  # appended once, by the controller only
    assert text.count("### padaudit report") == 1 and text.count("| `test_") == 7
    assert "gw0" not in text and "gw1" not in text


# -- the renderer on its own ---------------------------------------------------------------


TABLE = {"kind": "Embedding", "pad_idx": None, "rows": 20, "skipped": None, "grad": None}
TABLE |= {"update": None, "update_cause": None, "tied_with": []}


def _audit(test: str, layer: str, *, leak: bool = False) -> dict:
    finding = {
        "check": "grad",
        "layer": layer,
        "allowed": False,
        "cause": "no_padding_idx",
        "message": "m",
        "why": "w",
        "fix": "f",
    }
    return {
        "test": test,
        "framework": "torch",
        "model": "Tiny",
        "passed": not leak,
        "seed": 0,
        "tables": [
            {**TABLE, "layer": layer, "pad_idx": 0, "grad": 0.5 if leak else 0.0},
            {**TABLE, "layer": "unpadded", "skipped": "no pad id: pass pad_idx= to audit it"},
        ],
        "findings": [finding] if leak else [],
        "invariance": {"value": "inf" if leak else 1e-9, "skipped": None},
    }


def _layer_cells(lines: list[tuple[str, str]], width: int) -> list[str]:
    """Rebuild each row's layer cell from a narrow table (continuation lines joined)."""
    body = [line for line, status in lines[2:] if line.startswith("  ")]
    cells: list[str] = []
    for line in body:
        first = line[2 : 2 + width].strip()
        if line[4 + width : 7 + width].strip():  # a row's first line: it has a pad id
            cells.append(first)
        else:
            cells[-1] += first
    return cells


def test_render_table_wraps_long_layers_and_keeps_them_apart_at_80_columns() -> None:
    layers = [f"bert.embeddings.{n}_embeddings" for n in ("word", "position", "token_type")]
    audit = _audit("tests/test_models.py::test_bert[tiny-config]", layers[0], leak=True)
    audit["tables"] = [{**audit["tables"][0], "layer": name} for name in layers]
    audit["findings"].append({**audit["findings"][0], "check": "invariance", "layer": "(model)"})
    lines = render.render_table([audit], width=80)
    assert all(len(line) <= 80 for line, _ in lines), "\n".join(x for x, _ in lines)
    text = "\n".join(line for line, _ in lines)
    assert "…" not in text and "tests/test_models.py::test_bert[tiny-config]" in text
    width = len(lines[1][0].split()[0])  # the dashes under "layer"
    assert _layer_cells(lines, width) == layers  # whole, wrapped at the dots
    statuses = [status for _, status in lines]
    assert statuses.count("leak") >= 1 + 3  # the heading and every row of the leaking audit


def test_80_columns_break_layer_paths_only_after_a_dot() -> None:
    """A tied head's cell and the update cause wrap too, so no identifier is split."""
    layers = [f"bert.embeddings.{n}_embeddings" for n in ("word", "position", "token_type")]
    audit = _audit("tests/test_models.py::test_bert_tagger[long-id]", layers[0], leak=True)
    audit["tables"] = [
        {**audit["tables"][0], "layer": n, "head_grad": 0.5, "update": 0.1, "update_cause": "tied"}
        for n in layers
    ]
    lines = render.render_table([audit], width=80)
    assert all(len(line) <= 80 for line, _ in lines), "\n".join(x for x, _ in lines)
    width = len(lines[1][0].split()[0])
    layer_lines = [line[2 : 2 + width].strip() for line, _ in lines[2:] if line.startswith("  ")]
    parts = [p for p in layer_lines if p]
    assert all(p.endswith(".") or p.endswith("_embeddings") for p in parts), parts
    assert _layer_cells(lines, width) == layers


def test_render_table_keeps_whole_test_ids_at_140_to_180_columns() -> None:
    layer = "encoder.layers.0.attention.self.token_type_embeddings"
    audits = [_audit("tests/test_a.py::test_one", layer, leak=True)]
    for width in (140, 150):  # too narrow for one line per row: headings, nothing cut
        lines = render.render_table(audits, width=width)
        assert lines[2] == ("tests/test_a.py::test_one · Tiny (torch)", "leak")
        assert lines[3][0].split()[0] == layer and lines[3][1] == "leak"
    lines = render.render_table(audits, width=180)
    row = lines[2][0]
    assert len(row) <= 180 and lines[2][1] == "leak"
    assert row.split()[0] == "tests/test_a.py::test_one" and row.split()[3] == layer
    assert row.split()[-2:] == ["LEAK:", "grad"] and row.split()[-3] == "inf"
    assert lines[3][1] == "skipped" and lines[3][0].endswith("skipped: no pad id")
    long_id = "examples/test_torch_models.py::test_classifiers_with_adamw[bag]"
    narrow = render.render_table([_audit(long_id, "bag")], width=60)
    assert all(len(line) <= 60 for line, _ in narrow)
    headings = [line.strip() for line, status in narrow if status == "audit"]
    assert long_id in "".join(headings)  # wrapped, not cut to examples…amw[bag]


def test_summary_counts_audited_tables_and_a_finding_without_table() -> None:
    audit = _audit("t::x", "emb")
    audit["findings"] = [{**_audit("t::x", "(model)", leak=True)["findings"][0]}]
    audit["passed"] = False
    summary = render.summarize([audit, _audit("t::y", "emb")])
    assert render.total_line(summary) == ("2 tables audited in 2 tests: 1 leaking, 2 skipped")
    assert render.primitives({"a": float("nan"), "b": (1, float("-inf"))}) == {
        "a": "nan",
        "b": [1, "-inf"],
    }


def test_json_text_is_strict() -> None:
    text = render.dump_json(render.build_json([_audit("t::x", "emb", leak=True)], "g"))
    assert json.loads(text)["audits"][0]["invariance"]["value"] == "inf"


def test_json_is_compact_and_json_pretty_is_indented(demo: pytest.Pytester) -> None:
    demo.runpytest("--padaudit-report=json:small.json", "--padaudit-report=json-pretty:big.json")
    small, big = (demo.path / "small.json").read_text(), (demo.path / "big.json").read_text()
    assert json.loads(small) == json.loads(big)
    assert small.count("\n") == 1 and '"version":1' in small  # one line, no spaces
    assert '\n  "version": 1,' in big and len(big) > 2 * len(small)
