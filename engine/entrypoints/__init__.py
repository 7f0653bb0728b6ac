"""Entry points built on the engine core: LLM, AsyncLLM, the HTTP server and the CLI."""
