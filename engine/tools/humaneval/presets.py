"""Sampling protocols of the published HumanEval tables, so real weights reproduce them.

A preset fixes n, temperature (one value, or one per k as CodeGen's paper does), top-p and the
new-token budget. `prompt_builder` turns a problem into the engine prompt (default: the problem's
prompt text); models with their own prompt layout (CodeCLM's modality segments, codeclm.py here)
name one, and may name a `completion_postprocess` for their decoded text; `set_prompt_builder`
replaces them.
"""
from dataclasses import dataclass, replace
from typing import Callable

from . import codeclm


@dataclass(frozen=True)
class Preset:
    name: str
    n: int
    temperature: float | dict  # a float, or {k: temperature} with one generation run per value
    top_p: float
    max_tokens: int
    ks: tuple = (1, 10, 100)
    prompt_builder: Callable | None = None          # problem dict -> prompt (str or dict)
    completion_postprocess: Callable | None = None  # decoded completion -> completion

    def runs(self) -> list:
        """[(temperature, ks scored from that run)], one generation run per distinct temperature."""
        if isinstance(self.temperature, dict):
            by_temperature = {}
            for k in self.ks:
                if k not in self.temperature:
                    raise ValueError(f"preset {self.name}: no temperature for k={k}")
                by_temperature.setdefault(self.temperature[k], []).append(k)
            return [(t, tuple(ks)) for t, ks in by_temperature.items()]
        return [(self.temperature, tuple(self.ks))]

    def build_prompt(self, problem: dict):
        return problem["prompt"] if self.prompt_builder is None else self.prompt_builder(problem)


PRESETS = {
    # the defaults: one run at T=0.2
    "default": Preset("default", n=100, temperature=0.2, top_p=0.95, max_tokens=128),
    # PyCodeGPT-110M: published pass@1/10/100 = 8.32 / 13.53 / 18.3
    "pycodegpt": Preset("pycodegpt", n=100, temperature=0.2, top_p=0.95, max_tokens=100),
    # CodeGen: best of T in {0.2, 0.6, 0.8} per k; codegen-350M-mono 12.76 / 23.11 / 35.19
    "codegen": Preset("codegen", n=100, temperature={1: 0.2, 10: 0.6, 100: 0.8},
                      top_p=0.95, max_tokens=128),
    # CodeCLM: T 0.95, top-p 0.8, n 200, its modality-segment prompt layout
    "codeclm": Preset("codeclm", n=200, temperature=0.95, top_p=0.8, max_tokens=128,
                      prompt_builder=codeclm.humaneval_prompt,
                      completion_postprocess=codeclm.humaneval_completion),
}


def get_preset(name: str | None) -> Preset:
    key = name or "default"
    if key not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[key]


def set_prompt_builder(name: str, prompt_builder: Callable | None,
                       completion_postprocess: Callable | None = None) -> None:
    """Install the prompt layout (and optional decoded-text fix-up) of preset `name`."""
    PRESETS[name] = replace(get_preset(name), prompt_builder=prompt_builder,
                            completion_postprocess=completion_postprocess)
