"""Diff-model support: the diff-codegen prompt format, candidate extraction and unified-diff apply.

diff-codegen-350m was trained on commits laid out as

    <NME> {file name}
    <BEF> {file before}
    <MSG> {commit message}
    <DFF> {unified-diff hunks}

so an edit is: build the prompt up to `<DFF>`, sample, cut the sample at the next section marker,
and apply its hunks to the file. `apply_diff` is strict about hunk bodies (line counts, prefixes,
context text) and raises ValueError naming the hunk; it tolerates wrong line numbers by searching
for the hunk's context the way `patch` does.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import read_json_object

# Markers that end a sample: the model starting the next training example, or end of text.
STOP_MARKERS = ("<NME>", "<BEF>", "<MSG>", "<DFF>", "<|endoftext|>")

_HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_FILE_HEADERS = ("--- ", "+++ ", "diff ", "index ")
_NO_NEWLINE = "\\"  # "\ No newline at end of file"


def model_names(model: str | None) -> list[str]:
    """The names a checkpoint goes by: the last part of `model` as given (a folder or a Hub id)
    and of the folder it resolves to, the repository of a Hugging Face cache snapshot
    (models--ORG--NAME/snapshots/REV), and its config.json's `_name_or_path` (the name it was
    saved under). None (the bundled model) has none. The folders above a checkpoint's own say
    nothing of it and are left out."""
    if model is None:
        return []
    path = Path(model)
    names = [path.name]
    if path.is_dir():
        resolved = path.resolve()
        names.append(resolved.name)
        if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
            names.append(resolved.parent.parent.name.split("--", 1)[1])
        try:
            saved_as = read_json_object(path / "config.json").get("_name_or_path")
        except ValueError:  # the engine's loader reports a bad config, with its own words
            saved_as = None
        if isinstance(saved_as, str):
            names.append(saved_as)
    return names


def is_diff_model(model: str | None) -> bool:
    """Whether `model` looks like a diff model: one of its names has "diff" in it, as
    diff-codegen-350m-v1 (a plain CodeGen checkpoint by its config) has. A plain code model
    writes no diffs, so sampling from one would only fail."""
    return any("diff" in name.lower() for name in model_names(model))


def build_prompt(file_name: str, before: str, message: str) -> str:
    """The diff-codegen prompt for editing `before` (contents of `file_name`) as `message` says."""
    return f"<NME> {file_name}\n<BEF> {before}\n<MSG> {message}\n<DFF>"


def extract_diff(raw: str) -> str | None:
    """The diff part of one raw model sample, or None when it holds no hunk.

    The sample is cut at the first section marker or end-of-text token; anything before the
    first `---` header or `@@` hunk header (the space after `<DFF>`, stray blank lines) is dropped.
    """
    end = len(raw)
    for marker in STOP_MARKERS:
        pos = raw.find(marker)
        if pos != -1:
            end = min(end, pos)
    lines = raw[:end].split("\n")
    start = next((i for i, line in enumerate(lines)
                  if line.lstrip().startswith(("@@ ", "--- "))), None)
    if start is None:
        return None
    lines[start] = lines[start].lstrip()
    text = "\n".join(lines[start:]).rstrip()
    return text + "\n" if "@@ " in text else None


def extract_candidates(raw_outputs) -> list[str]:
    """Distinct diffs (first-seen order) extracted from an iterable of raw samples."""
    seen = {}
    for raw in raw_outputs:
        diff = extract_diff(raw)
        if diff is not None:
            seen.setdefault(diff, None)
    return list(seen)


@dataclass
class Hunk:
    number: int          # 1-based position in the diff, for error messages
    old_start: int       # 1-based first old line (0 with old_count 0: insert at file start)
    old_lines: list = field(default_factory=list)   # old side, without line terminators
    new_lines: list = field(default_factory=list)
    old_no_eol: bool = False   # "\ No newline" marker after the old side's last line
    new_no_eol: bool = False


def parse_diff(diff_text: str) -> list[Hunk]:
    """Hunks of a single-file unified diff; ValueError naming the hunk and the reason."""
    if not isinstance(diff_text, str):
        raise TypeError(f"diff_text must be str, got {type(diff_text).__name__}")
    lines = diff_text.split("\n")
    hunks, i = [], 0
    while i < len(lines):
        line = lines[i]
        if _HUNK_HEADER.match(line):
            hunk, i = _parse_hunk(lines, i, len(hunks) + 1)
            hunks.append(hunk)
        elif line.strip() == "" or (not hunks and line.startswith(_FILE_HEADERS)):
            i += 1
        else:
            where = f"after hunk {len(hunks)}" if hunks else "before the first hunk"
            raise ValueError(f"diff: unexpected line {line!r} {where}")
    if not hunks:
        raise ValueError("diff: no hunk (expected a line like '@@ -1,3 +1,4 @@')")
    return hunks


def _parse_hunk(lines: list, i: int, number: int) -> tuple:
    """Parse the hunk whose header is lines[i]; returns (Hunk, index after the hunk).

    The header's counts say how many body lines follow; a body line is ' ' context, '-' old,
    '+' new, an empty line (empty context whose space was stripped) or a '\\ No newline' marker.
    """
    m = _HUNK_HEADER.match(lines[i])
    old_start = int(m.group(1))
    old_left = int(m.group(2)) if m.group(2) is not None else 1
    new_left = int(m.group(4)) if m.group(4) is not None else 1
    if old_left > 0 and old_start == 0:
        raise ValueError(f"hunk {number}: old range starts at line 0 in {lines[i]!r}")
    hunk = Hunk(number, old_start)
    i += 1
    last_side = None  # where the previous body line went: "old", "new" or "both"
    while i < len(lines) and (old_left > 0 or new_left > 0):
        line = lines[i]
        tag, text = (line[0], line[1:]) if line else (" ", "")
        if tag == _NO_NEWLINE:
            _mark_no_newline(hunk, last_side, number)
            i += 1
            continue
        if tag == " " and old_left > 0 and new_left > 0:
            side = "both"
        elif tag == "-" and old_left > 0:
            side = "old"
        elif tag == "+" and new_left > 0:
            side = "new"
        else:
            raise ValueError(f"hunk {number}: unexpected line {line!r} "
                             f"({old_left} old and {new_left} new lines still expected)")
        if (side != "new" and hunk.old_no_eol) or (side != "old" and hunk.new_no_eol):
            raise ValueError(f"hunk {number}: '\\ No newline at end of file' before the last line")
        if side != "new":
            hunk.old_lines.append(text)
            old_left -= 1
        if side != "old":
            hunk.new_lines.append(text)
            new_left -= 1
        last_side = side
        i += 1
    if old_left > 0 or new_left > 0:
        raise ValueError(f"hunk {number}: diff ends with {old_left} old and {new_left} new "
                         "lines still expected")
    if i < len(lines) and lines[i].startswith(_NO_NEWLINE):
        _mark_no_newline(hunk, last_side, number)
        i += 1
    return hunk, i


def _mark_no_newline(hunk: Hunk, last_side: str | None, number: int) -> None:
    if last_side is None:
        raise ValueError(f"hunk {number}: '\\ No newline at end of file' with no line before it")
    if last_side in ("old", "both"):
        hunk.old_no_eol = True
    if last_side in ("new", "both"):
        hunk.new_no_eol = True


def apply_diff(before: str, diff_text: str) -> str:
    """Apply the unified-diff hunks in `diff_text` to the text `before` and return the result.

    Hunks apply in order at their stated line when the old side matches there, else at the
    nearest offset where it matches (after the previous hunk). Raises ValueError with the hunk
    number and the reason when a hunk is malformed or its old side is nowhere in the file.
    """
    if not isinstance(before, str):
        raise TypeError(f"before must be str, got {type(before).__name__}")
    hunks = parse_diff(diff_text)
    lines = before.split("\n")
    eof_newline = lines[-1] == ""
    if eof_newline:
        lines.pop()
    out, cursor = [], 0
    for hunk in hunks:
        pos = _locate(hunk, lines, cursor)
        out.extend(lines[cursor:pos])
        out.extend(hunk.new_lines)
        cursor = pos + len(hunk.old_lines)
        if cursor == len(lines):  # a hunk reaching the end of the file decides its last newline
            if hunk.new_no_eol:
                eof_newline = False
            elif hunk.old_no_eol:
                eof_newline = True
    out.extend(lines[cursor:])
    if not out:
        return ""
    return "\n".join(out) + ("\n" if eof_newline else "")


def _locate(hunk: Hunk, lines: list, cursor: int) -> int:
    """Where hunk's old side matches `lines`: nearest its stated line, at or after `cursor`."""
    size = len(hunk.old_lines)
    stated = hunk.old_start - 1 if size > 0 else hunk.old_start
    last = len(lines) - size
    if last < cursor:
        raise ValueError(f"hunk {hunk.number}: needs {size} old lines but only "
                         f"{len(lines) - cursor} remain after the previous hunk")
    stated = min(max(stated, cursor), last)
    for delta in range(0, max(stated - cursor, last - stated) + 1):
        for pos in (stated - delta, stated + delta):
            if cursor <= pos <= last and lines[pos:pos + size] == hunk.old_lines:
                return pos
    expected = hunk.old_lines[0] if hunk.old_lines else ""
    raise ValueError(f"hunk {hunk.number}: old lines do not match the file at line "
                     f"{hunk.old_start} or anywhere after line {cursor} "
                     f"(hunk's first old line: {expected!r})")
