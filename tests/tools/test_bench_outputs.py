"""`codeinfer bench` never loses a run to its outputs: what --plot needs and where --json / --plot
write are checked before anything runs, and the JSON is written before the plot is drawn."""
import json
import sys

import pytest

from engine.entrypoints.cli.main import main
from engine.tools import bench, bench_report

RESULT = {"rows": [], "speedups": {}, "model": "m", "model_name": "m"}


@pytest.fixture
def runs(monkeypatch):
    """The comparison's calls, each answered at once with RESULT (no benchmark runs)."""
    calls = []
    monkeypatch.setattr(bench, "run_comparison", lambda *a, **kw: calls.append(a) or RESULT)
    monkeypatch.setattr(bench_report, "format_table", lambda result: "table")
    return calls


def test_plot_without_matplotlib_fails_before_the_run(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees without it
    out = tmp_path / "bench.json"
    assert main(["bench", "--plot", str(tmp_path / "p.png"), "--json", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("codeinfer bench: error: --plot: matplotlib cannot be imported")
    assert 'pip install -e ".[bench]" torch==2.13.0' in line
    assert runs == [] and not out.exists()


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_an_output_in_a_missing_folder_fails_before_the_run(runs, tmp_path, monkeypatch, capsys, flag):
    monkeypatch.setattr(bench_report, "check_plotting", lambda: None)  # matplotlib or not
    assert main(["bench", flag, str(tmp_path / "no-such-folder" / "out")]) == 2
    assert f"{flag}: cannot write" in capsys.readouterr().err and runs == []


def test_json_is_written_before_the_plot(runs, tmp_path, monkeypatch):
    # The plot fails after the run (say matplotlib breaks on this result): the measurements are
    # on disk already.
    monkeypatch.setattr(bench_report, "check_plotting", lambda: None)

    def broken_plot(result, path):
        raise ValueError("plot: cannot draw")

    monkeypatch.setattr(bench_report, "plot", broken_plot)
    out = tmp_path / "bench.json"
    assert main(["bench", "--plot", str(tmp_path / "p.png"), "--json", str(out)]) == 2
    assert len(runs) == 1 and json.loads(out.read_text()) == RESULT
