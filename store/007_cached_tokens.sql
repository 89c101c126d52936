-- Cached prompt tokens.
-- * llm_calls.cached_tokens: the part of prompt_tokens the provider served from its prompt cache
--   (usage.prompt_tokens_details.cached_tokens: OpenAI's prompt caching, vLLM's prefix caching), for
--   live calls and batch results alike; 0 where the server does not report it (and for rows written
--   before this migration). cost_usd prices them at the cached price where the price table has one.
-- (Numbered 007: 006 is taken by another change.)

ALTER TABLE llm_calls ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
