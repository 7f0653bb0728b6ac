"""OutputProcessor: what a sampled token means for its sequence (EOS, stop ids, detokenising, stop
strings, max_tokens) and the vLLM-shaped RequestOutputs, on the far side of the engine core."""
from __future__ import annotations

from .outputs import CompletionOutput, RequestOutput
from .sequence import Request, Sequence


class OutputProcessor:
    def __init__(self, eos_token_id: int | None, max_model_len: int):
        self.eos_token_id = eos_token_id
        self.max_model_len = max_model_len

    def check_stop(self, seq: Sequence, token: int) -> str | None:
        """Why seq stops at the token just appended ("stop" | "length"), or None; a token that does
        not stop it on its id is detokenised into seq.text first (may raise: the detokenizer).

        "length" at max_tokens, or once prompt + output hold max_model_len tokens (vLLM's rule: a
        prompt of exactly max_model_len tokens still gets the one token its last position gives)."""
        params = seq.request.params
        if token == self.eos_token_id and not params.ignore_eos:
            return "stop"
        if params.stop_token_ids and token in params.stop_token_ids:
            return "stop"
        old_len = len(seq.text)
        seq.text += seq.detokenizer.add(token)
        if params.stop_strings and self._truncate_at_stop(seq, old_len):
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    @staticmethod
    def add_prompt_logprobs(request: Request, entries: list[dict[int, float]]) -> None:
        """Settle the prompt logprobs a step computed for request (they continue its list)."""
        request.prompt_logprobs += entries
        assert len(request.prompt_logprobs) <= len(request.prompt_token_ids)

    @staticmethod
    def _truncate_at_stop(seq: Sequence, old_len: int) -> bool:
        stops = seq.request.params.stop_strings
        start = max(0, old_len - max(len(s) for s in stops) + 1)
        hits = [i for i in (seq.text.find(s, start) for s in stops) if i >= 0]
        if not hits:
            return False
        seq.text = seq.text[:min(hits)]
        return True

    @staticmethod
    def request_output(request: Request, error: Exception | None = None) -> RequestOutput:
        """The cumulative output of a request; while a sequence runs, its text withholds a tail
        that could still become a stop string. error: the request failed (and was aborted)."""
        completions = []
        hold = max((len(s) for s in request.params.stop_strings), default=1) - 1
        for seq in request.seqs:
            text = seq.text
            if not seq.finished and hold:
                text = text[:max(0, len(text) - hold)]  # could still become a stop string
            completions.append(CompletionOutput(
                seq.index, text, list(seq.output_token_ids), seq.finish_reason,
                list(seq.logprobs) if seq.logprobs is not None else None, seq.cumulative_logprob))
        prompt_logprobs = request.prompt_logprobs
        output = RequestOutput(request.request_id, request.prompt, list(request.prompt_token_ids),
                               completions, request.finished,
                               prompt_logprobs=None if prompt_logprobs is None else list(prompt_logprobs))
        if error is not None:
            output.error = f"{type(error).__name__}: {error}"
        return output
