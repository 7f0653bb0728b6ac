"""`codeinfer edit`: keeps the sampled diffs that apply, writes the first atomically with --apply,
leaves the file untouched (exit 1) when none applies. Candidates are injected through run()'s
`generate` parameter; one test runs the real engine on the tiny CodeGen checkpoint."""
import argparse
import os
import random

import pytest

from engine.entrypoints.cli import edit
from engine.tools.diff import apply_diff, extract_diff
from tests.tools.test_diff import _mutate, make_diff

BEFORE = "def add(a, b):\n    return a - b\n\n\nprint(add(1, 2))\n"
FIXED = "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n"
GOOD = " @@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n<NME> next.py\n"
OTHER = "@@ -5 +5 @@\n-print(add(1, 2))\n+print(add(2, 3))\n<|endoftext|>"
WRONG = "@@ -1,2 +1,2 @@\n def sub(a, b):\n-    return a - b\n+    return a + b\n"


def parse(argv):
    parser = argparse.ArgumentParser(prog="codeinfer")
    edit.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["edit", *argv])


def fake(outputs):
    calls = []

    def generate(prompt, args):
        calls.append(prompt)
        return list(outputs)
    generate.calls = calls
    return generate


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "calc.py"
    path.write_text(BEFORE)
    os.chmod(path, 0o640)
    return path


def snapshot(path):
    return sorted(os.listdir(path.parent)), path.read_bytes(), os.stat(path).st_mtime_ns


def test_cli_arguments():
    args = parse(["f.py", "-m", "msg"])
    assert (args.samples, args.apply, args.model, args.func) == (4, False, None, edit.run)
    args = parse(["f.py", "--message", "m", "--samples", "2", "--temperature", "0.2",
                  "--max-tokens", "64", "--apply", "--model", "/m"])
    assert (args.samples, args.temperature, args.max_tokens, args.apply, args.model) == \
        (2, 0.2, 64, True, "/m")


def test_shows_applicable_candidates_without_writing(source, capsys):
    before = snapshot(source)
    generate = fake(["garbage", WRONG, GOOD, OTHER, GOOD])
    assert edit.run(parse([str(source), "-m", "Fix add"]), generate=generate) == 0
    assert snapshot(source) == before
    assert generate.calls[0].startswith("<NME> ") and generate.calls[0].endswith(
        f"<BEF> {BEFORE}\n<MSG> Fix add\n<DFF>")
    out = capsys.readouterr().out
    assert "# candidate 1/2" in out and "# candidate 2/2" in out and "candidate 3" not in out
    assert "+    return a + b" in out and "\033[" not in out  # not a tty: no colour


def test_apply_writes_first_candidate_atomically(source, capsys):
    names = sorted(os.listdir(source.parent))
    assert edit.run(parse([str(source), "-m", "Fix add", "--apply"]),
                    generate=fake([WRONG, GOOD, OTHER])) == 0
    assert source.read_text() == FIXED
    assert oct(os.stat(source).st_mode & 0o777) == oct(0o640)
    assert sorted(os.listdir(source.parent)) == names  # no temporary file left behind
    assert "applied candidate 1" in capsys.readouterr().out


def test_apply_through_symlink_keeps_the_link(source):
    link = source.parent / "link.py"
    link.symlink_to(source.name)
    assert edit.run(parse([str(link), "-m", "Fix", "--apply"]), generate=fake([GOOD])) == 0
    assert link.is_symlink() and source.read_text() == FIXED


def test_nothing_applies_leaves_file_untouched(source, capsys):
    before = snapshot(source)
    no_op = "@@ -1 +1 @@\n-def add(a, b):\n+def add(a, b):\n"
    rc = edit.run(parse([str(source), "-m", "Fix add", "--apply"]),
                  generate=fake(["no diff", WRONG, no_op]))
    assert rc == 1
    assert snapshot(source) == before
    err = capsys.readouterr().err
    assert "none of the 3 sampled diffs applies" in err and "unchanged" in err


def test_fuzzed_malformed_diffs_never_write(source):
    rng = random.Random(5)
    good = make_diff(BEFORE, FIXED)
    before = snapshot(source)
    tried = 0
    while tried < 200:
        diff = _mutate(rng, good)
        try:  # what the command will try to apply: the sample's diff part
            apply_diff(BEFORE, extract_diff(diff) or "")
            continue  # still a valid edit: not what this test is about
        except ValueError:
            pass
        tried += 1
        assert edit.run(parse([str(source), "-m", "m", "--apply"]), generate=fake([diff])) == 1
    assert snapshot(source) == before


def test_failed_replace_keeps_original_and_removes_temp(source, monkeypatch, capsys):
    before = snapshot(source)

    def broken_replace(src, dst):
        raise OSError("disk on fire")
    monkeypatch.setattr(edit.os, "replace", broken_replace)
    assert edit.run(parse([str(source), "-m", "m", "--apply"]), generate=fake([GOOD])) == 2
    assert snapshot(source) == before
    assert "disk on fire" in capsys.readouterr().err


def test_missing_file_is_an_error(tmp_path, capsys):
    assert edit.run(parse([str(tmp_path / "nope.py"), "-m", "m"]), generate=fake([GOOD])) == 2
    assert "cannot read" in capsys.readouterr().err


def test_colorize():
    coloured = edit.colorize("--- a/f\n+++ b/f\n@@ -1 +1 @@\n a\n-b\n+c\n", enabled=True)
    assert "\033[31m-b\033[0m\n" in coloured and "\033[32m+c\033[0m\n" in coloured
    assert "\033[36m@@ -1 +1 @@\033[0m\n" in coloured and " a\n" in coloured
    assert edit.colorize("-b\n", enabled=False) == "-b\n"


@pytest.mark.parametrize("how", ["--force", "diff-named folder"])
def test_real_engine_on_tiny_checkpoint(tiny_codegen_dir, tmp_path, capsys, how):
    # A plain checkpoint runs with --force, or without it from a folder whose name says diff.
    model, extra = str(tiny_codegen_dir), ["--force"]
    if how == "diff-named folder":
        (tmp_path / "models").mkdir()
        (tmp_path / "models" / "diff-codegen-tiny").symlink_to(tiny_codegen_dir)
        model, extra = str(tmp_path / "models" / "diff-codegen-tiny"), []
    path = tmp_path / "calc.py"
    path.write_text(BEFORE)
    before = snapshot(path)
    rc = edit.run(parse([str(path), "-m", "Fix add", "--model", model, "--samples", "2",
                         "--max-tokens", "16", "--apply", *extra]))
    if rc == 1:  # a random model writes no applicable diff: the file must be untouched
        assert snapshot(path) == before
        assert "none of the 2 sampled diffs applies" in capsys.readouterr().err
    else:
        assert rc == 0 and path.read_text() != BEFORE


@pytest.mark.parametrize("model", [None, "tiny"])
def test_a_model_that_is_not_a_diff_model_is_refused_up_front(tiny_codegen_dir, source, capsys,
                                                              monkeypatch, model):
    # No model is loaded and nothing sampled: the error says why and how to override.
    import engine
    monkeypatch.setattr(engine, "LLM", lambda *a, **k: pytest.fail("a model was loaded"),
                        raising=False)
    before = snapshot(source)
    argv = [str(source), "-m", "Fix add", "--apply"]
    if model == "tiny":
        argv += ["--model", str(tiny_codegen_dir)]
    assert edit.run(parse(argv)) == 2
    err = capsys.readouterr().err
    what = "the bundled model" if model is None else repr(str(tiny_codegen_dir))
    assert err.startswith(f"codeinfer edit: error: {what} does not look like a diff model")
    assert "--force" in err and "diff-codegen-350m-v1" in err and err.count("\n") == 1
    assert snapshot(source) == before
