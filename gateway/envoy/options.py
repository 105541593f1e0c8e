"""What a rendered Envoy config is made from, and the two profiles' defaults.

The cluster profile's defaults are a contract with k8s/: upstreams are the
Services' names (resolved with STRICT_DNS), TLS comes from the kubernetes.io/tls
Secret mounted at /etc/envoy/tls, and the admin interface stays on loopback.
The local profile is for one machine (`interlock up --envoy`): STATIC loopback
upstreams, and plain HTTP only where nothing but this machine can connect.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from services.common.errors import ConfigError

Profile = Literal["local", "cluster"]
PROFILES: tuple[Profile, ...] = ("local", "cluster")
# The edge's own default body limit (INTERLOCK_MAX_BODY_BYTES): Envoy refuses the same.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
UPSTREAM_NAMES = ("edge", "catalog", "router", "ratelimit", "usage")


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, what: str) -> Address:
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{what} must look like HOST:PORT, not {text!r}")
        return cls(host, int(port))

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def is_loopback(self) -> bool:
        return self.is_ip and ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Upstreams:
    # The edge translator (HTTP/1.1) and the four gRPC services (HTTP/2 cleartext).
    edge: Address
    catalog: Address
    router: Address
    ratelimit: Address
    usage: Address

    def by_name(self) -> dict[str, Address]:
        return {name: getattr(self, name) for name in UPSTREAM_NAMES}


@dataclass(frozen=True)
class EnvoyOptions:
    profile: Profile
    # The public listener (TLS when a certificate is given).
    listen: Address
    # The plaintext HTTP/2 listener for internal gRPC clients.
    grpc_listen: Address
    # GET /ready: 200 while Envoy is healthy, 503 while it drains.
    probe_listen: Address
    admin: Address
    upstreams: Upstreams
    tls_cert: str | None
    tls_key: str | None
    access_log: str
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def discovery(self) -> str:
        # Kubernetes Services are names; local upstreams are loopback IPs.
        return "STRICT_DNS" if self.profile == "cluster" else "STATIC"


CLUSTER_DEFAULTS: dict[str, str] = {
    "listen": "0.0.0.0:8443",
    "grpc_listen": "0.0.0.0:8081",
    "probe_listen": "0.0.0.0:9902",
    "admin": "127.0.0.1:9901",
    "tls_cert": "/etc/envoy/tls/tls.crt",
    "tls_key": "/etc/envoy/tls/tls.key",
    "access_log": "/dev/stdout",
    "edge": "edge:8080",
    "catalog": "catalog:50051",
    "router": "router:50052",
    "ratelimit": "ratelimit:50053",
    "usage": "usage:50054",
}
# Local upstream defaults are the services' own default listen addresses; the
# edge has none that does not collide with the public listener, so it is asked for.
LOCAL_DEFAULTS: dict[str, str] = {
    "grpc_listen": "127.0.0.1:8081",
    "probe_listen": "127.0.0.1:9902",
    "admin": "127.0.0.1:9901",
    "access_log": "/dev/stdout",
    "catalog": "127.0.0.1:50051",
    "router": "127.0.0.1:50052",
    "ratelimit": "127.0.0.1:50053",
    "usage": "127.0.0.1:50054",
}


def build_options(profile: Profile, given: dict[str, str | None], max_body_bytes: int) -> EnvoyOptions:
    """Options from the profile's defaults overlaid with what was given (None: not given)."""
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    defaults = CLUSTER_DEFAULTS if profile == "cluster" else LOCAL_DEFAULTS
    values = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    if profile == "local" and given.get("tls_cert") is None and given.get("tls_key") is None:
        values.pop("tls_cert", None)
        values.pop("tls_key", None)
    if ("tls_cert" in values) != ("tls_key" in values):
        raise ConfigError("--tls-cert and --tls-key go together")
    if "listen" not in values:
        values["listen"] = "127.0.0.1:8443" if "tls_cert" in values else "127.0.0.1:8080"
    if "edge" not in values:
        raise ConfigError("the local profile needs --edge HOST:PORT (where the edge translator listens)")
    if max_body_bytes <= 0:
        raise ConfigError("the body limit must be positive")
    options = EnvoyOptions(
        profile=profile,
        listen=Address.parse(values["listen"], "--listen"),
        grpc_listen=Address.parse(values["grpc_listen"], "--grpc-listen"),
        probe_listen=Address.parse(values["probe_listen"], "--probe-listen"),
        admin=Address.parse(values["admin"], "--admin"),
        upstreams=Upstreams(**{name: Address.parse(values[name], f"--{name}") for name in UPSTREAM_NAMES}),
        tls_cert=values.get("tls_cert"),
        tls_key=values.get("tls_key"),
        access_log=values["access_log"],
        max_body_bytes=max_body_bytes,
    )
    _check(options)
    return options


def _check(options: EnvoyOptions) -> None:
    listeners = {
        "--listen": options.listen,
        "--grpc-listen": options.grpc_listen,
        "--probe-listen": options.probe_listen,
        "--admin": options.admin,
    }
    for flag, address in listeners.items():
        if not address.is_ip:
            raise ConfigError(f"{flag} must be an IP address to bind, not {address.host!r}")
    if not options.admin.is_loopback:
        raise ConfigError(f"the admin interface must stay on loopback, not {options.admin}")
    if options.profile == "cluster":
        return
    # Locally, plaintext is for this machine only: anything reachable from outside is TLS.
    plaintext = [("--grpc-listen", options.grpc_listen), ("--probe-listen", options.probe_listen)]
    if not options.tls:
        plaintext.append(("--listen", options.listen))
    for flag, address in plaintext:
        if not address.is_loopback:
            raise ConfigError(
                f"{flag} {address} is plain HTTP on a non-loopback address; "
                "use loopback, or give --tls-cert/--tls-key for the public listener"
            )
    for name, address in options.upstreams.by_name().items():
        if not address.is_ip:
            raise ConfigError(f"--{name} must be an IP address in the local profile (STATIC), not {address.host!r}")
