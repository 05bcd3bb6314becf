"""The conversation's LLM: Groq or vLLM (OpenAI-compatible), primary and secondary with failover.

Both providers are reached through LiveKit's plugins (the Groq plugin is the OpenAI plugin
pointed at Groq), so streaming and tool calls follow one code path. When a secondary is
configured, LiveKit's FallbackAdapter moves to it as soon as the primary errors or exceeds
`attempt_timeout_s`, and brings the primary back in the background once it answers again.
"""

from __future__ import annotations

from typing import Literal

from livekit.agents import NOT_GIVEN, APIConnectOptions
from livekit.agents import llm as lk_llm
from livekit.plugins import groq, openai
from pydantic import BaseModel, Field, SecretStr

Provider = Literal["groq", "vllm", "openai"]


class LLMEndpoint(BaseModel):
    """One model behind one OpenAI-compatible endpoint."""

    provider: Provider
    model: str
    # None: the provider's own endpoint (Groq); required for vLLM (`vllm serve ... --port 8000` → .../v1).
    base_url: str | None = None
    api_key: SecretStr | None = None
    temperature: float = Field(default=0.4, ge=0.0, le=2.0)
    max_completion_tokens: int = Field(default=300, gt=0)


class LLMConfig(BaseModel):
    """What the agent settings carry for the LLM; nested under AgentSettings as `llm`."""

    primary: LLMEndpoint = LLMEndpoint(provider="groq", model="llama-3.3-70b-versatile")
    secondary: LLMEndpoint | None = None
    # The time the member waits in silence before we give up on the primary for this turn.
    attempt_timeout_s: float = Field(default=4.0, gt=0.0)
    # Without a secondary, one quick retry on the same provider beats an immediate apology.
    single_provider_max_retry: int = Field(default=1, ge=0)


def build_endpoint_llm(endpoint: LLMEndpoint) -> lk_llm.LLM:
    api_key = endpoint.api_key.get_secret_value() if endpoint.api_key else None
    if endpoint.provider == "groq":
        return groq.LLM(
            model=endpoint.model,
            # Without a key here the plugin reads GROQ_API_KEY, and raises ValueError without one.
            api_key=api_key or NOT_GIVEN,
            base_url=endpoint.base_url or "https://api.groq.com/openai/v1",
            temperature=endpoint.temperature,
            max_completion_tokens=endpoint.max_completion_tokens,
        )
    if endpoint.provider == "vllm" and not endpoint.base_url:
        raise ValueError("a vLLM endpoint needs base_url, e.g. http://gpu-host:8000/v1")
    return openai.LLM(
        model=endpoint.model,
        # vLLM accepts any key unless started with --api-key; the client insists on one.
        api_key=api_key or "not-needed",
        base_url=endpoint.base_url or "https://api.openai.com/v1",
        temperature=endpoint.temperature,
        max_completion_tokens=endpoint.max_completion_tokens,
    )


def build_llm(config: LLMConfig) -> lk_llm.LLM:
    """The primary alone, or primary → secondary behind LiveKit's FallbackAdapter."""
    primary = build_endpoint_llm(config.primary)
    if config.secondary is None:
        return primary
    return lk_llm.FallbackAdapter(
        [primary, build_endpoint_llm(config.secondary)],
        attempt_timeout=config.attempt_timeout_s,
        max_retry_per_llm=0,  # fail over at once: the member is waiting
        retry_interval=0.2,
    )


def llm_connect_options(config: LLMConfig) -> APIConnectOptions:
    """Connection options the session passes to the LLM on every turn."""
    if config.secondary is not None:
        # The FallbackAdapter applies attempt_timeout_s per provider itself.
        return APIConnectOptions(max_retry=0, retry_interval=0.2, timeout=config.attempt_timeout_s)
    return APIConnectOptions(
        max_retry=config.single_provider_max_retry, retry_interval=0.3, timeout=config.attempt_timeout_s
    )
