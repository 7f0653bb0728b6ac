"""EngineFrontend: what an engine reads of a checkpoint before its weights (config, tokenizer,
vocabulary, the input processor and the names it is served as).

LLMEngine builds on it; a process that routes or serves requests without running the model (the
Ray Serve ingress in front of engine replicas) builds only this, so its tokens, checks and names
are the engines' own."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import ModelConfig, load_config
from .input_processor import InputProcessor
from .sampling_params import SamplingParams
from ..engine_args import DEFAULT_MODEL, EngineArgs
from ..hub import resolve_model
from ..tokenizer import Tokenizer
from ..vocab import Vocabulary, load_vocabulary

ASSETS = Path(__file__).resolve().parents[1] / "assets"


def default_model_dir() -> Path:
    return ASSETS / DEFAULT_MODEL


@dataclass
class EngineFrontend:
    model_dir: Path
    model_name: str
    config: ModelConfig
    max_model_len: int
    served_model_names: list[str]
    tokenizer: Tokenizer
    vocab: Vocabulary
    input_processor: InputProcessor

    @classmethod
    def load(cls, args: EngineArgs, vocab: Vocabulary | None = None) -> EngineFrontend:
        """vocab: the checkpoint's vocabulary (None: read from the checkpoint)."""
        model_dir, model_name = resolve_model(
            default_model_dir() if args.model is None else args.model, args.revision)
        config = load_config(model_dir)
        max_model_len = args.resolve_max_model_len(config.max_position_embeddings)
        tokenizer = Tokenizer(model_dir, config.eos_token_id)
        vocab = vocab or load_vocabulary(model_dir, tokenizer, config.vocab_size)
        if vocab.eos_token_id is not None:  # CodeCLM generates up to <eot>
            tokenizer = tokenizer.with_eos(vocab.eos_token_id)
        inputs = InputProcessor(config, tokenizer, vocab, args.seed, max_model_len)
        return cls(model_dir, model_name, config, max_model_len, args.served_model_names(),
                   tokenizer, vocab, inputs)

    def tokenize(self, prompt, sampling_params: SamplingParams | None = None,
                 release_gil: bool = False) -> dict:
        """InputProcessor.tokenize: any thread may call it."""
        return self.input_processor.tokenize(prompt, sampling_params, release_gil)
