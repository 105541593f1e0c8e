"""Anthropic's Messages API at the edge (POST /v1/messages): its requests, answers, stream
events and errors in terms of the chat path's own messages, so a Messages request takes
exactly the chat path (auth, quotas, router, ledger) to any model in the catalog.

The other direction, our chat to an Anthropic upstream, is services/router/providers/anthropic_wire.py.
"""
