"""``outbound.deadline``: the scope (nesting, threads, tasks), and the budget headers (strict parsing, formatting).

The scope's tests need no sleeping: a scope of 0 s is already past. The header parser takes what clients send, so
besides the examples a property test throws arbitrary strings at it, and checks that a value written for the next
hop reads back as no more time than we had.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
import time
from fractions import Fraction
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from hypothesis import example, given
from hypothesis import strategies as st

import outbound
from outbound import Registry
from outbound._config import DEADLINE_HEADERS, DeadlineConfig
from outbound._deadline import current_deadline, format_budget, parse_budget, time_left
from tests.conftest import RegistryFactory
from tests.core.conftest import ASYNC_KINDS, HTTPX_LIBRARIES, SYNC_KINDS, client_of
from tests.upstream import Upstream

GRPC, REQUEST, ENVOY = DEADLINE_HEADERS

# -- the scope ---------------------------------------------------------------------------------------------------


def test_outside_any_scope_there_is_no_deadline() -> None:
    assert current_deadline() is None
    assert time_left() is None
    assert outbound.time_left() is None


def test_inside_a_scope_the_time_left_counts_down_from_its_seconds() -> None:
    before = time.monotonic()
    with outbound.deadline(2) as scope:
        after = time.monotonic()
        ends = current_deadline()
        left = time_left()
    assert scope.seconds == 2.0
    assert ends is not None
    assert before + 2 <= ends <= after + 2
    assert left is not None
    assert 0 < left <= 2
    assert current_deadline() is None


def test_nested_scopes_the_tighter_deadline_wins_and_the_outer_one_comes_back() -> None:
    with outbound.deadline(10):
        outer = current_deadline()
        with outbound.deadline(1):
            inner = current_deadline()
            with outbound.deadline(60):  # cannot extend what the outer scope allows
                assert current_deadline() == inner
            assert current_deadline() == inner
        assert current_deadline() == outer
    assert outer is not None
    assert inner is not None
    assert inner < outer
    assert current_deadline() is None


def test_the_deadline_comes_back_when_the_block_raises() -> None:
    with outbound.deadline(10):
        outer = current_deadline()
        with pytest.raises(KeyError), outbound.deadline(1):
            raise KeyError("x")
        assert current_deadline() == outer


def test_a_past_deadline_leaves_negative_time() -> None:
    with outbound.deadline(0):
        left = time_left()
    assert left is not None
    assert left <= 0


def test_one_scope_object_can_be_entered_again_and_nested_in_itself() -> None:
    scope = outbound.deadline(5)
    with scope:
        first = current_deadline()
        with scope:
            assert current_deadline() == first  # the same length, started later: the outer one is tighter
        assert current_deadline() == first
    with scope:
        second = current_deadline()
    assert first is not None
    assert second is not None
    assert second >= first  # the clock restarts on each entry
    assert current_deadline() is None


@pytest.mark.parametrize(
    "seconds", [-1, -0.001, math.inf, -math.inf, math.nan, 10**400, "2", None, True, [1], complex(1, 0)]
)
def test_seconds_must_be_a_finite_number_of_at_least_zero(seconds: Any) -> None:
    with pytest.raises(ValueError, match="deadline must be"):
        outbound.deadline(seconds)


@pytest.mark.parametrize("seconds", [0, 0.0, 1, 2.5, Fraction(1, 3), 86_400 * 365])
def test_numbers_are_accepted(seconds: Any) -> None:
    assert outbound.deadline(seconds).seconds == float(seconds)
    assert repr(outbound.deadline(2)) == "outbound.deadline(2.0)"


def test_async_with_and_tasks_created_inside_see_the_deadline() -> None:
    async def main() -> tuple[float | None, float | None, float | None, float | None]:
        async def in_task() -> float | None:
            return current_deadline()

        async with outbound.deadline(3):
            ends = current_deadline()
            seen_by_task = await asyncio.create_task(in_task())
            seen_by_gather = (await asyncio.gather(in_task()))[0]
        return ends, seen_by_task, seen_by_gather, current_deadline()

    ends, seen_by_task, seen_by_gather, after = asyncio.run(main())
    assert ends is not None
    assert seen_by_task == ends
    assert seen_by_gather == ends
    assert after is None


def test_a_scope_inside_a_task_does_not_leak_into_its_parent() -> None:
    async def main() -> tuple[float | None, float | None]:
        async def shortens() -> float | None:
            async with outbound.deadline(0.5):
                await asyncio.sleep(0)
                return current_deadline()

        async with outbound.deadline(3):
            outer = current_deadline()
            inner, _ = await asyncio.gather(shortens(), asyncio.sleep(0))
            assert current_deadline() == outer
        return outer, inner

    outer, inner = asyncio.run(main())
    assert outer is not None
    assert inner is not None
    assert inner < outer


def test_threads_see_the_deadline_only_when_run_in_a_copy_of_the_context() -> None:
    seen: dict[str, float | None] = {}

    def record(name: str) -> None:
        seen[name] = current_deadline()

    with outbound.deadline(3):
        ends = current_deadline()
        context = contextvars.copy_context()
        copied = threading.Thread(target=context.run, args=(record, "copied"))
        plain = threading.Thread(target=record, args=("plain",))
        for thread in (copied, plain):
            thread.start()
            thread.join(timeout=5)
    assert seen == {"copied": ends, "plain": None}


def test_asgiref_bridges_carry_the_deadline_both_ways() -> None:
    async def in_loop() -> float | None:
        return await sync_to_async(current_deadline)()

    with outbound.deadline(3):
        ends = current_deadline()
        assert async_to_sync(in_loop)() == ends


# -- parse_budget ------------------------------------------------------------------------------------------------

VALID = [
    (GRPC, "1H", 3600.0),
    (GRPC, "2M", 120.0),
    (GRPC, "2S", 2.0),
    (GRPC, "1500m", 1.5),
    (GRPC, "250000u", 0.25),
    (GRPC, "100n", 1e-7),
    (GRPC, "0n", 0.0),
    (GRPC, "00000001S", 1.0),
    (GRPC, "99999999H", 99_999_999 * 3600.0),
    (REQUEST, "2", 2.0),
    (REQUEST, "0.5", 0.5),
    (REQUEST, "1.500", 1.5),
    (REQUEST, "0", 0.0),
    (REQUEST, "9999999999.999999999", 9999999999.999999999),
    (ENVOY, "1500", 1.5),
    (ENVOY, "0", 0.0),
    (ENVOY, "9999999999", 9999999.999),
]

MALFORMED = [
    (GRPC, ""),
    (GRPC, "1"),  # no unit
    (GRPC, "S"),  # no value
    (GRPC, "123456789S"),  # 9 digits
    (GRPC, "1s"),  # units are case-sensitive: s is not a unit
    (GRPC, "1h"),
    (GRPC, "1.5S"),
    (GRPC, "-1S"),
    (GRPC, "+1S"),
    (GRPC, " 1S"),
    (GRPC, "1S "),
    (GRPC, "1 S"),
    (GRPC, "1S\n"),
    (GRPC, "1S1S"),
    (GRPC, "1SS"),
    (GRPC, "\u0661S"),  # an Arabic-Indic digit one: int() reads it, the header's grammar does not
    (GRPC, "1S, 2S"),  # the header sent twice, joined by the server
    (REQUEST, ""),
    (REQUEST, "-1"),
    (REQUEST, "+1"),
    (REQUEST, "1e3"),
    (REQUEST, "1E-3"),
    (REQUEST, "inf"),
    (REQUEST, "nan"),
    (REQUEST, "Infinity"),
    (REQUEST, ".5"),
    (REQUEST, "5."),
    (REQUEST, "1_000"),
    (REQUEST, "0x10"),
    (REQUEST, "1,5"),
    (REQUEST, " 1"),
    (REQUEST, "12345678901"),  # 11 digits of seconds
    (REQUEST, "1.1234567890"),  # 10 digits of fraction
    (REQUEST, "1s"),
    (REQUEST, "\u0663"),
    (ENVOY, ""),
    (ENVOY, "1.5"),
    (ENVOY, "-1"),
    (ENVOY, "12345678901"),
    (ENVOY, "1500ms"),
    (ENVOY, "1e3"),
]


@pytest.mark.parametrize(("name", "value", "seconds"), VALID)
def test_parse_budget_reads_each_format(name: str, value: str, seconds: float) -> None:
    assert parse_budget(name, value) == seconds


@pytest.mark.parametrize(("name", "value"), MALFORMED)
def test_parse_budget_rejects_anything_else(name: str, value: str) -> None:
    assert parse_budget(name, value) is None


def test_parse_budget_takes_the_header_name_in_any_case_and_refuses_other_headers() -> None:
    assert parse_budget("Grpc-Timeout", "2S") == 2.0
    assert parse_budget("X-Request-Timeout", "2") == 2.0
    with pytest.raises(ValueError, match="not a deadline header"):
        parse_budget("x-timeout", "2")


def test_parse_budget_refuses_values_that_are_not_strings() -> None:
    assert parse_budget(GRPC, b"2S") is None  # type: ignore[arg-type]
    assert parse_budget(REQUEST, 2) is None  # type: ignore[arg-type]


# -- format_budget -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "grpc", "request_timeout", "envoy"),
    [
        (1.5, "1500m", "1.5", "1500"),
        (2, "2S", "2", "2000"),
        (60, "1M", "60", "60000"),
        (5400, "90M", "5400", "5400000"),
        (7200, "2H", "7200", "7200000"),
        (0.25, "250m", "0.25", "250"),
        (0.00025, "250u", "0", "0"),  # less than a millisecond: nothing left to give in milliseconds
        (0.0011, "1100u", "0.001", "1"),  # rounded down, never up
        (1.4999999, "1499999u", "1.499", "1499"),
        (99.99999999, "99999999u", "99.999", "99999"),
        (1e-9, "1n", "0", "0"),
        (0, "0n", "0", "0"),
        (-3, "0n", "0", "0"),  # past the deadline: zero, never negative
        (math.nan, "0n", "0", "0"),
        (math.inf, "99999999H", "9999999999.999", "9999999999"),  # capped at the largest value each can say
        (1e300, "99999999H", "9999999999.999", "9999999999"),
    ],
)
def test_format_budget_writes_each_format_rounded_down(
    seconds: float, grpc: str, request_timeout: str, envoy: str
) -> None:
    assert format_budget(GRPC, seconds) == grpc
    assert format_budget("X-Request-Timeout", seconds) == request_timeout
    assert format_budget(ENVOY, seconds) == envoy


def test_format_budget_rounds_down_the_float_not_the_decimal_it_looks_like() -> None:
    # 0.3 is stored as 0.29999999999999998889...: the next hop gets a hair less, never more.
    assert format_budget(GRPC, 0.3) == "299999u"
    assert format_budget(REQUEST, 0.3) == "0.299"


def test_format_budget_refuses_other_headers() -> None:
    with pytest.raises(ValueError, match="not a deadline header"):
        format_budget("timeout", 1.0)


# -- budget_from -------------------------------------------------------------------------------------------------

CONFIG = DeadlineConfig()


def test_budget_from_reads_the_first_configured_header_that_is_present() -> None:
    headers = {REQUEST: "3", ENVOY: "4000"}
    assert outbound.budget_from(headers, CONFIG) == (3.0, None)
    only_envoy = DeadlineConfig(headers=(ENVOY, REQUEST))
    assert outbound.budget_from(headers, only_envoy) == (4.0, None)
    assert outbound.budget_from({GRPC: "2S"}, DeadlineConfig(headers=(REQUEST,))) == (None, None)


def test_budget_from_skips_a_malformed_header_and_names_it() -> None:
    assert outbound.budget_from({GRPC: "2 seconds", REQUEST: "1.5"}, CONFIG) == (1.5, GRPC)
    assert outbound.budget_from({GRPC: "2 seconds", REQUEST: "soon"}, CONFIG) == (None, GRPC)
    assert outbound.budget_from({REQUEST: "-1"}, DeadlineConfig(default=7.0)) == (7.0, REQUEST)


def test_budget_from_caps_what_a_client_asks_for() -> None:
    assert outbound.budget_from({GRPC: "99999999H"}, CONFIG) == (300.0, None)
    assert outbound.budget_from({ENVOY: "90000"}, DeadlineConfig(max=30.0)) == (30.0, None)
    assert outbound.budget_from({GRPC: "0n"}, CONFIG) == (0.0, None)  # no time at all: calls fail fast


def test_budget_from_falls_back_to_the_views_default_then_the_settings_default() -> None:
    assert outbound.budget_from({}, CONFIG) == (None, None)
    assert outbound.budget_from({}, DeadlineConfig(default=5.0)) == (5.0, None)
    assert outbound.budget_from({}, DeadlineConfig(default=5.0), default=60.0) == (60.0, None)
    # The view's default is not capped by deadline.max: the cap bounds what clients ask for.
    assert outbound.budget_from({}, DeadlineConfig(max=10.0), default=60.0) == (60.0, None)
    assert outbound.budget_from({GRPC: "2S"}, CONFIG, default=60.0) == (2.0, None)


def test_budget_from_takes_a_get_function() -> None:
    asked: list[str] = []

    def get(name: str) -> str | None:
        asked.append(name)
        return "250" if name == ENVOY else None

    assert outbound.budget_from(get, CONFIG) == (0.25, None)
    assert asked == list(DEADLINE_HEADERS)


# -- properties --------------------------------------------------------------------------------------------------

HEADER_NAMES = st.sampled_from(DEADLINE_HEADERS)
# Arbitrary text, and text made of the characters the formats use (so that near misses are common).
VALUES = st.text(max_size=40) | st.text(alphabet="0123456789.+-eEHMSmun _\t", max_size=14)
VALID_VALUES = {
    GRPC: st.from_regex(r"\A[0-9]{1,8}[HMSmun]\Z"),
    REQUEST: st.from_regex(r"\A[0-9]{1,10}(\.[0-9]{1,9})?\Z"),
    ENVOY: st.from_regex(r"\A[0-9]{1,10}\Z"),
}
# Milliseconds; grpc-timeout keeps 6 to 8 significant digits instead (the finest unit whose value fits in 8 digits:
# when nanoseconds do not fit, the value is at least 0.1 s, so at least 100000 microseconds).
PRECISION = {REQUEST: 0.001, ENVOY: 0.001}


@given(name=HEADER_NAMES, value=VALUES)
@example(name=REQUEST, value="²")  # digits of other scripts: int() and float() read some of them, str.isdigit() all
@example(name=ENVOY, value="\u0661\u0665\u0660\u0660")  # Arabic-Indic 1500
@example(name=GRPC, value="①S")
def test_no_header_value_raises_or_yields_a_negative_or_infinite_budget(name: str, value: str) -> None:
    seconds = parse_budget(name, value)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)
    budget, malformed = outbound.budget_from({name: value}, CONFIG)
    assert budget is None or 0 <= budget <= CONFIG.max
    assert malformed == (name if seconds is None else None)


@given(data=st.data(), name=HEADER_NAMES)
def test_valid_values_parse_and_survive_the_next_hop_without_growing(data: st.DataObject, name: str) -> None:
    value = data.draw(VALID_VALUES[name])
    seconds = parse_budget(name, value)
    assert seconds is not None
    assert math.isfinite(seconds)
    assert seconds >= 0
    again = parse_budget(name, format_budget(name, seconds))
    assert again is not None
    assert again <= seconds


@given(name=HEADER_NAMES, seconds=st.floats(min_value=0, max_value=1e6) | st.floats(min_value=0, max_value=1))
def test_formatted_budgets_read_back_as_at_most_what_we_had_and_close_to_it(name: str, seconds: float) -> None:
    value = format_budget(name, seconds)
    again = parse_budget(name, value)
    assert again is not None, value
    assert again <= seconds
    tolerance = PRECISION.get(name, max(seconds * 1e-5, 1e-9))
    assert seconds - again < tolerance * 1.001, (seconds, value)  # the subtraction itself rounds


@given(name=HEADER_NAMES, seconds=st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_formats_to_a_value_that_parses(name: str, seconds: float) -> None:
    again = parse_budget(name, format_budget(name, seconds))
    assert again is not None
    assert again >= 0


# -- calls inside a scope ----------------------------------------------------------------------------------------


def _service(upstream: Upstream, kind: str) -> dict[str, Any]:
    return {
        "base_url": upstream.url,
        "client": client_of(kind),
        "retry": {"total": 0},
        "timeout": {"connect": 2, "read": 5, "total": 10},
    }


def _get(registry: Registry, kind: str, path: str) -> Any:
    if kind == "requests":
        return registry.session("api").get(path)
    if kind in HTTPX_LIBRARIES:
        return registry.client("api").get(path)

    async def call() -> Any:
        return await registry.async_client("api").get(path)

    return asyncio.run(call())  # the loop's main task runs in a copy of this context: it has the deadline


KINDS = pytest.mark.parametrize("kind", [*SYNC_KINDS, *ASYNC_KINDS])


@KINDS
def test_a_call_inside_a_scope_is_cut_at_its_deadline(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    registry = make_registry(api=_service(upstream, kind))
    started = time.monotonic()
    with pytest.raises((outbound.ReadTimeoutError, outbound.DeadlineExceededError)), outbound.deadline(0.3):
        _get(registry, kind, "slow?delay=1")
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 0.3 + 0.5, f"the call took {elapsed:.2f}s"


@KINDS
def test_a_call_with_less_than_min_time_left_fails_without_sending(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    registry = make_registry(api=_service(upstream, kind))
    with pytest.raises(outbound.DeadlineExceededError), outbound.deadline(0.001):
        _get(registry, kind, "ok")
    assert upstream.recent("ok") == []


def test_budget_from_calls_a_default_function_only_when_the_request_sends_no_budget() -> None:
    calls: list[int] = []

    def view_default() -> float | None:
        calls.append(1)
        return 60.0

    assert outbound.budget_from({GRPC: "2S"}, CONFIG, default=view_default) == (2.0, None)
    assert calls == []
    assert outbound.budget_from({GRPC: "x"}, DeadlineConfig(default=5.0), default=view_default) == (60.0, GRPC)
    assert outbound.budget_from({}, DeadlineConfig(default=5.0), default=lambda: None) == (5.0, None)
    assert calls == [1]


@KINDS
def test_each_attempt_sends_the_time_left_in_the_deadline_header(
    upstream: Upstream, make_registry: RegistryFactory, kind: str
) -> None:
    service = {**_service(upstream, kind), "deadline_header": "grpc-timeout", "pause": None}
    service["retry"] = {"total": 1, "backoff_factor": 0.2, "backoff_jitter": 0}
    registry = make_registry(api=service)
    with outbound.deadline(2):
        assert _get(registry, kind, f"fail-then-ok?fails=1&key=header-{kind}").status_code == 200
    first, second = (parse_budget(GRPC, entry["headers"][GRPC]) for entry in upstream.recent("fail-then-ok"))
    assert first is not None
    assert second is not None
    assert 1.9 < first <= 2.0  # the scope's 2 s, less what the call had used
    assert second <= first - 0.2  # the retry, after its backoff, has less left


def test_without_a_scope_the_header_carries_what_is_left_of_timeout_total(
    upstream: Upstream, make_registry: RegistryFactory
) -> None:
    registry = make_registry(api={**_service(upstream, "httpx"), "deadline_header": "X-Request-Timeout"})
    registry.client("api").get("ok")
    sent = float(upstream.recent("ok")[-1]["headers"][REQUEST])
    assert 9.9 < sent <= 10.0  # timeout.total is 10


def test_a_service_without_deadline_header_sends_none(upstream: Upstream, make_registry: RegistryFactory) -> None:
    registry = make_registry(api=_service(upstream, "requests"))
    with outbound.deadline(2):
        registry.session("api").get("ok")
    assert not set(DEADLINE_HEADERS) & set(upstream.recent("ok")[-1]["headers"])


def test_a_retry_that_could_not_start_with_min_time_left_is_not_scheduled(fake_clock: Any) -> None:
    from outbound._outcome import Kind, Outcome
    from outbound._policy import Policy

    config = outbound.parse_config(
        {
            "services": {
                "svc": {"base_url": "http://127.0.0.1:1/", "retry": {"backoff_factor": 0.1, "backoff_jitter": 0}}
            }
        }
    ).services["svc"]
    policy = Policy(config, clock=fake_clock, min_time=0.05)
    with outbound.deadline(0.14):
        call = policy.start("GET", "http://127.0.0.1:1/x", replayable=True)
    assert call.admit() is None
    # A backoff of 0.1 s leaves less than min_time (0.05 s) of the scope's 0.14 s: the retry is denied.
    assert call.record(Outcome(Kind.RESPONSE, status=503)).retry is False
