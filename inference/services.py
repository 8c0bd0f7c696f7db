"""Inference rules: metering a call from hold to settlement (Idempotency-Key replays are
in inference.idempotency)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, close_old_connections, connection, transaction
from django.utils import timezone

from accounts.models import ApiKey, User
from config.rows import columns, fetch, insert
from credits import selectors as credit_selectors
from credits import services as credit_services
from credits.exceptions import CreditError, InsufficientCredits
from credits.models import CreditHold, HoldStatus
from credits.money import CallCost, TokenCounts, format_usd
from credits.promotion.status import call_promotion_outcome, promotion_status
from credits.services import calculate_inference_cost, price_call, worst_case_cost
from inference import observe
from inference.backends import Prompt, Relay, Usage, count_tokens
from inference.exceptions import (
    InsufficientCreditsForCall,
    InvalidRequest,
    ModelNotFound,
    PromotionNotGranted,
    StreamTimeLimit,
    UnsupportedParameter,
    UpstreamError,
)
from inference.models import AiModel, ModelKind, ModelPrice, UsageRecord, UsageStatus
from inference.routing import route_for
from inference.signals import first_token_generated

logger = logging.getLogger(__name__)

# The journal of a call in flight (credits.services.record_progress) is written at the
# first token, then every JOURNAL_EVERY_TOKENS tokens or JOURNAL_EVERY_SECONDS, whichever
# comes first: a crash loses at most that much of the charge, at one UPDATE per 16 tokens.
JOURNAL_EVERY_TOKENS = 16
JOURNAL_EVERY_SECONDS = 1.0


def record_first_token(*, user_id: int, at: dt.datetime | None = None) -> bool:
    """Stamp the user's first token, once, and announce it.

    The conditional UPDATE makes exactly one caller win, however many race; the
    signal's receivers (the promotion) run inside the same transaction, so the
    stamp and the promotion commit or roll back together. Returns True for the
    one call that stamped it.
    """
    at = at or timezone.now()
    with transaction.atomic():
        stamped = User.objects.filter(pk=user_id, first_token_at__isnull=True).update(
            first_token_at=at
        )
        if stamped:
            first_token_generated.send(sender=User, user_id=user_id, first_token_at=at)
        return bool(stamped)


# --- metering a call -------------------------------------------------------------------


_NO_PIECE = object()  # an upstream read ahead (open_upstream) that ended before any piece


class _LedBy:
    """The pieces of an upstream read ahead: `first`, already read (unless _NO_PIECE), then
    the rest straight from `pieces` (no generator of its own in between: this runs per token)."""

    def __init__(self, first, pieces: AsyncIterator):
        self.first, self.pieces = first, pieces

    def __aiter__(self):
        return self

    def __anext__(self) -> Awaitable:
        if self.first is _NO_PIECE:
            return anext(self.pieces)
        read = asyncio.get_running_loop().create_future()
        read.set_result(self.first)
        self.first = _NO_PIECE
        return read

    async def aclose(self) -> None:
        await self.pieces.aclose()


async def _close(*readers) -> None:
    """Closes a call's readers of its upstream, outermost first: the generators, then the
    backend's stream itself, whose own close ends the upstream request at once (closing a
    generator that wraps another leaves the inner one suspended until it is collected)."""
    for reader in readers:
        if reader is not None:
            with contextlib.suppress(Exception):
                await reader.aclose()


def _failure(exc: BaseException) -> tuple[str, str]:
    """The usage status and error of a call that ended with `exc`."""
    if isinstance(exc, GeneratorExit | asyncio.CancelledError):
        return UsageStatus.CLIENT_DISCONNECTED, ""
    if isinstance(exc, StreamTimeLimit):
        return UsageStatus.TIME_LIMIT, str(exc)
    if isinstance(exc, PromotionNotGranted):
        return UsageStatus.PROMOTION_NOT_GRANTED, str(exc)
    if isinstance(exc, UpstreamError):
        return UsageStatus.UPSTREAM_ERROR, str(exc)
    return UsageStatus.FAILED, f"{type(exc).__name__}: {exc}"


def new_request_id(prefix: str = "gen") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def resolve_priced_model(model_id: str) -> tuple[AiModel, ModelPrice | None]:
    """An active model and the price in effect now, in one query. Raises ModelNotFound.

    Hand-written SQL (config.rows): this runs on every call, and the ORM's compilation of
    the equivalent subquery cost more than the query itself."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    rows = fetch(_priced_model_sql(), [now, model_id], AiModel, ModelPrice) if model_id else []
    if not rows:
        raise ModelNotFound(f"The model {model_id!r} does not exist or is not available.",
                            param="model")
    model, price = rows[0]
    if price.pk is None:  # no price in effect yet: the LEFT JOIN found none
        return model, None
    price.model = model
    return model, price


@functools.cache
def _priced_model_sql() -> str:
    prices = ModelPrice._meta.db_table
    return (f"SELECT {columns(AiModel, 'm')}, {columns(ModelPrice, 'p')} "
            f"FROM {AiModel._meta.db_table} m LEFT JOIN {prices} p ON p.id = ("
            f"SELECT q.id FROM {prices} q WHERE q.model_id = m.id AND q.effective_from <= %s "
            "ORDER BY q.effective_from DESC LIMIT 1) "
            "WHERE m.id = %s AND m.active")


def affordable_output_tokens(*, available_micros: int, prompt_tokens: int,
                             price: ModelPrice) -> int:
    """How many completion tokens `available_micros` pays for after the prompt (never < 0)."""
    budget = available_micros * 1_000_000 - prompt_tokens * price.input_price_per_million_micros
    if budget <= 0:
        return 0
    if price.output_price_per_million_micros == 0:
        return 10**9
    return budget // price.output_price_per_million_micros


@dataclass
class MeteredCall:
    """One call from hold to settlement. Iterate `tokens()` exactly once.

    The hold is taken by `start_call`; `tokens()` settles in its `finally`, so the
    call is captured or released exactly once on every exit path: success, an
    error, or the client going away (the generator is closed -> GeneratorExit).
    """

    request_id: str
    user: User
    api_key: ApiKey | None
    model: AiModel
    price: ModelPrice
    prompt: Prompt
    prompt_tokens: int
    max_tokens: int
    endpoint: str
    streamed: bool
    options: dict
    backend: object
    billed: bool
    hold: CreditHold | None = None
    started_at: dt.datetime = field(default_factory=timezone.now)
    started_monotonic: float = field(default_factory=time.monotonic)
    pieces: list[str] = field(default_factory=list)
    finish_reason: str = ""
    status: str = ""
    error: str = ""
    usage: Usage | None = None
    cost_micros: int = 0
    promotion_applied: bool = False
    first_token_ms: int | None = None
    settled: bool = False
    # A non-streamed call's answer as the upstream sent it (pass-through), else None.
    response: dict | None = None
    charge_details: CallCost | None = None  # the settled charge, by token class
    estimated: bool = False  # no upstream usage: the charge is our counter's
    _stream: object = None  # what the backend returned: its attempts and upstream
    _balance_micros: int | None = None  # cached; settling replaces or clears it
    _journaled_pieces: int = 0
    _journaled_at: float | None = None  # time.monotonic() of the last journal write
    _opening: asyncio.Task | None = None  # the upstream asked early (open_upstream)
    _settling: asyncio.Task | None = None  # the settlement atokens() began

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens if self.usage else count_tokens(self.text)

    @property
    def attempts(self) -> list[dict]:
        """The upstreams tried, in order (empty for a backend that does not fall back)."""
        return list(getattr(self._stream, "attempts", ()))

    @property
    def charged_prompt_tokens(self) -> int:
        return self.usage.prompt_tokens if self.usage else self.prompt_tokens

    def token_counts(self) -> TokenCounts:
        """The call's tokens by price class: the upstream's usage, else our counter's."""
        if self.usage is not None:
            return self.usage.token_counts()
        return TokenCounts(input=self.prompt_tokens, output=self.completion_tokens)

    @property
    def held_micros(self) -> int:
        return self.hold.amount_micros if self.hold else 0

    @property
    def balance_known(self) -> bool:
        """Whether balance_micros() answers without a query."""
        return self._balance_micros is not None

    def balance_micros(self) -> int:
        """The user's balance after this call's settlement (before it, while streaming)."""
        if self._balance_micros is None:
            self._balance_micros = credit_selectors.balance_micros(user_id=self.user.pk)
        return self._balance_micros

    def promotion_json(self) -> dict:
        self.user.refresh_from_db(fields=["first_token_at", "promotion_claimed",
                                          "promotion_eligible"])
        status = promotion_status(self.user)
        return {"applied": self.promotion_applied, "eligible": status.eligible,
                "seconds_remaining": status.seconds_remaining}

    def tokens(self) -> Iterator[str]:
        """The text pieces, read synchronously from the backend; settles in `finally`."""
        stream = None
        status, error = UsageStatus.FAILED, ""
        try:
            stream = self._stream = self.backend.generate(**self._generation())
            for piece in stream:
                if piece:
                    self._check_time_limit()
                    if self.first_token_ms is None:
                        self._on_first_token()
                    self.pieces.append(piece)
                    self._journal()
                elif piece.__class__ is not Relay:
                    continue
                if piece.__class__ is Relay and not self.streamed:
                    self.response = piece.chunks[-1]
                yield piece
            self._finish(stream)
            status = UsageStatus.SUCCEEDED
        except BaseException as exc:
            status, error = _failure(exc)
            raise
        finally:
            if stream is not None:
                stream.close()
            self._settle(status=status, error=error)

    def open_upstream(self) -> None:
        """Asks the upstream now, from the event loop, while the hold is still being written
        (start_call's `on_hold_granted`): its first piece is read ahead and kept for
        `atokens`, which alone delivers it, once the view has the committed hold. The
        upstream's own time to a first token then covers the hold's commit."""
        self._opening = asyncio.ensure_future(self._read_first_piece())

    async def _read_first_piece(self) -> _LedBy:
        pieces = self._agenerate()
        try:
            return _LedBy(await anext(pieces), pieces)
        except StopAsyncIteration:
            return _LedBy(_NO_PIECE, pieces)

    async def abandon_upstream(self) -> None:
        """Ends an upstream asked by `open_upstream` whose pieces will never be delivered
        (the call's start failed, or its client left): the request is closed, which tells the
        upstream to stop, and nothing read from it goes anywhere."""
        opening, self._opening = self._opening, None
        if opening is None:
            return
        opening.cancel()  # a read still waiting for the first piece ends here
        await asyncio.wait([opening])
        read = not opening.cancelled() and opening.exception() is None
        await _close(opening.result() if read else None, self._stream)

    async def end_unstarted(self, run: LedgerRunner) -> None:
        """Settles a call whose client went away while it was starting (its hold taken, no
        token delivered): the upstream asked early is ended and the hold settled as the
        client's leaving, with its usage record, now rather than by the stale-hold sweep."""
        await self.abandon_upstream()
        await run(self._settle, status=UsageStatus.CLIENT_DISCONNECTED, error="")

    async def atokens(self, run: LedgerRunner) -> AsyncIterator[str]:
        """`tokens()` for async code: waiting for the upstream holds no thread and no database
        connection; each ledger step (first token, settlement) goes through `run`. A client
        that goes away cancels the task (or closes this generator): the call settles for what
        was delivered, in `finally`, shielded from a second cancellation."""
        pieces = journal = None
        status, error = UsageStatus.FAILED, ""
        try:
            if self._opening is not None:  # asked while the hold committed: the first piece read
                opening, self._opening = self._opening, None
                pieces = await opening
            else:
                pieces = self._agenerate()
            async for piece in pieces:
                if piece:
                    self._check_time_limit()
                    if self.first_token_ms is None:
                        if self._first_token_needs_ledger():
                            await run(self._on_first_token)  # the promotion decides first
                        else:
                            self._on_first_token()  # no query: only the time is noted
                    self.pieces.append(piece)
                    # The journal is written beside the stream, not before the token leaves:
                    # one write in flight at a time, awaited before the settlement. A process
                    # killed while it is in flight loses at most the tokens since the
                    # previous write, as when it dies between two writes.
                    if journal is None or journal.done():
                        progress = self._journal_due()
                        if progress is not None:
                            journal = asyncio.ensure_future(run(self._write_journal, *progress))
                elif piece.__class__ is not Relay:
                    continue  # an empty text piece; a Relay without text still goes out
                if piece.__class__ is Relay and not self.streamed:
                    self.response = piece.chunks[-1]
                yield piece
            self._finish(self._stream)
            status = UsageStatus.SUCCEEDED
        except BaseException as exc:  # CancelledError and GeneratorExit are the client leaving
            status, error = _failure(exc)
            raise
        finally:
            # The backend's own stream too: read ahead, it may have failed before this call
            # held it.
            self._settling = asyncio.ensure_future(self._settle_after(
                journal, run, status=status, error=error, readers=(pieces, self._stream)))
            await asyncio.shield(self._settling)

    async def settlement(self) -> None:
        """Waits for the settlement `atokens` began: it goes on, shielded, after a
        cancellation (the client left) has ended `atokens` itself."""
        if self._settling is not None:
            await asyncio.wait([self._settling])

    async def _settle_after(self, journal: asyncio.Future | None, run: LedgerRunner, *,
                            status: str, error: str, readers: tuple = ()) -> None:
        await _close(*readers)  # stops the upstream read now
        if journal is not None:
            with contextlib.suppress(Exception):
                await journal  # never raises; its UPDATE lands before the settlement locks
        await run(self._settle, status=status, error=error)

    def _agenerate(self) -> AsyncIterator:
        """The backend's async stream, kept as the call's `_stream` (its finish reason, usage
        and attempts; its own close), and the iterator of its pieces."""
        self._stream = self.backend.agenerate(**self._generation())
        return aiter(self._stream)

    def _first_token_needs_ledger(self) -> bool:
        """Whether the first token needs the database: the user's first token ever (the
        stamp and the promotion) or a hold that relied on the pending promotion."""
        return self.billed and (self.user.first_token_at is None or (
            self.hold is not None and self.hold.pending_promotion_micros > 0))

    def _generation(self) -> dict:
        return {"model_name": self.model.upstream_name, "prompt": self.prompt,
                "max_tokens": self.max_tokens, "options": self.options,
                "stream": self.streamed}

    def _finish(self, stream) -> None:
        self.finish_reason = stream.finish_reason or "stop"
        self.usage = stream.usage

    def _check_time_limit(self) -> None:
        if self.streamed and (time.monotonic() - self.started_monotonic
                              > settings.STREAM_MAX_SECONDS):
            raise StreamTimeLimit(
                f"The stream reached its time limit of {settings.STREAM_MAX_SECONDS} "
                "seconds and was ended; you were charged for the tokens delivered. "
                "Lower max_tokens to finish within it.")

    def _journal(self) -> None:
        """Tell the ledger how far the call got (see JOURNAL_EVERY_TOKENS), so the stale-hold
        sweep leaves a live call alone and charges a dead one for what it delivered."""
        progress = self._journal_due()
        if progress is not None:
            self._write_journal(*progress)

    def _journal_due(self) -> tuple[int, int] | None:
        """(delivered micros, tokens) when a journal write is due (no query), else None."""
        if self.hold is None:
            return None
        moment = time.monotonic()
        if not self.streamed:
            # Nothing is delivered before the answer (and then the call settles): the journal
            # only tells the sweep the call is alive, every JOURNAL_EVERY_SECONDS from its start
            # (a call answered within a second writes none).
            if moment - (self._journaled_at or self.started_monotonic) < JOURNAL_EVERY_SECONDS:
                return None
        elif (self._journaled_at is not None
                and len(self.pieces) - self._journaled_pieces < JOURNAL_EVERY_TOKENS
                and moment - self._journaled_at < JOURNAL_EVERY_SECONDS):
            return None
        self._journaled_pieces, self._journaled_at = len(self.pieces), moment
        tokens = count_tokens(self.text)  # the counting rule of a stream cut short
        delivered = min(self._cost(output_tokens=tokens), self.held_micros) if self.streamed else 0
        return delivered, tokens

    def _write_journal(self, delivered: int, tokens: int) -> None:
        """One short UPDATE of the hold. Never raises: a journal that cannot be written only
        makes a crash cost more."""
        try:
            credit_services.record_progress(hold=self.hold, delivered_micros=delivered,
                                            tokens=tokens)
        except Exception:
            logger.warning("Call %s: the journal of hold %s was not written", self.request_id,
                           self.hold.pk, exc_info=True)

    def _cost(self, *, output_tokens: int) -> int:
        return calculate_inference_cost(
            input_tokens=self.charged_prompt_tokens, output_tokens=output_tokens,
            input_price_per_million_micros=self.price.input_price_per_million_micros,
            output_price_per_million_micros=self.price.output_price_per_million_micros,
        )

    def _on_first_token(self) -> None:
        self.first_token_ms = int((time.monotonic() - self.started_monotonic) * 1000)
        if not self.billed:
            return
        if self.user.first_token_at is None:
            # The first token of the user's life: the promotion is decided in this transaction.
            stamped = record_first_token(user_id=self.user.pk)
            self.user.refresh_from_db(fields=["first_token_at", "promotion_claimed",
                                              "promotion_eligible"])
            self.promotion_applied = stamped and self.user.promotion_claimed
        if self.hold is not None and self.hold.pending_promotion_micros > 0:
            outcome = call_promotion_outcome(user_id=self.user.pk, hold_id=self.hold.pk)
            if outcome.unbacked_micros:
                why = outcome.withheld_reason  # the abuse controls refused it, or it is locked
                if outcome.awaiting_verification:
                    raise PromotionNotGranted(
                        "Insufficient credits: this call relied on the first-token promotion, "
                        f"which you earned but which is locked until your email address is "
                        f"verified. {why} Nothing was charged.")
                raise PromotionNotGranted(
                    "Insufficient credits: this call relied on the first-token promotion, but "
                    + (f"it was not granted: {why}" if why else
                       "the first token came after the promotion window closed, so it was not "
                       "granted.")
                    + " Nothing was charged. Add credits to continue.",
                )
            self.hold.pending_promotion_micros = 0

    def _charge_for(self, status: str) -> int | None:
        """Micro-dollars to capture, or None to release without charge."""
        if status == UsageStatus.PROMOTION_NOT_GRANTED:
            return None
        if status != UsageStatus.SUCCEEDED and (not self.pieces or not self.streamed):
            return None  # nothing was delivered (a non-streaming call that fails sends no text)
        if status != UsageStatus.SUCCEEDED:
            self.usage = None  # count what was produced, by the documented rule
        self.estimated = self.usage is None
        self.charge_details = price_call(tokens=self.token_counts(),
                                         prices=self.price.token_prices())
        cost = self.charge_details.total_micros
        if cost > self.held_micros:
            logger.warning("Call %s cost %s micros over its hold of %s (upstream usage); "
                           "charging the hold", self.request_id, cost, self.held_micros)
            cost = self.held_micros
        return cost

    def _charge_without_hold(self, charge: int) -> int:
        """The capture of `charge` failed after tokens were delivered. What the hold took
        counts first: the capture may have committed before its error reached us (the
        connection dropped at COMMIT), or the stale-hold sweep captured what the journal
        said. Only the rest is taken directly, as far as the balance allows. A hold still
        active that cannot be released (the database is down) is left to the sweep, which
        charges its journal. Returns what the call was charged in all; any shortfall is
        logged loudly."""
        try:
            status, captured = CreditHold.objects.filter(pk=self.hold.pk).values_list(
                "status", "captured_micros").get()
            if status == HoldStatus.ACTIVE:
                credit_services.release(hold=self.hold)
        except Exception:
            logger.exception("BILLING: call %s: hold %s could not be read or released; the "
                             "stale-hold sweep will charge what its journal recorded",
                             self.request_id, self.hold.pk)
            return 0
        already = captured if status == HoldStatus.CAPTURED else 0
        if already >= charge:
            return already

        def debit(amount: int) -> None:
            credit_services.use_credits(user=self.user.pk, amount_micros=amount,
                                        reference=self.request_id,
                                        idempotency_key=f"late-charge:{self.request_id}",
                                        description=f"{self.model.id} {self.request_id}")

        rest = charge - already
        try:
            try:
                debit(rest)
                charged = rest
            except InsufficientCredits as exc:
                charged = exc.available_micros
                if charged:
                    debit(charged)
        except Exception:
            logger.exception("BILLING: call %s delivered tokens worth %s micros of which %s "
                             "could not be charged", self.request_id, charge, rest)
            return already
        if charged < rest:
            logger.error("BILLING: call %s was charged %s of %s micros after its hold was lost",
                         self.request_id, already + charged, charge)
        return already + charged

    def _class_fields(self, produced: bool) -> dict:
        """The usage record's token classes, class prices, estimate flag and upstream
        attempts (the fields beyond plain input and output)."""
        prices = self.price.token_prices()
        counts = self.token_counts() if produced else TokenCounts()
        return dict(
            cached_tokens=counts.cached_input, cache_write_tokens=counts.cache_write,
            reasoning_tokens=counts.reasoning,
            cached_input_price_per_million_micros=prices.cached_input,
            cache_write_price_per_million_micros=prices.cache_write,
            reasoning_price_per_million_micros=prices.reasoning,
            estimated=self.estimated and produced,
            upstream=getattr(self._stream, "upstream", "")[:64],
            attempts=self.attempts,
        )

    def _settle(self, *, status: str, error: str) -> None:
        """Capture or release the hold once, with the usage record in the same transaction.
        Never raises: whatever fails here after delivery is logged loudly and the charge
        stands."""
        if self.settled:
            return
        self.settled = True
        self._balance_micros = None  # what was read while streaming is stale now
        self.status, self.error = status, error[:255]
        if not self.billed:
            return
        try:
            charge = self._charge_for(status)
        except Exception:
            logger.exception("BILLING: could not price call %s; releasing its hold",
                             self.request_id)
            charge = None
        self.cost_micros = charge or 0
        produced = bool(self.pieces) or status == UsageStatus.SUCCEEDED
        recorded = self.hold is not None and self._settle_hold(charge, status=status,
                                                               produced=produced)
        if not recorded:
            self._write_record(status, produced)
        observe.call_settled(self)

    def _settle_hold(self, charge: int | None, *, status: str, produced: bool) -> bool:
        """Capture `charge` (release the hold when None) and write the usage record with it,
        in the ledger's own statement: one commit per call, not two. Returns whether the
        record was written. A record that fails takes the charge back with it, so the hold is
        then settled alone and the record written after it (the charge must stand); a
        settlement that fails is charged without the hold (`_charge_without_hold`)."""
        try:
            record = UsageRecord(request_id=self.request_id, **self._record_fields(status, produced))
        except Exception:
            record = None  # _write_record tries again after the settlement, and logs it
        for record_too in (record, None) if record is not None else (None,):
            try:
                if charge is None:
                    settled = credit_services.release(hold=self.hold, also_insert=record_too)
                else:
                    settled = credit_services.capture(
                        hold=self.hold, amount_micros=charge, also_insert=record_too,
                        tokens=self.completion_tokens if self.pieces else 0,
                        description=f"{self.model.id} {self.request_id}")
            except Exception as exc:
                # The ledger's own refusals (a hold the sweep settled, a promotion never
                # granted) would refuse again; anything else may be the record's (a
                # constraint), or pass on a second try (a deadlock, a stale prepared
                # statement, a dropped connection): settled once more, alone.
                if record_too is not None and not isinstance(exc, CreditError):
                    logger.warning("BILLING: settling call %s with its usage record failed "
                                   "(%s); settling alone, the record after it", self.request_id,
                                   type(exc).__name__, exc_info=True)
                    continue
                logger.exception("BILLING: settling hold %s of call %s failed (charge %s)",
                                 self.hold.pk, self.request_id, charge)
                self.cost_micros = self._charge_without_hold(charge) if charge else 0
                return False
            self._balance_micros = settled.balance_micros
            return record_too is not None
        return False

    def _record_fields(self, status: str, produced: bool) -> dict:
        return dict(
            user_id=self.user.pk, api_key=self.api_key,
            model=self.model, endpoint=self.endpoint,
            hold_id=self.hold.pk if self.hold else None,
            prompt_tokens=self.charged_prompt_tokens if produced else self.prompt_tokens,
            completion_tokens=self.completion_tokens if produced else 0,
            input_price_per_million_micros=self.price.input_price_per_million_micros,
            output_price_per_million_micros=self.price.output_price_per_million_micros,
            cost_micros=self.cost_micros, held_micros=self.held_micros,
            streamed=self.streamed, status=status, finish_reason=self.finish_reason,
            error=self.error, promotion_applied=self.promotion_applied,
            latency_ms=int((time.monotonic() - self.started_monotonic) * 1000),
            time_to_first_token_ms=self.first_token_ms, started_at=self.started_at,
            **self._class_fields(produced),
        )

    def _write_record(self, status: str, produced: bool) -> None:
        """The usage record on its own (no hold, or its settlement's transaction failed).
        Never raises, like `_settle`: a record that cannot be built or written is logged."""
        try:
            fields = self._record_fields(status, produced)
            try:
                with transaction.atomic():  # plain SQL: one record per call
                    insert(UsageRecord(request_id=self.request_id, **fields))
            except IntegrityError:
                # The sweep took this call for dead and recorded it from its journal; the
                # call's own account is the whole one.
                if UsageRecord.objects.filter(request_id=self.request_id,
                                              status=UsageStatus.SWEPT).update(**fields):
                    return
                # Or the settlement wrote it and committed, but the commit's reply was lost
                # on the way back (the retry then found the hold settled): it is written.
                if not UsageRecord.objects.filter(request_id=self.request_id).exists():
                    raise
                logger.info("Call %s: its usage record was already written by its settlement",
                            self.request_id)
        except Exception:
            logger.exception("BILLING: the usage record of call %s (charged %s micros) was "
                             "not written", self.request_id, self.cost_micros)


def start_call(
    *,
    user: User,
    api_key: ApiKey | None,
    model_id: str,
    prompt: Prompt,
    max_tokens: int | None,
    endpoint: str,
    streamed: bool = False,
    options: dict | None = None,
    request_id: str | None = None,
    on_hold_granted: Callable[[MeteredCall], None] | None = None,
) -> MeteredCall:
    """Validate a call and hold its worst-case cost (prompt at the input price plus
    `max_tokens`, or the model's limit, at the output price) at the price in effect now.

    `on_hold_granted(call)` is called once the hold is certain and before it is written
    (credit_services.authorize's `on_granted`), so the caller may ask the upstream while the
    hold commits (MeteredCall.open_upstream); never for a call that holds nothing.

    Raises ModelNotFound (unknown, inactive or unpriced model), InvalidRequest (limits),
    InsufficientCreditsForCall (nothing held). A user inside the promotion window may
    hold against the pending promotion. With INFERENCE_BILLING_ENABLED off (bench
    only) nothing is held, charged or recorded.
    """
    model, price = resolve_priced_model(model_id)
    if price is None:
        raise ModelNotFound(f"The model {model.id!r} has no price yet and cannot be called.",
                            param="model", code="model_not_priced")
    backend = route_for(model)
    check_servable(model=model, backend=backend, prompt=prompt, options=options)
    prompt_tokens = backend.count_prompt_tokens(prompt)
    if max_tokens is not None and max_tokens > model.max_output_tokens:
        raise InvalidRequest(
            f"max_tokens is {max_tokens}, but {model.id} produces at most "
            f"{model.max_output_tokens} tokens.", param="max_tokens")
    room = model.context_length - prompt_tokens
    if room <= 0 or (max_tokens is not None and max_tokens > room):
        raise InvalidRequest(
            f"This model's context is {model.context_length} tokens; the prompt has "
            f"{prompt_tokens} and max_tokens asks for {max_tokens or 'any'}.",
            param="max_tokens" if room > 0 else _prompt_param(prompt),
            code="context_length_exceeded")
    if prompt.kind == "embedding":
        max_tokens = 0  # an embedding generates nothing: the prompt is the whole charge
    limit = max_tokens if max_tokens is not None else min(model.max_output_tokens, room)
    call = MeteredCall(
        request_id=request_id or new_request_id(), user=user, api_key=api_key, model=model,
        price=price, prompt=prompt, prompt_tokens=prompt_tokens, max_tokens=limit,
        endpoint=endpoint, streamed=streamed, options=options or {}, backend=backend,
        billed=bool(settings.INFERENCE_BILLING_ENABLED),
    )
    observe.call_started(call)
    if not call.billed:
        return call
    # Every choice may run to the limit (n, and best_of for text completions), every token
    # in its dearest class.
    worst = worst_case_cost(prompt_tokens=prompt_tokens,
                            output_tokens=limit * choices_generated(options),
                            prices=price.token_prices())
    if worst > 0:
        try:
            call.hold = credit_services.authorize(
                user=user, amount_micros=worst, reference=call.request_id,
                # What record_swept_calls needs should the call die before it settles.
                metadata={"model": model.id, "endpoint": endpoint, "streamed": streamed,
                          "api_key_id": api_key.pk if api_key else None,
                          "prompt_tokens": prompt_tokens,
                          "input_price_per_million_micros": price.input_price_per_million_micros,
                          "output_price_per_million_micros": price.output_price_per_million_micros},
                on_granted=on_hold_granted and functools.partial(on_hold_granted, call),
            )
            call._balance_micros = call.hold.balance_after_micros  # None: read when asked
        except InsufficientCredits as exc:
            affordable = affordable_output_tokens(available_micros=exc.available_micros,
                                                  prompt_tokens=prompt_tokens, price=price)
            raise InsufficientCreditsForCall(
                f"Insufficient credits: this call may cost up to ${format_usd(worst)} "
                f"({prompt_tokens} prompt tokens + up to {limit} completion tokens on {model.id}) "
                f"but ${format_usd(exc.available_micros)} is available, enough for "
                f"{affordable} completion tokens. Lower max_tokens or add credits."
                # Why the sign-up credit cannot help (withheld, paused, awaiting verification).
                + _withheld_suffix(user),
                required_micros=worst, available_micros=exc.available_micros,
                affordable_tokens=affordable,
            ) from exc
    return call


def choices_generated(options: dict | None) -> int:
    """How many completions the upstream generates for one call (n, best_of)."""
    counts = [value for value in ((options or {}).get("n"), (options or {}).get("best_of"))
              if isinstance(value, int) and not isinstance(value, bool) and value > 1]
    return max(counts, default=1)


def _prompt_param(prompt: Prompt) -> str:
    return {"chat": "messages", "completion": "prompt", "embedding": "input"}[prompt.kind]


def check_servable(*, model: AiModel, backend, prompt: Prompt, options: dict | None) -> None:
    """Refuse, before anything is held, a call the model cannot serve: the wrong endpoint for
    its kind, or a request field its backend cannot serve (a 400 naming the field and the
    model; never silently dropped)."""
    embedding = prompt.kind == "embedding"
    if embedding != (model.kind == ModelKind.EMBEDDING):
        where = "/v1/embeddings" if model.kind == ModelKind.EMBEDDING else (
            "/v1/chat/completions or /v1/completions")
        raise InvalidRequest(f"{model.id} is served by {where}, not this endpoint.",
                             param="model", code="model_not_supported")
    field_name = backend.unsupported(options)
    if field_name:
        raise UnsupportedParameter(
            f"{field_name} is not supported by the model {model.id}.", param=field_name)


def _withheld_suffix(user: User) -> str:
    """" <reason>" when the sign-up credit is withheld or locked (credits.promotion), else ""."""
    if user.promotion_claimed and not user.promotion_withheld_reason and not getattr(
            settings, "PROMOTION_REQUIRE_EMAIL_VERIFICATION", False):
        return ""  # nothing to say, no query
    reason = promotion_status(user).withheld_reason
    return f" {reason}" if reason else ""


# --- ledger steps from async code ---------------------------------------------------------

# `await run(fn, *args)`: a synchronous, short database step of a call (hold, first token,
# settlement) run from the async gateway.
LedgerRunner = Callable[..., Awaitable]
_ledger_pool: ThreadPoolExecutor | None = None


def _returning_connection(fn):
    @functools.wraps(fn)
    def step(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        finally:
            # Pooled: the connection goes back to the pool, so none is held while the call
            # waits for tokens, and a process never uses more than its pool.
            close_old_connections()
    return step


def ledger_runner(*, asgi: bool) -> LedgerRunner:
    """How an async view runs ledger steps. Under ASGI: on a bounded pool of LEDGER_THREADS
    threads (thread_sensitive=False), each step returning its connection. Under WSGI (the
    in-process test client, a WSGI server): in the request's own thread, as Django runs
    sync code from async views there (thread_sensitive), so its transaction is the one."""
    global _ledger_pool
    if not asgi:
        async def in_request_thread(fn, *args, **kwargs):
            return await sync_to_async(fn, thread_sensitive=True)(*args, **kwargs)
        return in_request_thread
    if _ledger_pool is None:
        _ledger_pool = ThreadPoolExecutor(max_workers=settings.LEDGER_THREADS,
                                          thread_name_prefix="ledger")
    pool = _ledger_pool

    async def on_ledger_pool(fn, *args, **kwargs):
        # run_in_executor, not sync_to_async: the same thread pool without asgiref's
        # per-call bookkeeping (this runs several times per call).
        context = contextvars.copy_context()
        step = functools.partial(context.run, _returning_connection(fn), *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(pool, step)
    return on_ledger_pool


# --- calls the stale-hold sweep settled ----------------------------------------------

# How far back a sweep looks for settled holds whose calls were never recorded (a run
# interrupted between settling and recording).
SWEPT_CATCH_UP = dt.timedelta(days=1)


def record_swept_calls(*, hold_ids=(), now: dt.datetime | None = None) -> int:
    """Write the usage record of each call the stale-hold sweep settled that left none (its
    worker died mid-stream, or the database was down when it settled): status SWEPT, the
    tokens and the charge of its hold's journal. Covers `hold_ids` and any hold swept in the
    last SWEPT_CATCH_UP. Idempotent (one record per request id); returns records written."""
    now = now or timezone.now()
    holds = [h for h in credit_selectors.swept_holds(hold_ids=hold_ids, since=now - SWEPT_CATCH_UP)
             if h.metadata.get("model")]  # holds not made by a metered call are not calls
    recorded = set(UsageRecord.objects.filter(request_id__in=[h.reference for h in holds])
                   .values_list("request_id", flat=True))
    written = 0
    for hold in holds:
        if hold.reference in recorded:
            continue
        meta = hold.metadata
        last_heard = hold.journal_at or hold.created_at
        api_key_id = meta.get("api_key_id")
        try:
            with transaction.atomic():
                UsageRecord.objects.create(
                    request_id=hold.reference, user_id=hold.user_id,
                    api_key_id=api_key_id if ApiKey.objects.filter(pk=api_key_id).exists() else None,
                    model_id=meta["model"], endpoint=meta.get("endpoint", ""), hold_id=hold.pk,
                    prompt_tokens=meta.get("prompt_tokens", 0),
                    completion_tokens=hold.delivered_tokens,
                    input_price_per_million_micros=meta["input_price_per_million_micros"],
                    output_price_per_million_micros=meta["output_price_per_million_micros"],
                    cost_micros=hold.captured_micros, held_micros=hold.amount_micros,
                    streamed=bool(meta.get("streamed")), status=UsageStatus.SWEPT,
                    error="The call stopped reporting; charged from its journal by the sweep.",
                    latency_ms=max(0, int((last_heard - hold.created_at).total_seconds() * 1000)),
                    started_at=hold.created_at,
                )
        except IntegrityError:
            continue  # the call itself recorded it meanwhile
        except Exception:
            logger.exception("BILLING: the usage record of swept call %s (hold %s, charged %s "
                             "micros) was not written", hold.reference, hold.pk,
                             hold.captured_micros)
            continue
        written += 1
    if written:
        logger.warning("Recorded %d calls settled by the stale-hold sweep", written)
    return written
