"""An in-memory :class:`~kms_adapter.port.KmsPort` for unit tests.

It drives the simulator's own state model (:class:`~kms_adapter.simulator.state.SimulatorState`), so
it dedups by idempotency key, creates or refuses unseen cards and answers business errors exactly as
the simulator does over HTTP, and it checks commands with the same
:func:`~kms_adapter.commands.command_fields` as the SOAP client. On top it records every call
(:attr:`InMemoryKms.calls`) and lets a test script failures::

    kms = InMemoryKms()
    kms.fail_next(2, KmsUnavailable("timeout"))          # the next two calls raise
    kms.set_card_error("4120051539", "UNKNOWN_CLIENT")   # calls naming that card are rejected
    ...
    assert [c.command.operation for c in kms.calls if c.command] == [Operation.SYNC_ENTITLEMENTS]
    assert kms.entitlements("4120051539") == (Product(product_id="P100"),)
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.records import KmsCommand, Product

from .commands import check_xml_safe, command_fields
from .errors import KmsRejected
from .port import ClientState, KmsOutcome
from .simulator.state import BUSINESS_ERRORS, SimulatorState

__all__ = ["InMemoryKms", "KmsCall"]


@dataclass(frozen=True, slots=True)
class KmsCall:
    """One call made to the fake, in order. ``method`` is the port method's name."""

    method: str  # "execute", "query_client", "query_clients", "ping"
    command: KmsCommand | None = None
    secure_client_id: str | None = None
    secure_client_ids: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()


Failure = BaseException | Callable[[], BaseException]


class InMemoryKms:
    """The fake KMS. ``latency`` (seconds) is awaited on every call, to exercise concurrency."""

    def __init__(self, *, strict_clients: bool = False, latency: float = 0.0) -> None:
        self.state = SimulatorState(strict_clients=strict_clients)
        self.calls: list[KmsCall] = []
        self.latency = latency
        self.closed = False
        self._failures: deque[Failure] = deque()
        self._card_errors: dict[str, tuple[str, str]] = {}

    # --- scripting -------------------------------------------------------------------------------------

    def fail_next(self, n: int, exc: Failure) -> None:
        """Make the next ``n`` calls (any method but ``aclose``) raise ``exc``.

        ``exc`` is an exception instance or a zero-argument factory (a fresh exception per call).
        The failed calls are still recorded in :attr:`calls`.
        """
        self._failures.extend([exc] * n)

    def set_card_error(self, secure_client_id: str, code: str, description: str | None = None) -> None:
        """Answer every call naming this card with the business error ``code`` (``KmsRejected``)."""
        self._card_errors[secure_client_id] = (code, description or BUSINESS_ERRORS.get(code, code))

    def clear_card_error(self, secure_client_id: str) -> None:
        self._card_errors.pop(secure_client_id, None)

    def seed(self, secure_client_id: str, **fields: Any) -> None:
        """Create or change a card directly, e.g. ``seed("C1", entitlements=[{"product_id": "P1"}],
        paired_chipset="STB-1", pin="0001")`` (fields and shape of docs/architecture.md §8)."""
        self.state.overwrite({"secure_clients": {secure_client_id: fields}})

    def reset(self) -> None:
        """Forget state, recorded calls and scripted failures."""
        self.state.reset()
        self.calls.clear()
        self._failures.clear()
        self._card_errors.clear()

    # --- inspection ----------------------------------------------------------------------------------

    @property
    def executed(self) -> list[KmsCommand]:
        """Commands passed to :meth:`execute`, in order (including failed and duplicate ones)."""
        return [c.command for c in self.calls if c.command is not None]

    def entitlements(self, secure_client_id: str) -> tuple[Product, ...]:
        client = self.state.clients.get(secure_client_id)
        return tuple(_product(e) for e in client.entitlements) if client else ()

    def paired_chipset(self, secure_client_id: str) -> str | None:
        client = self.state.clients.get(secure_client_id)
        return client.paired_chipset if client else None

    def pin(self, secure_client_id: str) -> str | None:
        client = self.state.clients.get(secure_client_id)
        return client.pin if client else None

    def snapshot(self) -> dict[str, Any]:
        """The state in the simulator's JSON shape (docs/architecture.md §8), audit included."""
        return self.state.snapshot()

    # --- KmsPort -------------------------------------------------------------------------------------

    async def execute(self, command: KmsCommand) -> KmsOutcome:
        self.calls.append(KmsCall("execute", command=command, secure_client_id=command.secure_client_id))
        await self._before_call()
        f = command_fields(command)
        self._raise_card_error(f.card, f.operation)
        answer = self.state.apply(
            f.operation,
            f.idempotency_key,
            f.card,
            products=[p.model_dump() for p in f.products],
            chipset=f.chipset,
            pin=f.pin,
            text=f.text,
            text_mode=f.text_mode,
        )
        if not answer.ok:
            raise KmsRejected(answer.code, answer.text, operation=f.operation)
        return KmsOutcome(provider_code=answer.code, provider_text=answer.text, duplicate=answer.duplicate)

    async def query_client(
        self, secure_client_id: str, sections: Sequence[str] = ()
    ) -> dict[str, dict[str, str]]:
        self.calls.append(KmsCall("query_client", secure_client_id=secure_client_id,
                                  sections=tuple(sections)))
        await self._before_call()
        check_xml_safe("QUERY_CLIENT", [("secure client id", secure_client_id)])
        self._raise_card_error(secure_client_id, "QUERY_CLIENT")
        answer, result = self.state.query(secure_client_id, sections)
        if not answer.ok:
            raise KmsRejected(answer.code, answer.text, operation="QUERY_CLIENT")
        return result

    async def query_clients(self, secure_client_ids: Sequence[str]) -> dict[str, ClientState]:
        self.calls.append(KmsCall("query_clients", secure_client_ids=tuple(secure_client_ids)))
        await self._before_call()
        check_xml_safe("QUERY_CLIENTS", (("secure client id", card) for card in secure_client_ids))
        return {
            s.card: ClientState(
                secure_client_id=s.card,
                known=s.known,
                entitlements=tuple(_product(e) for e in s.entitlements),
                paired_chipset=s.paired_chipset,
                pin_set=s.pin_set,
            )
            for s in self.state.summaries(dict.fromkeys(secure_client_ids))
        }

    async def ping(self) -> None:
        self.calls.append(KmsCall("ping"))
        await self._before_call()

    async def aclose(self) -> None:
        self.closed = True

    # --- internals -----------------------------------------------------------------------------------

    async def _before_call(self) -> None:
        if self.closed:
            raise RuntimeError("InMemoryKms used after aclose()")
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._failures:
            failure = self._failures.popleft()
            raise failure if isinstance(failure, BaseException) else failure()

    def _raise_card_error(self, card: str | None, operation: str) -> None:
        if card is not None and card in self._card_errors:
            code, text = self._card_errors[card]
            raise KmsRejected(code, text, operation=operation)


def _product(entry: dict[str, str | None]) -> Product:
    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return Product(product_id=entry["product_id"] or "", valid_from=when(entry["valid_from"]),
                   valid_until=when(entry["valid_until"]))
