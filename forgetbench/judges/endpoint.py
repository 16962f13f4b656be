"""A small client for OpenAI-compatible endpoints: chat, completions and moderation.

It works against the OpenAI API, a local ``vllm serve <model>`` (``http://localhost:8000/v1``) or
any server speaking the same protocol, through the ``openai`` client (its transport, errors and
connection pooling; its own retries are off because they cannot see a garbage answer).

Failures are of two kinds:

* *transient* — the server cannot be reached, times out, answers HTTP 408/409/425/429/5xx, sends
  something that is not JSON, or sends an answer the caller cannot parse ("garbage"). The request
  is retried ``max_retries`` times with exponential back-off (``backoff_s``, doubled each time, at
  most ``max_backoff_s``; a numeric ``Retry-After`` header is honoured within that cap); then
  :class:`EndpointError` is raised, which judges turn into a *missing*, retryable verdict.
* *configuration* — any other HTTP 4xx (wrong model name, bad key, bad request). Retrying cannot
  help, so :class:`EndpointConfigError` is raised at once and names what to check.

The API key is read from the environment variable named by ``api_key_env`` at call time, so it is
never part of a config, a stage hash or a results row.
"""

from __future__ import annotations

import functools
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Sequence, TypeVar

from forgetbench.config import Field, StrictModel
from forgetbench.errors import ForgetbenchError

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


class EndpointError(ForgetbenchError):
    """The endpoint kept failing (down, overloaded, garbage answers) after every retry."""


class EndpointConfigError(ForgetbenchError):
    """The endpoint refused the request in a way no retry can fix (HTTP 4xx other than 408/429)."""


class ParseError(ValueError):
    """An answer arrived but does not have the expected form (counts as a transient failure)."""


class EndpointSettings(StrictModel):
    """How to reach an OpenAI-compatible endpoint and how hard to retry."""

    base_url: str = Field(
        "http://localhost:8000/v1",
        description="The API root, ending in /v1: "
        "https://api.openai.com/v1, or a local `vllm serve` "
        "(http://localhost:8000/v1).",
    )
    api_key_env: Optional[str] = Field(
        "OPENAI_API_KEY",
        description="Name of the environment "
        "variable holding the API key, sent as a Bearer token when "
        "set; the key itself never enters a config or a result.",
    )
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one HTTP answer.")
    max_retries: int = Field(
        5,
        ge=0,
        description="Retries after a transient failure (network "
        "error, timeout, HTTP 408/409/425/429/5xx, unparseable answer).",
    )
    backoff_s: float = Field(
        1.0, ge=0, description="Wait before the first retry; doubled before each further one."
    )
    max_backoff_s: float = Field(60.0, ge=0, description="Longest wait between two attempts.")
    concurrency: int = Field(8, ge=1, description="Requests in flight at once.")


def backoff_delays(settings: EndpointSettings) -> list[float]:
    """The waits before retry 1..max_retries: backoff_s * 2^k, capped at max_backoff_s."""
    return [
        min(settings.backoff_s * 2**k, settings.max_backoff_s) for k in range(settings.max_retries)
    ]


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: Optional[float] = None):
        super().__init__(reason)
        self.retry_after = retry_after


def _retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@functools.lru_cache(maxsize=16)
def _client(base_url: str, timeout_s: float, key: Optional[str]):
    import openai

    # The client's own retries are off: ``request`` retries with the settings' back-off, and
    # also when an answer arrives but cannot be parsed, which the client cannot know.
    # "EMPTY" is what a keyless `vllm serve` expects (the client insists on some key).
    return openai.OpenAI(
        base_url=base_url, api_key=key or "EMPTY", timeout=timeout_s, max_retries=0
    )


def post_once(settings: EndpointSettings, path: str, payload: dict) -> Any:
    """One POST of ``payload`` as JSON to ``base_url/path`` with the ``openai`` client; the
    decoded JSON answer. The key is read from ``$api_key_env`` now, at call time."""
    import httpx
    import openai

    url = settings.base_url.rstrip("/") + "/" + path.lstrip("/")
    key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
    client = _client(settings.base_url.rstrip("/"), settings.timeout_s, key)
    try:
        answer = client.post("/" + path.lstrip("/"), body=payload, cast_to=httpx.Response)
    except openai.APIStatusError as error:
        snippet = error.response.text[:300].strip().replace("\n", " ")
        code = error.status_code
        if code in TRANSIENT_STATUS or code >= 500:
            raise _Transient(
                f"{url} answered HTTP {code}: {snippet}",
                _retry_after(error.response.headers.get("Retry-After")),
            ) from None
        raise EndpointConfigError(
            f"{url} answered HTTP {code} ({snippet or error.message}); check the judge's "
            f"base_url, model name and the API key in ${settings.api_key_env}"
        ) from None
    except openai.APIConnectionError as error:  # includes APITimeoutError
        cause = error.__cause__ or error
        raise _Transient(f"cannot reach {url}: {type(cause).__name__}: {cause}") from None
    try:
        return json.loads(answer.content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        snippet = answer.content[:120].decode("utf-8", "replace")
        raise _Transient(f"{url} answered something that is not JSON: {snippet!r}") from None


def request(
    settings: EndpointSettings,
    path: str,
    payload: dict,
    parse: Callable[[Any], T] = lambda data: data,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """POST with retries: ``parse(answer)`` is returned; a :class:`ParseError` (or KeyError,
    IndexError, TypeError, ValueError) from ``parse`` counts as a transient failure."""
    delays = backoff_delays(settings)
    failures: list[str] = []
    for attempt in range(settings.max_retries + 1):
        try:
            return parse(post_once(settings, path, payload))
        except _Transient as error:
            failures.append(str(error))
            wait_hint = error.retry_after
        except (ParseError, KeyError, IndexError, TypeError, ValueError) as error:
            failures.append(f"unparseable answer ({type(error).__name__}: {error})")
            wait_hint = None
        if attempt < settings.max_retries:
            delay = delays[attempt]
            if wait_hint is not None:
                delay = min(max(delay, wait_hint), settings.max_backoff_s)
            sleep(delay)
    raise EndpointError(f"{len(failures)} attempts failed; last: {failures[-1][:300]}")


def chat_payload(model: str, messages: list[dict], **params) -> dict:
    return {
        "model": model,
        "messages": messages,
        **{k: v for k, v in params.items() if v is not None},
    }


def message_content(data: Any) -> str:
    """The text of the first choice of a chat-completions answer."""
    content = data["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise ParseError(f"message content is {type(content).__name__}, not text")
    return content


def completion_text(data: Any) -> str:
    """The text of the first choice of a (legacy) completions answer."""
    text = data["choices"][0]["text"]
    if not isinstance(text, str):
        raise ParseError(f"completion text is {type(text).__name__}, not text")
    return text


def moderation_scores(data: Any, expected: int) -> list[dict[str, float]]:
    """``category_scores`` of each result of a moderation answer, checked for shape."""
    results = data["results"]
    if len(results) != expected:
        raise ParseError(f"moderation answered {len(results)} results for {expected} inputs")
    scores = []
    for result in results:
        categories = result["category_scores"]
        if not isinstance(categories, dict) or not categories:
            raise ParseError("moderation result has no category_scores")
        values = {str(k): float(v) for k, v in categories.items()}
        if any(not 0.0 <= v <= 1.0 for v in values.values()):
            raise ParseError(f"moderation category score outside [0, 1]: {values}")
        scores.append(values)
    return scores


def parallel_map(function: Callable[[Any], T], items: Sequence, concurrency: int) -> list[T]:
    """``[function(x) for x in items]`` with up to ``concurrency`` calls in flight, in order."""
    if concurrency <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items))) as pool:
        return list(pool.map(function, items))
