"""The LLM client (client: retries, usage; costs: prices, budget; bodies: request bodies and reply parsing;
batch_api: the Batch API transport), the embedded llama.cpp server (local) and prompt templates (prompts).
Only this package imports openai and tenacity; it never imports store, label, collect or cli."""
