"""Azure OpenAI: OpenAI's wire format under per-deployment URLs with `api-key` auth.

    POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version={api_version}

`base_url` is the resource endpoint (https://<resource>.openai.azure.com), the
deployment is the catalog deployment's upstream model name, and the key goes in
an `api-key` header instead of `Authorization: Bearer`.
"""

from __future__ import annotations

from urllib.parse import quote

from services.common.errors import UpstreamError
from services.router.providers.base import Target
from services.router.providers.openai import OpenAIProvider


class AzureOpenAIProvider(OpenAIProvider):
    def _url(self, target: Target, path: str) -> str:
        provider = target.provider
        if not provider.api_version:
            # The catalog requires it for azure providers; guard anyway rather than send a request Azure refuses.
            raise UpstreamError(
                f"provider {provider.id} is not configured: set api_version",
                code="provider_unavailable",
                http_status=503,
            )
        deployment = quote(target.deployment.upstream_model, safe="")
        version = quote(provider.api_version, safe="")
        return f"{provider.base_url.rstrip('/')}/openai/deployments/{deployment}{path}?api-version={version}"

    def _auth_headers(self, target: Target) -> dict[str, str]:
        key = self._api_key(target)
        return {"api-key": key} if key is not None else {}
