"""The router service: picks a deployment, calls the provider, translates
its protocol, and records one usage event per request."""
