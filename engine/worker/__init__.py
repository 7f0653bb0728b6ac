"""Worker: the model runner, its KV cache, the sampler and the weight loader."""
