"""Model registry keyed by the config's `architectures` string (each model class's ARCHITECTURE)."""
from engine.models.codegen import CodeGenForCausalLM
from engine.models.gpt_neo import GPTNeoForCausalLM

MODEL_REGISTRY = {model.ARCHITECTURE: model for model in (GPTNeoForCausalLM, CodeGenForCausalLM)}
