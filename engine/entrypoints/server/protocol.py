"""Request schemas of POST /v1/completions, /tokenize and /detokenize, and OpenAI-shaped errors.

Types are strict (no "5" for 5, no true for 1): a wrong type is a 400 naming the field, as OpenAI
does. The ranges of the sampling values are engine.core.sampling_params.SamplingParams's (the handler
turns its ValueError into a 400 naming the field); only this API's own limits are set here.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_N = 128          # samples per request: a bound on the work one request can ask for
MAX_TEMPERATURE = 2.0  # OpenAI's


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
    max_tokens: int | None = 16
    temperature: float | None = Field(1.0, le=MAX_TEMPERATURE)
    top_p: float | None = 1.0
    top_k: int | None = 0
    min_p: float | None = 0.0
    n: int | None = Field(1, le=MAX_N)
    best_of: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None
    echo: bool | None = False
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    repetition_penalty: float | None = 1.0
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
        if self.max_tokens == 0 and not self.echo:
            raise _FieldError("max_tokens", "max_tokens 0 (score the prompt, generate nothing) "
                              "needs echo: true")
        if self.best_of is not None and self.best_of != (self.n or 1):
            raise _FieldError("best_of", "best_of is not supported (it must equal n)")
        if self.logit_bias:
            raise _FieldError("logit_bias", "logit_bias is not supported")
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if len(stops) > 16 or any(not s for s in stops):
                raise _FieldError("stop", "stop must be up to 16 non-empty strings")
        return self

    @property
    def echo_only(self) -> bool:
        """echo with max_tokens 0 (scoring): the answer is the prompt, with its logprobs."""
        return bool(self.echo) and self.max_tokens == 0

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
        """Keyword arguments of engine.core.sampling_params.SamplingParams."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        def given(value, default):  # JSON null means the default, as in OpenAI's API
            return default if value is None else value

        return dict(
            n=given(self.n, 1),
            temperature=given(self.temperature, 1.0),
            top_p=given(self.top_p, 1.0),
            top_k=given(self.top_k, 0),
            min_p=given(self.min_p, 0.0),
            # echo_only: the engine makes one token (from the prompt's last logits) it is not returned
            max_tokens=1 if self.echo_only else given(self.max_tokens, 16),
            stop=stop or None,
            seed=self.seed,
            logprobs=self.logprobs,
            prompt_logprobs=self.logprobs if self.echo else None,  # echoed tokens get theirs
            presence_penalty=given(self.presence_penalty, 0.0),
            frequency_penalty=given(self.frequency_penalty, 0.0),
            repetition_penalty=given(self.repetition_penalty, 1.0),
            ignore_eos=given(self.ignore_eos, False),
        )


class _FieldError(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _as_list(prompt) -> list:
    return [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt


class TokenizeRequest(BaseModel):
    """POST /tokenize: vLLM's TokenizeCompletionRequest."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    prompt: str
    add_special_tokens: bool = Field(
        True, description="add the special tokens the tokenizer's post-processor adds (a BOS, "
                          "say; GPT-Neo's and CodeGen's add none); completions never add them")
    return_token_strs: bool | None = Field(False, description="also return each token's string")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    """POST /detokenize: vLLM's DetokenizeRequest."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


# A union reports each of its branches; these name the field and the shapes it takes instead.
_UNION_MESSAGES = {"prompt": "prompt must be a non-empty string, list of strings, list of token "
                             "ids or list of token-id lists"}


def parse_completion_request(body: Any) -> CompletionRequest:
    """Validate a decoded JSON body; raises APIError(400) naming the offending field."""
    return parse_body(CompletionRequest, body, _UNION_MESSAGES)


def parse_body(schema: type[BaseModel], body: Any, messages: dict[str, str] | None = None):
    """`body` (decoded JSON) validated as `schema`; APIError(400) naming the offending field
    (messages: a fixed message for a field, instead of pydantic's)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            raise APIError(400, str(cause), param=cause.param) from None
        loc = [str(p) for p in err.get("loc", ())]
        param = loc[0] if loc else None
        message = (messages or {}).get(param) or f"{'.'.join(loc) or 'body'}: {err.get('msg')}"
        raise APIError(400, message, param=param) from None
