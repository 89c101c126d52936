"""The LLM client (retries, usage, cost, budget), the embedded llama.cpp server and prompt templates.
Only this package imports openai and tenacity; it never imports store, label, collect or cli."""
