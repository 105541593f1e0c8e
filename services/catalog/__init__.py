"""The catalog service: providers, models, routing profiles and API keys."""
