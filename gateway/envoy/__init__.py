"""Envoy in front of the edge: one renderer for the local and the cluster profile."""

from gateway.envoy.options import EnvoyOptions, build_options
from gateway.envoy.render import ENVOY_FLAGS, bootstrap, render

__all__ = ["ENVOY_FLAGS", "EnvoyOptions", "bootstrap", "build_options", "render"]
