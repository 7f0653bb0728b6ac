"""The CodeCLM HumanEval layout (pycodegpt-CodeCLM-partial-100m's paper): a problem becomes modality
segments, and decoded text becomes the function body. The "codeclm" preset uses these."""
from __future__ import annotations

import re

from ...codeclm import DEDENT, DUP, EOT, INDENT, NEW_LINE, linearised_to_source

BEGIN, COMMENTS, PYTHON = "<|beginoftext|>", "<comments>", "<python>"


def _split_signature(problem: dict) -> tuple[str, str]:
    """(code up to the end of the entry point's `def` line(s), the docstring that follows)."""
    prompt = problem["prompt"]
    entry = problem.get("entry_point")
    match = re.search(rf"^def {re.escape(entry)}\b" if entry else r"^def ", prompt, re.M)
    if match is None:
        defs = list(re.finditer(r"^def ", prompt, re.M))
        if not defs:
            raise ValueError(f"problem {problem.get('task_id')!r}: no `def` line in the prompt")
        match = defs[-1]
    end = match.start()
    for line in prompt[match.start():].splitlines(keepends=True):
        end += len(line)
        if line.split("#")[0].rstrip().endswith(":"):
            break
    signature = prompt[:end].rstrip()  # the newline goes with the docstring, as the authors split it
    return signature.lstrip(), prompt[len(signature):].rstrip()


def humaneval_prompt(problem: dict) -> dict:
    """The paper's layout: <|beginoftext|> signature (code) <comments> docstring (text) <python>."""
    signature, docstring = _split_signature(problem)
    return {"segments": [("text", BEGIN), ("code", signature),
                         ("text", COMMENTS + docstring + PYTHON)]}


def humaneval_completion(text: str) -> str:
    """Decoded completion -> function body that follows problem["prompt"] (which ends in a newline).

    Engine text is already source; raw linearised text (samples decoded elsewhere) is rebuilt."""
    if any(m in text for m in (NEW_LINE, INDENT, DEDENT, DUP, EOT)):
        text = linearised_to_source(text.split(EOT)[0])
    return text[1:] if text.startswith("\n") else text
