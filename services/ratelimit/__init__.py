"""The ratelimit service: request quotas per key (the full design comes later)."""
