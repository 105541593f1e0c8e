"""`interlock keys|projects|models` end to end: the real CLI process against the real stack."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from services.cli import keys
from services.cli.admin_client import AdminClient, CliError
from tests.support.stack import Stack, free_port

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parent.parent
HI = [{"role": "user", "content": "hi"}]


def cli(
    stack: Stack, *args: str, url: str | None = None, admin_key: str | None = None, api_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `interlock ARGS` as its own process, configured only by the environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    env.update(
        INTERLOCK_URL=url or stack.url,
        INTERLOCK_ADMIN_KEY=admin_key or stack.admin_key,
        INTERLOCK_API_KEY=api_key or stack.api_key,
    )
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # No command ever prints a key it was given.
    for secret in (stack.admin_key, stack.api_key, admin_key, api_key):
        if secret:
            assert secret not in result.stdout + result.stderr
    return result


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def chat(stack: Stack, key: str) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "demo-chat", "messages": HI},
        timeout=30,
    )


def wait_until_accepted(stack: Stack, key: str, seconds: float = 2.0) -> httpx.Response:
    """Edges learn of new keys through the watch stream: allow a moment."""
    deadline = time.monotonic() + seconds
    answer = chat(stack, key)
    while answer.status_code == 401 and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = chat(stack, key)
    return answer


def wait_until_refused(stack: Stack, key: str, seconds: float = 1.0) -> None:
    started = time.monotonic()
    while (status := chat(stack, key).status_code) != 401:
        assert status == 200, status
        assert time.monotonic() - started < seconds, "revocation took more than a second"
        time.sleep(0.02)


def table_rows(output: str) -> list[list[str]]:
    """The rows of a printed table (header skipped), split on the two-space column gap."""
    lines = [line for line in output.splitlines() if line.strip()]
    return [[cell.strip() for cell in line.split("  ") if cell.strip()] for line in lines[1:]]


def unique(prefix: str) -> str:
    return f"{prefix}-{os.urandom(3).hex()}"


def test_projects_create_and_list(stack: Stack) -> None:
    slug = unique("cli-team")
    out = ok(cli(stack, "projects", "create", "--name", "CLI Team", "--id", slug))
    assert f"Created project {slug}" in out

    made = json.loads(ok(cli(stack, "projects", "create", "--name", f"Made From {slug}", "--json")))
    assert made["project"]["id"] and made["project"]["name"] == f"Made From {slug}"

    listing = ok(cli(stack, "projects", "list"))
    assert [h.strip() for h in listing.splitlines()[0].split("  ") if h.strip()] == [
        "ID", "NAME", "RPM", "TPM", "BUDGET USD", "CREATED",
    ]  # fmt: skip
    ids = {row[0] for row in table_rows(listing)}
    assert {slug, made["project"]["id"]} <= ids
    as_json = json.loads(ok(cli(stack, "projects", "list", "--json")))
    assert slug in {p["id"] for p in as_json["projects"]}

    duplicate = cli(stack, "projects", "create", "--name", "again", "--id", slug)
    assert duplicate.returncode == 1 and duplicate.stderr.startswith("interlock: error: ")


def test_project_limits_create_update_and_list(stack: Stack) -> None:
    slug = unique("cli-limits")
    out = ok(cli(
        stack, "projects", "create", "--name", "CLI Limits", "--id", slug,
        "--requests-per-minute", "100", "--tpm", "5000", "--budget-usd", "20",
    ))  # fmt: skip
    assert f"Created project {slug}" in out
    assert "requests/min 100, tokens/min 5000, budget USD 20 total" in out

    rows = {row[0]: row for row in table_rows(ok(cli(stack, "projects", "list")))}
    assert rows[slug][1:5] == ["CLI Limits", "100", "5000", "20 total"]
    assert rows["default"][2:5] == ["-", "-", "-"]  # no limits

    # Only the flags given change.
    updated = ok(cli(stack, "projects", "update", slug, "--budget-period", "monthly", "--rpm", "0"))
    assert updated.startswith(f"Updated project {slug} (name 'CLI Limits'")
    assert "requests/min -, tokens/min 5000, budget USD 20 monthly" in updated
    as_json = json.loads(ok(cli(
        stack, "projects", "update", slug, "--name", "Renamed", "--tokens-per-minute", "7", "--budget-usd", "2.5",
        "--json",
    )))  # fmt: skip
    assert as_json["id"] == slug and as_json["name"] == "Renamed"
    assert int(as_json["tokens_per_minute"]) == 7 and int(as_json["requests_per_minute"]) == 0
    assert as_json["budget_usd"] == 2.5 and as_json["budget_period"] == "monthly"
    listed = json.loads(ok(cli(stack, "projects", "list", "--json")))["projects"]
    assert next(p for p in listed if p["id"] == slug) == as_json

    created = json.loads(
        ok(cli(stack, "projects", "create", "--name", unique("Cli Json"), "--budget-usd", "1", "--json"))
    )
    assert created["project"]["budget_usd"] == 1 and created["project"]["budget_period"] == "total"

    missing = cli(stack, "projects", "update", "no-such-project", "--rpm", "5")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "not_found_error" in missing.stderr and "HTTP 404" in missing.stderr and "no-such-project" in missing.stderr

    # Usage errors: nothing to change, a negative limit, an unknown period.
    nothing = cli(stack, "projects", "update", slug)
    assert nothing.returncode == 2 and "needs something to change" in nothing.stderr
    assert cli(stack, "projects", "update", slug, "--requests-per-minute", "-1").returncode == 2
    assert cli(stack, "projects", "create", "--name", "x", "--budget-period", "weekly").returncode == 2
    assert cli(stack, "projects", "create", "--name", "x", "--budget-usd", "nan").returncode == 2
    final = {row[0]: row for row in table_rows(ok(cli(stack, "projects", "list")))}
    assert final[slug][1:5] == ["Renamed", "-", "7", "2.5 monthly"]


def test_key_lifecycle(stack: Stack) -> None:
    project = unique("cli-keys")
    ok(cli(stack, "projects", "create", "--name", "CLI keys", "--id", project))
    created = cli(
        stack,
        "keys", "create", "--name", "cli-ci", "--project", project, "--model", "demo-chat", "--model", "demo-embed",
        "--rpm", "100", "--budget-usd", "5", "--budget-period", "monthly", "--expires-at", "2099-01-01T00:00:00+02:00",
        "--json",
    )  # fmt: skip
    body = json.loads(ok(created))
    key_id, secret = body["id"], body["key"]
    info = body["api_key"]
    assert info["project"] == project and info["models"] == ["demo-chat", "demo-embed"]
    assert info["requests_per_minute"] == 100 and info["budget_usd"] == 5 and info["budget_period"] == "monthly"
    assert info["expires_at"].startswith("2098-12-31T22:00:00")
    masked = info["masked"]
    assert secret not in masked

    # The listing shows the masked form, never the secret.
    listing = ok(cli(stack, "keys", "list", "--project", project))
    assert listing.splitlines()[0].split() == ["ID", "NAME", "PROJECT", "MASKED", "MODELS", "PLAN", "REVOKED"]
    assert secret not in listing
    rows = {row[0]: row for row in table_rows(listing)}
    assert rows[key_id][1:5] == ["cli-ci", project, masked, "demo-chat,demo-embed"]
    assert rows[key_id][-1] == "no"
    listed_json = ok(cli(stack, "keys", "list", "--project", project, "--json"))
    assert secret not in listed_json and masked in listed_json

    # The new key works at the edge...
    answer = wait_until_accepted(stack, secret)
    assert answer.status_code == 200, answer.text

    # ...until it is revoked: then it is refused within a second.
    revoked = cli(stack, "keys", "revoke", key_id)
    assert f"Revoked key {key_id}" in ok(revoked)
    wait_until_refused(stack, secret)
    assert key_id not in ok(cli(stack, "keys", "list", "--project", project))
    with_revoked = ok(cli(stack, "keys", "list", "--project", project, "--all"))
    assert {row[0]: row for row in table_rows(with_revoked)}[key_id][-1] == "yes"
    assert "No keys" in ok(cli(stack, "keys", "list", "--project", project))


def test_create_prints_secret_once_and_rotate_replaces_it(stack: Stack) -> None:
    out = ok(cli(stack, "keys", "create", "--name", "cli-rotating", "--model", "demo-*"))
    lines = out.splitlines()
    assert lines[0].startswith("Created key ")
    key_id = lines[0].split()[2]
    secrets = [line.removeprefix("Secret: ") for line in lines if line.startswith("Secret: ")]
    assert len(secrets) == 1
    old = secrets[0]
    assert out.count(old) == 1
    assert "will not be shown again" in out
    assert wait_until_accepted(stack, old).status_code == 200

    rotated = ok(cli(stack, "keys", "rotate", key_id))
    assert rotated.startswith(f"Rotated key {key_id}") and "will not be shown again" in rotated
    new = next(line.removeprefix("Secret: ") for line in rotated.splitlines() if line.startswith("Secret: "))
    assert new != old
    assert wait_until_accepted(stack, new).status_code == 200
    assert chat(stack, old).status_code == 401

    again = json.loads(ok(cli(stack, "keys", "rotate", key_id, "--json")))
    assert again["id"] == key_id and again["key"] not in (old, new)
    assert wait_until_accepted(stack, again["key"]).status_code == 200
    assert json.loads(ok(cli(stack, "keys", "revoke", key_id, "--json")))["revoked"] is True


def test_models_filters_by_type_and_provider(stack: Stack) -> None:
    out = ok(cli(stack, "models", "--type", "embedding"))
    header = out.splitlines()[0]
    for column in ("ID", "TYPE", "PROVIDER", "CONTEXT", "PRICE IN/OUT PER 1M", "AVAILABLE"):
        assert column in header
    rows = table_rows(out)
    assert rows and {row[1] for row in rows} == {"embedding"}
    assert {"demo-embed", "fake-embed"} <= {row[0] for row in rows}
    assert {row[0]: row for row in rows}["demo-embed"][4] == "0.02 / -"  # billed on input only
    assert "demo-chat" not in out

    data = json.loads(ok(cli(stack, "models", "--type", "embedding", "--json")))["data"]
    assert data and {m["type"] for m in data} == {"embedding"}

    demo_chat = {row[0]: row for row in table_rows(ok(cli(stack, "models", "--provider", "demo", "--type", "chat")))}
    assert demo_chat["demo-chat"][1:] == ["chat", "demo", "8192", "0.1 / 0.4", "yes"]
    assert "fake-chat" not in demo_chat
    assert "No models match" in ok(cli(stack, "models", "--provider", "no-such-provider"))


def test_models_needs_an_ordinary_key(stack: Stack) -> None:
    # The admin key is not an API key: the edge refuses it.
    refused = cli(stack, "models", api_key=stack.admin_key)
    assert refused.returncode == 1
    assert "authentication_error" in refused.stderr and "INTERLOCK_API_KEY" in refused.stderr


def test_server_error_exits_1_with_the_servers_message(stack: Stack) -> None:
    result = cli(stack, "keys", "revoke", "key_doesnotexist")
    assert result.returncode == 1 and result.stdout == ""
    message = result.stderr.strip()
    assert message.startswith("interlock: error: ")
    assert "not_found_error" in message and "HTTP 404" in message and "request id " in message
    # The server's own words, not a generic one.
    direct = httpx.delete(f"{stack.base_url}/keys/key_doesnotexist", headers=stack.admin_headers(), timeout=30)
    assert direct.json()["error"]["message"] in message


def test_wrong_admin_key_exits_1_with_an_authentication_message(stack: Stack) -> None:
    wrong = "il-admin-" + "0" * 32
    result = cli(stack, "keys", "list", admin_key=wrong)
    assert result.returncode == 1 and result.stdout == ""
    assert "authentication_error" in result.stderr and "HTTP 401" in result.stderr
    assert "INTERLOCK_ADMIN_KEY" in result.stderr
    # An ordinary key is known but not allowed: 403, not 401.
    forbidden = cli(stack, "projects", "list", admin_key=stack.api_key)
    assert forbidden.returncode == 1 and "permission_error" in forbidden.stderr


def test_unreachable_gateway_exits_1_with_a_clear_message(stack: Stack) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = cli(stack, "keys", "list", url=url)
    assert result.returncode == 1 and result.stdout == ""
    assert f"cannot reach the gateway at {url}" in result.stderr
    assert "Traceback" not in result.stderr
    models = cli(stack, "models", url=url + "/v1/")
    assert models.returncode == 1 and f"cannot reach the gateway at {url}" in models.stderr


def test_usage_errors_exit_2(stack: Stack) -> None:
    assert cli(stack, "keys", "create").returncode == 2  # --name is required
    bad_time = cli(stack, "keys", "create", "--name", "x", "--expires-at", "2030-01-01")
    assert bad_time.returncode == 2 and "zone" in bad_time.stderr
    assert cli(stack, "keys", "create", "--name", "x", "--rpm", "-1").returncode == 2
    assert cli(stack, "models", "--type", "video").returncode == 2

    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    for args, variable in ((["keys", "list"], "INTERLOCK_ADMIN_KEY"), (["models"], "INTERLOCK_API_KEY")):
        missing = subprocess.run(
            [sys.executable, "-m", "services.cli.main", *args, "--url", stack.url],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert missing.returncode == 2 and variable in missing.stderr


# The client and argument checks on their own, in process, for answers the real stack never gives.


def mocked(handler: Callable[[httpx.Request], httpx.Response], key: str = "il-admin-secret") -> AdminClient:
    return AdminClient("http://gateway.test/v1/", key, transport=httpx.MockTransport(handler))


def test_client_reports_odd_answers_without_a_traceback() -> None:
    seen: list[httpx.Request] = []

    def proxy_error(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(502, text="<html>\n  <body>Bad   gateway</body>\n</html>", headers={"x-request-id": "r1"})

    with mocked(proxy_error) as client, pytest.raises(CliError) as caught:
        client.revoke_key("a/b")
    assert caught.value.message == "<html> <body>Bad gateway</body> </html> (HTTP 502, request id r1)"
    assert caught.value.status == 502 and caught.value.request_id == "r1"
    assert seen[0].url.raw_path == b"/v1/keys/a%2Fb" and seen[0].headers["authorization"] == "Bearer il-admin-secret"

    with mocked(lambda _: httpx.Response(500)) as client, pytest.raises(CliError, match=r"Internal Server Error"):
        client.list_projects()
    echo = {"error": {"type": "authentication_error", "message": "bad key il-admin-secret"}}
    with mocked(lambda _: httpx.Response(401, json=echo)) as client, pytest.raises(CliError) as caught:
        client.list_keys()
    assert "il-admin-secret" not in caught.value.message and "[redacted]" in caught.value.message
    with (
        mocked(lambda _: httpx.Response(200, text="<html>")) as client,
        pytest.raises(CliError, match="other than JSON"),
    ):
        client.list_keys()
    with mocked(lambda _: httpx.Response(200, json=[1])) as client, pytest.raises(CliError, match="not an object"):
        client.list_models()

    def patch_echo(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "p", "name": "P"})

    with mocked(patch_echo) as client:
        client.update_project("a/b", tokens_per_minute=0)
    assert seen[-1].method == "PATCH" and seen[-1].url.raw_path == b"/v1/projects/a%2Fb"
    assert json.loads(seen[-1].content) == {"tokens_per_minute": 0}  # only what was given, 0 included

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    def connect_timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("slow", request=request)

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed", request=request)

    for failing, words in ((timeout, "no answer in time"), (connect_timeout, "timed out"), (broken, "RemoteProtocol")):
        with mocked(failing) as client, pytest.raises(CliError, match=words):
            client.list_projects()

    for bad in ("localhost:8080", "ftp://x", "http://", "http://[::1"):
        with pytest.raises(CliError, match="invalid gateway URL"):
            AdminClient(bad, "k")


def test_argument_types() -> None:
    assert keys.rfc3339("2030-01-31T01:02:03.250+01:00") == "2030-01-31T00:02:03.25Z"
    assert keys.rfc3339("2030-01-31T00:00:00Z") == "2030-01-31T00:00:00Z"
    for bad_time in ("soon", "2030-01-31"):
        with pytest.raises(argparse.ArgumentTypeError):
            keys.rfc3339(bad_time)
    assert keys.non_negative_int("0") == 0
    for bad_int in ("x", "1.5", "-3"):
        with pytest.raises(argparse.ArgumentTypeError):
            keys.non_negative_int(bad_int)
    assert keys.non_negative_float("2.5") == 2.5
    for bad_float in ("x", "nan", "inf", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            keys.non_negative_float(bad_float)
