"""Webhooks: organizations' endpoints, and delivery of the outbox that job status changes fill.

A terminal job change writes one delivery per subscribed endpoint in its own transaction (see
``store.webhooks``). ``deliver_due`` sends one due delivery: signed per Standard Webhooks with the
event id as ``webhook-id`` on every attempt, retried with exponential backoff (``webhook_retry_seconds``,
about 27 hours by default) until the receiver answers 2xx, and logged attempt by attempt.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
from sqlalchemy import delete, select

from openft import __version__, ids
from openft.domain import webhook_signature
from openft.errors import InvalidRequestError, NotFoundError
from openft.store import webhooks as store
from openft.store.tables import WebhookAttemptRow, WebhookDeliveryRow, WebhookEndpointRow

if TYPE_CHECKING:
    from openft.services.context import Services

log = logging.getLogger(__name__)

MAX_ERROR = 500


@dataclass(frozen=True)
class Attempt:
    """One attempt as ``openft webhooks deliveries`` lists it."""

    event_id: str
    type: str
    attempted_at: float
    status_code: int | None
    error: str | None
    duration_ms: int
    succeeded: bool
    delivery_status: str
    attempt_number: int


class WebhookService:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.db = services.db
        self._http: httpx.Client | None = None

    # -- endpoints -------------------------------------------------------------------------

    def add_endpoint(
        self, organization_id: str, url: str, events: list[str] | None = None
    ) -> WebhookEndpointRow:
        """Register ``url`` for the organization's job events (all three by default); the returned
        row holds the ``whsec_`` secret, shown once to whoever added it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRequestError(
                f"Webhook URL {url!r} must be an absolute http:// or https:// URL.", param="url"
            )
        chosen = list(dict.fromkeys(events or store.EVENT_TYPES))
        unknown = [e for e in chosen if e not in store.EVENT_TYPES]
        if unknown:
            raise InvalidRequestError(
                f"Unknown event type {unknown[0]!r}; choose from {', '.join(store.EVENT_TYPES)}.",
                param="events",
            )
        row = WebhookEndpointRow(
            id=ids.webhook_endpoint_id(),
            organization_id=organization_id,
            url=url,
            secret=ids.webhook_secret(),
            events=chosen,
            created_at=int(time.time()),
        )
        with self.db.transaction() as session:
            session.add(row)
        return row

    def list_endpoints(self, organization_id: str | None = None) -> list[WebhookEndpointRow]:
        query = select(WebhookEndpointRow).order_by(WebhookEndpointRow.pk)
        if organization_id is not None:
            query = query.where(WebhookEndpointRow.organization_id == organization_id)
        with self.db.transaction() as session:
            return list(session.scalars(query))

    def remove_endpoint(self, endpoint_id: str) -> None:
        """Remove the endpoint; what it had not received yet is dropped (its attempts stay listed)."""
        with self.db.transaction() as session:
            removed = session.execute(delete(WebhookEndpointRow).where(WebhookEndpointRow.id == endpoint_id))
            if removed.rowcount != 1:
                raise NotFoundError(f"No webhook endpoint {endpoint_id}; `openft webhooks list` shows them.")
            session.execute(
                delete(WebhookDeliveryRow).where(
                    WebhookDeliveryRow.endpoint_id == endpoint_id, WebhookDeliveryRow.status == store.PENDING
                )
            )

    def attempts(self, endpoint_id: str) -> list[Attempt]:
        """Every attempt at the endpoint, oldest first, with the delivery's state."""
        with self.db.transaction() as session:
            rows = session.execute(
                select(WebhookAttemptRow, WebhookDeliveryRow)
                .join(
                    WebhookDeliveryRow, WebhookDeliveryRow.pk == WebhookAttemptRow.delivery_pk, isouter=True
                )
                .where(WebhookAttemptRow.endpoint_id == endpoint_id)
                .order_by(WebhookAttemptRow.pk)
            ).all()
        out, numbers = [], {}
        for attempt, delivery in rows:
            numbers[attempt.delivery_pk] = numbers.get(attempt.delivery_pk, 0) + 1
            out.append(
                Attempt(
                    event_id=attempt.event_id,
                    type=delivery.type if delivery is not None else "",
                    attempted_at=attempt.attempted_at,
                    status_code=attempt.status_code,
                    error=attempt.error,
                    duration_ms=attempt.duration_ms,
                    succeeded=attempt.succeeded,
                    delivery_status=delivery.status if delivery is not None else "removed",
                    attempt_number=numbers[attempt.delivery_pk],
                )
            )
        return out

    def pending(self, endpoint_id: str) -> list[WebhookDeliveryRow]:
        """Deliveries still to be made (never attempted, or waiting for their next retry)."""
        with self.db.transaction() as session:
            return list(
                session.scalars(
                    select(WebhookDeliveryRow)
                    .where(
                        WebhookDeliveryRow.endpoint_id == endpoint_id,
                        WebhookDeliveryRow.status == store.PENDING,
                    )
                    .order_by(WebhookDeliveryRow.pk)
                )
            )

    # -- delivery --------------------------------------------------------------------------

    def deliver_due(self, sender: str, *, now: float | None = None) -> bool:
        """Claim one due delivery, POST it, record the outcome. False when nothing is due."""
        now = time.time() if now is None else now
        timeout = self.settings.webhook_timeout_seconds
        with self.db.transaction() as session:
            # The lease outlives the request (bounded by the timeout) and its recording; a sender that
            # dies mid-attempt leaves it to expire, and another sender retries the delivery.
            delivery = store.claim_due(session, sender, now=now, lease_seconds=timeout + 5)
            if delivery is None:
                return False
            endpoint = session.scalar(
                select(WebhookEndpointRow).where(WebhookEndpointRow.id == delivery.endpoint_id)
            )
        if endpoint is None:  # removed while this delivery was due
            self._settle(delivery, sender, now, None, "the endpoint was removed", 0, False, final=True)
            return True
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        attempted_at = time.time()
        headers = {
            "content-type": "application/json",
            "user-agent": f"openft-webhooks/{__version__}",
            **webhook_signature.headers(endpoint.secret, delivery.event_id, int(attempted_at), body),
        }
        status_code: int | None = None
        error: str | None = None
        started = time.monotonic()
        try:
            response = self._client().post(endpoint.url, content=body, headers=headers, timeout=timeout)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        duration_ms = int((time.monotonic() - started) * 1000)
        succeeded = error is None
        if not succeeded:
            log.warning("webhook %s to %s failed: %s", delivery.event_id, endpoint.url, error)
        self._settle(delivery, sender, attempted_at, status_code, error, duration_ms, succeeded)
        return True

    def _settle(
        self,
        delivery: WebhookDeliveryRow,
        sender: str,
        attempted_at: float,
        status_code: int | None,
        error: str | None,
        duration_ms: int,
        succeeded: bool,
        *,
        final: bool = False,
    ) -> None:
        schedule = self.settings.webhook_retry_seconds
        attempt = delivery.attempts + 1
        next_at = None if final or attempt > len(schedule) else attempted_at + schedule[attempt - 1]
        with self.db.transaction() as session:
            store.record_attempt(
                session,
                delivery,
                sender,
                attempted_at=attempted_at,
                status_code=status_code,
                error=error[:MAX_ERROR] if error else None,
                duration_ms=duration_ms,
                succeeded=succeeded,
                next_attempt_at=next_at,
            )

    def _client(self) -> httpx.Client:
        if self._http is None:
            # Redirects are failures under Standard Webhooks: the endpoint's URL is the contract.
            self._http = httpx.Client(follow_redirects=False)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None


class WebhookDispatcher:
    """Sends due deliveries from a background thread until stopped. Every API process runs one
    (``create_app``'s lifespan); deliveries are leased, so replicas never send one twice at once."""

    def __init__(self, services: Services, *, sender: str | None = None) -> None:
        import os
        import socket
        import threading

        self.webhooks: WebhookService = services.webhooks
        self.poll_seconds = services.settings.webhook_poll_seconds
        self.sender = sender or f"{socket.gethostname()}:{os.getpid()}:webhooks"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="openft-webhooks", daemon=True)

    def start(self) -> WebhookDispatcher:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run_once(self, *, now: float | None = None) -> int:
        """Send everything due now; returns how many attempts were made."""
        sent = 0
        while not self._stop.is_set() and self.webhooks.deliver_due(self.sender, now=now):
            sent += 1
        return sent

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the database is away: deliveries wait in the outbox, try again
                log.exception("webhook delivery failed; retrying after a pause")
            self._stop.wait(self.poll_seconds)
