"""Request schema of POST /v1/completions and OpenAI-shaped errors.

Types are strict (no "5" for 5, no true for 1): a wrong type is a 400 naming the field, as OpenAI
does. Ranges follow OpenAI's where it has one.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_N = 128
MAX_LOGPROBS = 20


class APIError(Exception):
    """An error answered in OpenAI's JSON shape with `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code),
                            status_code=self.status, headers=self.headers)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The fields of OpenAI's legacy completions API, plus vLLM-style extensions
    (top_k, min_p, repetition_penalty, ignore_eos) and `segments` (a modality-tagged prompt)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    segments: list[list[str]] | None = None    # [["code", "def f():"], ["text", "..."], ...]
    suffix: str | None = None
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(0, ge=-1)
    min_p: float | None = Field(0.0, ge=0.0, le=1.0)
    n: int | None = Field(1, ge=1, le=MAX_N)
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = False
    presence_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool | None = False
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "CompletionRequest":
        if self.suffix:
            raise _FieldError("suffix", "suffix (fill-in-the-middle) is not supported: these models "
                              "were not trained for fill-in-the-middle")
        if self.segments is not None:
            if self.prompt not in (None, "", [], [""]):
                raise _FieldError("prompt", "give either prompt or segments, not both")
            if not self.segments or any(len(s) != 2 or s[0] not in ("code", "text") or not s[1]
                                        for s in self.segments):
                raise _FieldError("segments", 'segments must be a non-empty list of ["code" | "text", '
                                  'non-empty string] pairs')
        elif self.prompt is None:
            raise _FieldError("prompt", "prompt is required")
        elif self.prompt == [] or self.prompt == "" or any(p in ("", []) for p in _as_list(self.prompt)):
            raise _FieldError("prompt", "prompt must not be empty")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise _FieldError("best_of", "best_of is not supported (it must equal n)")
        if self.logit_bias:
            raise _FieldError("logit_bias", "logit_bias is not supported")
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if len(stops) > 16 or any(not s for s in stops):
                raise _FieldError("stop", "stop must be up to 16 non-empty strings")
        return self

    def prompts(self) -> list:
        """The engine prompts of this request: strings, token-id lists or one segments dict."""
        if self.segments is not None:
            return [{"segments": [tuple(s) for s in self.segments]}]
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [self.prompt]
        return list(self.prompt)

    def sampling_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of engine.sampling_params.SamplingParams."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return dict(
            n=self.n or 1,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(self.top_k or 0, 0),   # vLLM spells "no top-k" -1, the engine 0
            min_p=self.min_p or 0.0,
            max_tokens=16 if self.max_tokens is None else self.max_tokens,
            stop=stop or None,
            seed=self.seed,
            logprobs=self.logprobs,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=1.0 if self.repetition_penalty is None else self.repetition_penalty,
            ignore_eos=bool(self.ignore_eos),
        )


class _FieldError(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _as_list(prompt) -> list:
    return [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt


def parse_completion_request(body: Any) -> CompletionRequest:
    """Validate a decoded JSON body; raises APIError(400) naming the offending field."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return CompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            raise APIError(400, str(cause), param=cause.param) from None
        loc = [str(p) for p in err.get("loc", ())]
        param = loc[0] if loc else None
        message = f"{'.'.join(loc) or 'body'}: {err.get('msg')}"
        # a union reports each branch; name the field and the accepted shapes instead
        if param == "prompt":
            message = ("prompt must be a non-empty string, list of strings, list of token ids "
                       "or list of token-id lists")
        raise APIError(400, message, param=param) from None
