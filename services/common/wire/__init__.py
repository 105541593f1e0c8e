"""Codecs between the OpenAI JSON wire format and the router's protobuf messages.

The edge parses client JSON strictly (every bad field is a 400 naming it);
the router's OpenAI-compatible provider uses the same codecs to speak to
upstreams and parses their answers leniently.
"""
