"""Every id and model name is minted here, in OpenAI's formats."""

from __future__ import annotations

import re
import secrets
import string

_BASE62 = string.ascii_letters + string.digits


def _random(n: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(n))


def file_id() -> str:
    return "file-" + _random(22)


def upload_id() -> str:
    return "upload_" + _random(24)


def part_id() -> str:
    return "part_" + _random(24)


def job_id() -> str:
    return "ftjob-" + _random(24)


def event_id() -> str:
    return "ftevent-" + _random(24)


def checkpoint_id() -> str:
    return "ftckpt_" + _random(24)


def chat_completion_id() -> str:
    return "chatcmpl-" + _random(29)


def organization_id() -> str:
    return "org-" + _random(24)


def api_key() -> str:
    return "sk-openft-" + _random(40)


def request_id() -> str:
    return "req_" + secrets.token_hex(16)


def model_id8() -> str:
    return _random(8)


_SLUG_BAD = re.compile(r"[^a-z0-9-]+")


def slug(text: str) -> str:
    """Lower-case, colon-free form of a name, safe inside a ``ft:`` model name."""
    return _SLUG_BAD.sub("-", text.lower()).strip("-") or "personal"


_CHECKPOINT_TAIL = re.compile(r":ckpt-step-\d+$")


def named_base(model: str, parent_model: str | None) -> str:
    """The ``{base}`` of a job's ``ft:`` name: the model the caller named (an alias stays an
    alias), or for a job that continues an ``ft:`` model, that model's own ``{base}``.

    Parsed from the right (org, suffix and id8 hold no ':'), so a base name may contain ':'."""
    if parent_model is None:
        return model
    return _CHECKPOINT_TAIL.sub("", parent_model.removeprefix("ft:")).rsplit(":", 3)[0]


def fine_tuned_model_name(base: str, org_slug: str, suffix: str | None, id8: str) -> str:
    """``ft:{base}:{org}:{suffix}:{id8}``; an absent suffix leaves its segment empty, as at OpenAI."""
    return f"ft:{base}:{org_slug}:{suffix or ''}:{id8}"


def checkpoint_model_name(base: str, org_slug: str, suffix: str | None, id8: str, step: int) -> str:
    return f"{fine_tuned_model_name(base, org_slug, suffix, id8)}:ckpt-step-{step}"


def project_id() -> str:
    return "proj_" + _random(24)


def checkpoint_permission_id() -> str:
    return "cp_" + _random(24)


def webhook_endpoint_id() -> str:
    return "we_" + _random(24)


def webhook_event_id() -> str:
    return "evt_" + _random(24)


def webhook_secret() -> str:
    """Standard Webhooks' secret format: ``whsec_`` and the base64 of 32 random bytes."""
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
