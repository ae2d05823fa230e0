"""Everything that talks to an LLM through the openai SDK."""
