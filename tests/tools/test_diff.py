"""engine.tools.diff: prompt format, candidate extraction, unified-diff apply (round trips and fuzz)."""
import difflib
import json
import random
import shutil
import subprocess

import pytest

from engine.tools.diff import apply_diff, build_prompt, extract_candidates, extract_diff, is_diff_model

WORDS = ["x = 1", "y = 2", "return x", "pass", "", "    if x:", "        y += 1", "def f(a):",
         "# note", "print(x)"]


def split_keep(text: str) -> list[str]:
    """Lines with their "\\n" (split on "\\n" only, like the diff format)."""
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def make_diff(before: str, after: str, context: int = 3, headers: bool = True) -> str:
    """A unified diff as git writes it, '\\ No newline at end of file' included."""
    out = []
    for line in difflib.unified_diff(split_keep(before), split_keep(after), "a/f.py", "b/f.py",
                                     n=context):
        if not headers and line.startswith(("--- ", "+++ ")):
            continue
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def random_text(rng: random.Random, max_lines: int = 30) -> str:
    text = "\n".join(rng.choice(WORDS) for _ in range(rng.randint(0, max_lines)))
    return text + ("\n" if text and rng.random() < 0.8 else "")


def random_edit(rng: random.Random, text: str) -> str:
    lines = text.split("\n")
    for _ in range(rng.randint(1, 4)):
        i = rng.randint(0, len(lines))
        op = rng.random()
        if op < 0.4:
            lines.insert(i, rng.choice(WORDS) + " # new")
        elif op < 0.7 and i < len(lines):
            del lines[i]
        elif i < len(lines):
            lines[i] = lines[i] + " # changed"
    return "\n".join(lines)


def random_cases(seed: int, num_cases: int, vary_format: bool = False):
    """(case, before, after, diff) of random edits that change the text; vary_format: random
    context sizes (0, 1, 3) and headers on or off, else git's format."""
    rng = random.Random(seed)
    for case in range(num_cases):
        before = random_text(rng)
        after = random_edit(rng, before)
        if after == before:
            continue
        options = dict(context=rng.choice([0, 1, 3]), headers=rng.random() < 0.5) if vary_format else {}
        yield case, before, after, make_diff(before, after, **options)


def test_build_prompt_is_diff_codegen_format():
    # the file goes in verbatim (its own final newline included), as the training data had it
    assert build_prompt("src/a.py", "x = 1\n", "Fix x") == \
        "<NME> src/a.py\n<BEF> x = 1\n\n<MSG> Fix x\n<DFF>"
    assert build_prompt("a.py", "x = 1", "m") == "<NME> a.py\n<BEF> x = 1\n<MSG> m\n<DFF>"


def test_extract_diff_cuts_at_markers_and_eos():
    raw = " @@ -1 +1 @@\n-x = 1\n+x = 2\n<NME> other.py\n<BEF> junk"
    assert extract_diff(raw) == "@@ -1 +1 @@\n-x = 1\n+x = 2\n"
    assert extract_diff("\n@@ -1 +1 @@\n-a\n+b<|endoftext|>more") == "@@ -1 +1 @@\n-a\n+b\n"
    assert extract_diff("--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n") == \
        "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n"
    assert extract_diff("no diff here") is None
    assert extract_diff("<NME> @@ -1 +1 @@") is None
    assert extract_candidates([" @@ -1 +1 @@\n-a\n+b", "zzz", "@@ -1 +1 @@\n-a\n+b\n"]) == \
        ["@@ -1 +1 @@\n-a\n+b\n"]


def test_apply_simple_hunks():
    before = "a\nb\nc\nd\n"
    assert apply_diff(before, "@@ -2,2 +2,2 @@\n b\n-c\n+C\n") == "a\nb\nC\nd\n"
    assert apply_diff(before, "@@ -0,0 +1 @@\n+top\n") == "top\na\nb\nc\nd\n"
    assert apply_diff(before, "@@ -4,0 +5 @@\n+end\n") == "a\nb\nc\nd\nend\n"
    assert apply_diff(before, "@@ -1,4 +0,0 @@\n-a\n-b\n-c\n-d\n") == ""
    # wrong line numbers: found at the nearest offset, like patch
    assert apply_diff(before, "@@ -9,1 +9,1 @@\n-c\n+C\n") == "a\nb\nC\nd\n"
    # an empty line inside a hunk is empty context (editors strip the trailing space)
    assert apply_diff("a\n\nb\n", "@@ -1,3 +1,3 @@\n a\n\n-b\n+B\n") == "a\n\nB\n"


def test_no_newline_at_end_of_file():
    assert apply_diff("a\nb", "@@ -2 +2 @@\n-b\n\\ No newline at end of file\n+b\n") == "a\nb\n"
    assert apply_diff("a\nb\n", "@@ -2 +2 @@\n-b\n+c\n\\ No newline at end of file\n") == "a\nc"
    # no marker: the end-of-file newline stays as it was
    assert apply_diff("a\nb", "@@ -2 +2 @@\n-b\n+c\n") == "a\nc"


def test_round_trip_random_edits():
    for case, before, after, diff in random_cases(0, 500, vary_format=True):
        assert apply_diff(before, diff) == after, (case, before, diff)


@pytest.mark.skipif(shutil.which("patch") is None, reason="GNU patch not installed")
def test_agrees_with_gnu_patch(tmp_path):
    for _, before, after, diff in random_cases(7, 25):
        (tmp_path / "f.py").write_text(before)
        subprocess.run(["patch", "-s", "--fuzz=0", str(tmp_path / "f.py")],
                       input=diff.encode(), check=True)
        assert apply_diff(before, diff) == (tmp_path / "f.py").read_text() == after


MALFORMED = {
    "no hunk": "just text\n",
    "empty": "",
    "garbage before hunk": "hello\n@@ -1 +1 @@\n-a\n+b\n",
    "bad header": "@@ -a,1 +1 @@\n-a\n+b\n",
    "zero start with lines": "@@ -0,1 +1 @@\n-a\n+b\n",
    "too few lines": "@@ -1,2 +1,2 @@\n-a\n+b\n",
    "too many lines": "@@ -1 +1 @@\n-a\n+b\n+c\n",
    "bad prefix": "@@ -1,2 +1,2 @@\n a\n*b\n",
    "context mismatch": "@@ -1 +1 @@\n-zzz\n+b\n",
    "beyond end": "@@ -1,5 +1,5 @@\n a\n b\n c\n d\n e\n",
    "marker first": "@@ -1 +1 @@\n\\ No newline at end of file\n-a\n+b\n",
    "marker mid-hunk": "@@ -1,2 +1,2 @@\n a\n\\ No newline at end of file\n-b\n+B\n",
    "hunks out of order": "@@ -3 +3 @@\n-c\n+C\n@@ -1 +1 @@\n-a\n+A\n",
    "second file": "@@ -1 +1 @@\n-a\n+A\n--- a/g\n+++ b/g\n@@ -1 +1 @@\n-x\n+y\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_diffs_raise_value_error(name):
    with pytest.raises(ValueError) as info:
        apply_diff("a\nb\nc\n", MALFORMED[name])
    message = str(info.value)
    assert message.startswith(("hunk ", "diff:")), message


def test_error_names_the_hunk():
    diff = "@@ -1 +1 @@\n-a\n+A\n@@ -3 +3 @@\n-zzz\n+C\n"
    with pytest.raises(ValueError, match=r"hunk 2: old lines do not match"):
        apply_diff("a\nb\nc\n", diff)


def _mutate(rng: random.Random, diff: str) -> str:
    lines = diff.split("\n")
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        op = rng.randrange(6)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2 and lines[i]:
            j = rng.randrange(len(lines[i]))
            lines[i] = lines[i][:j] + rng.choice("@-+ \\x9,") + lines[i][j + 1:]
        elif op == 3:
            lines[i] = lines[i].replace(str(rng.randrange(10)), str(rng.randrange(10)))
        elif op == 4:
            lines = lines[:i]
        else:
            lines[i] = "".join(rng.sample(lines[i], len(lines[i])))
        if not lines:
            lines = [""]
    return "\n".join(lines)


def test_fuzzed_diffs_raise_only_value_error():
    rng = random.Random(3)
    outcomes = {"ok": 0, "ValueError": 0}
    for _ in range(3000):
        before = random_text(rng, 20)
        after = random_edit(rng, before)
        diff = _mutate(rng, make_diff(before, after))
        try:
            assert isinstance(apply_diff(before, diff), str)
            outcomes["ok"] += 1
        except ValueError:
            outcomes["ValueError"] += 1
    assert outcomes["ValueError"] > 1000, outcomes  # most mutations break the diff


def test_type_errors():
    with pytest.raises(TypeError):
        apply_diff(b"a\n", "@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(TypeError):
        apply_diff("a\n", None)


def _checkpoint(folder, name_or_path=None):
    folder.mkdir(parents=True)
    config = {"architectures": ["CodeGenForCausalLM"]}
    if name_or_path is not None:
        config["_name_or_path"] = name_or_path
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_diff_models_are_known_by_any_of_their_names(tmp_path):
    # diff-codegen-350m-v1 is a plain CodeGen checkpoint: only its names say it writes diffs.
    snapshot = _checkpoint(tmp_path / "hub" / "models--CarperAI--diff-codegen-350m-v1" /
                           "snapshots" / "0123abcd")
    (tmp_path / "linked").symlink_to(_checkpoint(tmp_path / "diff-codegen-350m-v1"))
    assert is_diff_model("CarperAI/diff-codegen-350m-v1")           # a Hub id
    assert is_diff_model(str(tmp_path / "diff-codegen-350m-v1"))    # its folder
    assert is_diff_model(str(snapshot))                             # the Hub cache's snapshot
    assert is_diff_model(str(tmp_path / "linked"))                  # a link to its folder
    assert is_diff_model(str(_checkpoint(tmp_path / "m", "CarperAI/diff-codegen-350m-v1")))


def test_other_models_are_not_diff_models(tmp_path):
    assert not is_diff_model(None)                                  # the bundled model
    assert not is_diff_model("Salesforce/codegen-350M-mono")
    assert not is_diff_model(str(_checkpoint(tmp_path / "diffs" / "codegen-350M-mono",
                                             "Salesforce/codegen-350M-mono")))  # a parent's name
    bad = _checkpoint(tmp_path / "broken")
    (bad / "config.json").write_text("{not json")
    assert not is_diff_model(str(bad))                              # the loader will say why
