"""The one redaction function: every error text that is stored or shown passes through `redact`, so no
API key, bearer or basic credential, or password in a URL reaches `llm_calls.error`, `explanations.error`
or a terminal. Also the check that refuses credentials inside an endpoint URL."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from autointerp.errors import BadInput

MASK = "***"
_PATTERNS = (
    re.compile(r"(?i)\b(bearer|basic|token|digest)(\s+|%20)[A-Za-z0-9._~+/=-]{4,}"),  # Authorization values
    re.compile(r"(?i)((?:api[_-]?key|access[_-]?token|password|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,;}]{3,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),  # OpenAI-style keys wherever they appear
    re.compile(r"(?i)([a-z][a-z0-9+.-]*://)[^/\s:@]*:[^/\s@]*@"),  # user:password@ in any URL
)


def _variants(secret: str) -> list[str]:
    """A secret as it may be echoed back: as given, and base64 (an Authorization: Basic header)."""
    return [secret, base64.b64encode(secret.encode()).decode()]


def redact(text: str | None, secrets: Iterable[str] = ()) -> str | None:
    """`text` with credentials replaced by ***: each of `secrets` (as given or base64), then anything shaped
    like a bearer/basic credential, a key=value secret, an sk- key or URL credentials."""
    if text is None:
        return None
    for secret in sorted({s for s in secrets if s and len(s) >= 3}, key=len, reverse=True):
        for form in _variants(secret):
            text = text.replace(form, MASK)
    text = _PATTERNS[0].sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)}{MASK}", text)
    text = _PATTERNS[2].sub(MASK, text)
    return _PATTERNS[3].sub(lambda m: f"{m.group(1)}{MASK}@", text)


def url_credentials(url: str) -> bool:
    """True when `url` carries a user name or password (https://user:pass@host/...)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return bool(parts.username or parts.password)


def refuse_url_credentials(url: str, source: str) -> None:
    """Refuse an endpoint URL with credentials in it: the HTTP client would send them as Basic auth in
    place of the API key, and a server that echoes headers would put them in stored errors."""
    if url_credentials(url):
        raise BadInput(f"{source}: credentials in the URL (user:password@) are refused; give the key in "
                         f"$OPENAI_API_KEY and the URL without them ({redact(url)})")
