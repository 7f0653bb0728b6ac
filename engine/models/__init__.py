"""Model registry keyed by the config's `architectures` string (each model class's ARCHITECTURE)."""
from .codegen import CodeGenForCausalLM
from .gpt_neo import GPTNeoForCausalLM

MODEL_REGISTRY = {model.ARCHITECTURE: model for model in (GPTNeoForCausalLM, CodeGenForCausalLM)}
