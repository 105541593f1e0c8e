"""`interlock up --envoy` as a FrontedStack, and the pieces Envoy tests share:
a throwaway certificate authority, rendering, and a standalone Envoy process."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.envoy.process import envoy_argv, find_envoy
from tests.support.fronted import FrontedStack
from tests.support.stack import free_port

STARTUP_SECONDS = 90.0
# The rules the local stack runs with: roomy enough for the suite from 127.0.0.1,
# small enough that a test reaches them from an address of its own.
IP_RPM = 120
ANONYMOUS_RPM = 10


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "interlock test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = Certificates(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    out.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return out


def render(args: list[str], output: Path) -> Path:
    """`python -m gateway.envoy render ARGS -o OUTPUT`, as an operator runs it."""
    subprocess.run(
        [sys.executable, "-m", "gateway.envoy", "render", *args, "-o", str(output)],
        check=True,
        capture_output=True,
        text=True,
    )
    return output


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    binary = find_envoy(os.environ)
    return subprocess.run(
        [binary, "--mode", "validate", "-c", str(config), "--disable-hot-restart", "--log-level", "warning"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@contextmanager
def run_envoy(config: Path, ready_url: str, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One Envoy on a rendered config, until the block ends; ready when ready_url answers 200."""
    binary = find_envoy(os.environ)
    with log_path.open("wb") as log:
        process = subprocess.Popen(envoy_argv(binary, config, "warning"), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"envoy exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(ready_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"envoy not ready within {STARTUP_SECONDS}s:\n{log_path.read_text()}")
            time.sleep(0.1)
        yield process
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


@contextmanager
def start_envoy_stack(work_dir: Path, *, tls: bool = True) -> Iterator[FrontedStack]:
    """`interlock up --envoy` (HTTPS with a throwaway CA when tls), with per-IP and
    anonymous rules, and a key of its own with room for the whole suite."""
    data_dir = work_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "stack.log"
    port = free_port()
    bootstrap = "il-test-" + os.urandom(16).hex()
    admin_key = "il-admin-" + os.urandom(16).hex()
    args = [sys.executable, "-m", "services.cli.main", "up", "--envoy", "--port", str(port)]
    args += ["--data-dir", str(data_dir)]
    certificates = make_certificates(work_dir / "tls") if tls else None
    if certificates is not None:
        args += ["--tls-cert", str(certificates.cert), "--tls-key", str(certificates.key)]
    env = {
        **os.environ,
        "INTERLOCK_API_KEY": bootstrap,
        "INTERLOCK_ADMIN_KEY": admin_key,
        "INTERLOCK_LOG_LEVEL": "warning",
        "INTERLOCK_RATELIMIT_IP_RPM": str(IP_RPM),
        "INTERLOCK_RATELIMIT_ANONYMOUS_RPM": str(ANONYMOUS_RPM),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        layout = _wait_ready(data_dir, process, log_path)
        envoy = layout["envoy"]
        verify = ssl.create_default_context(cafile=str(certificates.ca_cert)) if certificates is not None else True
        # A key of its own (through Envoy's transcoded admin API): the bootstrap key's
        # default plan allows less than the suite sends.
        reply = httpx.post(
            f"{envoy['url']}/v1/keys",
            json={"name": "envoy-suite", "requests_per_minute": 100000, "burst": 100000, "tokens_per_minute": 0},
            headers={"Authorization": f"Bearer {admin_key}"},
            verify=verify,
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        api_key = str(reply.json()["key"])
        _wait_key_known(str(layout["edge"]), api_key)
        yield FrontedStack(
            url=str(envoy["url"]),
            grpc_addr=str(envoy["grpc"]),
            edge_url=str(layout["edge"]),
            api_key=api_key,
            admin_key=admin_key,
            ca_cert=certificates.ca_cert if certificates is not None else None,
            access_log=Path(envoy["access_log"]),
            ip_rpm=IP_RPM,
            anonymous_rpm=ANONYMOUS_RPM,
            logs=lambda: log_path.read_text(errors="replace"),
        )
    finally:
        code = _stop(process)
    assert code == 0, f"interlock up exited with {code}:\n{log_path.read_text(errors='replace')}"


def _wait_ready(data_dir: Path, process: subprocess.Popen[bytes], log_path: Path) -> dict[str, object]:
    stack_file = data_dir / "stack.json"
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"interlock up exited with {process.returncode}:\n{log_path.read_text()}")
        if stack_file.exists():
            layout: dict[str, object] = json.loads(stack_file.read_text())
            if "envoy" in layout:
                return layout
        time.sleep(0.1)
    raise RuntimeError(f"interlock up --envoy not ready within {STARTUP_SECONDS}s:\n{log_path.read_text()}")


def _wait_key_known(edge_url: str, secret: str, timeout: float = 10.0) -> None:
    # An empty chat body: 400 once the edge knows the key (from catalog's watch), 401 before.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = httpx.post(
            f"{edge_url}/v1/chat/completions", json={}, headers={"Authorization": f"Bearer {secret}"}, timeout=5
        )
        if reply.status_code == 400:
            return
        time.sleep(0.05)
    raise AssertionError("the edge never learned the suite's key")
