"""Model registry keyed by the config's `architectures` string."""
from engine.models.codegen import CodeGenForCausalLM
from engine.models.gpt_neo import GPTNeoForCausalLM

MODEL_REGISTRY = {
    "GPTNeoForCausalLM": GPTNeoForCausalLM,
    "CodeGenForCausalLM": CodeGenForCausalLM,
}
