"""The memory report against the paper's table, cell by cell, and its parts against hand counts.

The paper's numbers are transcribed here again from its tables (arXiv 2506.16659 v2), not imported, so a
typo in the report's own copy fails a test. Cells the paper gets wrong by its own rule are asserted at the values the
documented explanation gives, for both conventions.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from optsweep.optim.registry import optimizer_class
from optsweep.report import memory
from optsweep.report.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SIZES = ("llama_60m", "llama_130m", "llama_350m", "llama_1b", "llama_7b")

# arXiv 2506.16659 v2, memory in GB (model + optimizer); 7B only for the four methods it was run with.
PAPER = {
    "adam": (0.35, 0.81, 2.21, 8.04),
    "stable_spam": (0.35, 0.81, 2.21, 8.04),
    "muon": (0.23, 0.54, 1.47, 5.36, 26.95),
    "galore": (0.28, 0.61, 1.59, 4.76),
    "fira": (0.28, 0.61, 1.59, 4.76),
    "swan": (0.25, 0.46, 1.00, 3.20),
    "apollo": (0.28, 0.61, 1.59, 4.76, 16.14),
    "apollo_mini": (0.25, 0.46, 1.00, 3.20, 14.53),
    "scale": (0.15, 0.32, 0.80, 2.81, 13.74),
}
PAPER["adamw"] = PAPER["adam"]
CELLS = [(name, size, gb) for name, row in PAPER.items() for size, gb in zip(SIZES, row)]

# (paper rule, measured) where the paper disagrees with its own accounting or with the real optimizer.
DOCUMENTED = {
    # 3 x params x 2 bytes = 0.8046 / 8.0345 GB; the paper prints 0.81 / 8.04
    **{(n, "llama_130m"): (0.80, 0.80) for n in ("adam", "adamw", "stable_spam")},
    **{(n, "llama_1b"): (8.03, 8.03) for n in ("adam", "adamw", "stable_spam")},
    # the paper counts one buffer per parameter; real Muon: momentum on hidden matrices + AdamW elsewhere
    ("muon", "llama_60m"): (0.23, 0.30),
    ("muon", "llama_130m"): (0.54, 0.63),
    ("muon", "llama_350m"): (1.47, 1.60),
    ("muon", "llama_1b"): (5.36, 5.62),
    ("muon", "llama_7b"): (26.95, 27.48),
    # 1.59 matches no rank; rank 256 (the C4 scripts' rank at 350M) gives 1.39
    ("galore", "llama_350m"): (1.39, 1.39),
    ("fira", "llama_350m"): (1.39, 1.39),
    ("apollo", "llama_350m"): (1.39, 1.39),
    # the paper repeats GaLore's cells for APOLLO; APOLLO's own C4 ranks are 192 (130M) and 256 (1B, 7B)
    ("apollo", "llama_130m"): (0.57, 0.57),
    ("apollo", "llama_1b"): (3.98, 3.98),
    ("apollo", "llama_7b"): (16.62, 16.62),
    # the paper leaves APOLLO-Mini's rank-1 state out; it tips these two over the rounding boundary
    ("apollo_mini", "llama_130m"): (0.46, 0.47),
    ("apollo_mini", "llama_1b"): (3.20, 3.21),
}
RANKED = ("galore", "fira", "apollo")  # their cells depend on the rank the paper's settings file gives


def llama_params(vocab: int, hidden: int, ffn: int, layers: int) -> int:
    """Untied embedding and lm_head, per layer q/k/v/o + gate/up/down + two RMSNorms, a final RMSNorm."""
    return 2 * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * ffn + 2 * hidden) + hidden


def importable(name: str) -> str | None:
    try:
        optimizer_class(name)
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {error}"
    return None


@pytest.fixture(scope="module")
def table() -> dict[tuple[str, str], memory.MemoryRow]:
    names = [n for n in PAPER if importable(n) is None]
    rows = memory.memory_rows(names, SIZES, conf_dir=CONF)
    return {(r.optimizer, r.model): r for r in rows}


def test_param_counts_match_the_paper():
    row = memory.memory_rows(["sgd"], SIZES, conf_dir=CONF)
    counts = {r.model: r.params for r in row}
    assert counts["llama_60m"] == llama_params(32000, 512, 1376, 8) == 58_073_600
    assert counts["llama_130m"] == llama_params(32000, 768, 2048, 12)
    assert round(counts["llama_350m"] / 1e6, 2) == 367.97
    assert round(counts["llama_1b"] / 1e6, 2) == 1339.08
    assert round(counts["llama_7b"] / 1e6, 2) == 6738.42


def test_adamw_state_is_exactly_two_moments(table):
    for size in SIZES:
        row = table[("adamw", size)]
        assert row.state_elements == 2 * row.params  # step counters (0-d) are not counted
        assert row.measured_gb == pytest.approx(3 * row.params * 2 / 1e9, rel=1e-12)
    assert table[("adamw", "llama_60m")].state_elements == 2 * 58_073_600


@pytest.mark.parametrize(("name", "size", "paper"), CELLS, ids=[f"{n}-{s}" for n, s, _ in CELLS])
def test_cell_against_the_paper(table, name, size, paper):
    reason = importable(name)
    if reason:
        pytest.skip(f"{name} not importable yet ({reason})")
    settings = CONF / "paper" / "hparams" / f"{name}_{size}.yaml"
    if name in RANKED and not settings.is_file():
        pytest.skip(f"{settings.relative_to(ROOT)} not written yet: the rank is unknown")
    row = table[(name, size)]
    assert row.unavailable is None, row.unavailable
    assert row.paper_gb == paper
    if (name, size) in DOCUMENTED:
        rule, measured = DOCUMENTED[(name, size)]
        assert f"{row.rule_gb:.2f}" == f"{rule:.2f}"
        assert f"{row.measured_gb:.2f}" == f"{measured:.2f}"
        assert row.differs and row.explanation and not row.explanation.startswith("not explained")
    else:
        assert f"{row.rule_gb:.2f}" == f"{paper:.2f}"
        assert f"{row.measured_gb:.2f}" == f"{paper:.2f}"
        assert not row.differs


def _available():
    return [n for n in memory.default_optimizers() if importable(n) is None]


@pytest.mark.parametrize("name", _available())
def test_one_layer_stands_for_every_layer(name):
    """The report steps a one-layer copy of the model; the full-depth step must give the same count."""
    from optsweep.models.llama import ModelSpec

    spec = ModelSpec(
        name="t",
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=1000,
    )
    with memory.ConfigComposer(CONF) as composer:
        node, _ = composer.optimizer_node(name, None, expect_paper=False)
    setup = memory.optimizer_setup(name, node)
    shallow = memory.MetaModels.build(spec)
    full = memory.MetaModels.build(spec, full_depth=True)
    assert shallow.one_layer is not None and full.one_layer is None
    assert memory.measure_state(setup.factory, shallow) == memory.measure_state(setup.factory, full)


def test_cli_csv_and_a_model_given_by_overrides(capsys):
    shape = (
        "name=mini,hidden_size=64,intermediate_size=172,num_hidden_layers=2,num_attention_heads=4,"
        "vocab_size=97"
    )
    assert (
        main(["memory", "--format", "csv", "--optimizers", "adamw,sgd", "--models", "llama_60m", shape]) == 0
    )
    rows = {(r["optimizer"], r["model"]): r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    p60 = 58_073_600
    assert float(rows[("adamw", "llama_60m")]["paper_gb"]) == 0.35
    assert int(rows[("adamw", "llama_60m")]["state_elements"]) == 2 * p60
    assert float(rows[("adamw", "llama_60m")]["measured_gb"]) == pytest.approx(3 * p60 * 2 / 1e9, abs=1e-9)
    assert rows[("adamw", "llama_60m")]["measured_matches_paper"] == "true"
    assert int(rows[("sgd", "llama_60m")]["state_elements"]) == 0  # momentum 0: no buffer
    assert rows[("sgd", "llama_60m")]["status"] == "no paper value"
    mini = llama_params(97, 64, 172, 2)
    assert int(rows[("adamw", "mini")]["params"]) == mini
    assert int(rows[("adamw", "mini")]["state_elements"]) == 2 * mini
    assert rows[("adamw", "mini")]["paper_gb"] == ""


def test_markdown_marks_and_explains_a_rounding_cell(capsys):
    assert main(["memory", "--format", "markdown", "--optimizers", "adam", "--models", "llama_130m"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("| adam | llama_130m"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:6] == ["0.81", "0.80", "0.80"]
    assert cells[6].startswith("≠ [1]")
    assert "[1] the paper's rounding" in out and "measured 0.8046" in out


def test_an_optimizer_that_does_not_import_is_reported_not_raised(monkeypatch):
    from optsweep.optim import registry

    monkeypatch.setitem(registry.OPTIMIZERS, "ghost", "optsweep.optim.ghost:Ghost")  # a yaml whose module is missing
    rows = memory.memory_rows(["ghost", "adamw"], ["llama_60m"], conf_dir=CONF)
    ghost = next(r for r in rows if r.optimizer == "ghost")
    message = ("not available: conf/optimizer/ghost.yaml targets optsweep.optim.ghost, which does not exist: write "
               "src/optsweep/optim/ghost.py")
    assert ghost.measured_gb is None and ghost.unavailable.startswith(message)
    assert f"n/a ({message}" in memory.render_markdown(rows)


def test_unknown_model_or_optimizer_is_a_readable_error(capsys):
    assert main(["memory", "--models", "llama_3b"]) == 2
    assert "no model config 'llama_3b'" in capsys.readouterr().err
    assert main(["memory", "--optimizers", "adamx"]) == 2
    assert "unknown optimizer(s) adamx" in capsys.readouterr().err
