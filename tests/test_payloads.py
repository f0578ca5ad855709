"""The worker reads a task's call natively (``_native.decode_call``) and
falls back to ``decode_call_with_options`` for any payload it does not
read: both must agree on every payload the native reader accepts, and it
must accept none that Python refuses."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import orjson
import pytest
from vtasks import _native
from vtasks.payloads import decode_call_with_options


def same(a: Any, b: Any) -> bool:
    """Equal values of the same types all the way down (1 == 1.0 == True
    would pass a plain comparison)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


def python_decode(data: bytes) -> tuple[Any, ...] | None:
    try:
        return decode_call_with_options(data)
    except ValueError:
        return None


def check(data: bytes) -> tuple[Any, ...] | None:
    """The native reading of ``data``; asserts it is Python's, or None."""
    native = _native.decode_call(data)
    if native is not None:
        expected = python_decode(data)
        assert expected is not None, f"native accepts what Python refuses: {data[:200]!r}"
        assert same(native, expected), f"{data[:200]!r}: native {native!r} != python {expected!r}"
    return native


ACCEPTED = [
    b'{"task":"a"}',
    b'{"task":"t.x","args":[],"kwargs":{}}',
    b'{"kwargs":{"b":2},"args":[1],"task":"t"}',
    b' { "task" : "t" , "args" : [ 1 , 2 ] } \n',
    b'{"task":"t","args":[0,-1,9223372036854775807,-9223372036854775808,18446744073709551615]}',
    # Beyond 64 bits orjson reads floats; so does the native reader.
    b'{"task":"t","args":[123456789012345678901234567890,-9223372036854775809,18446744073709551616]}',
    b'{"task":"t","args":[0.1,1e-7,5e-324,2.2250738585072011e-308,1.7976931348623157e308,1E3,2.5e+2]}',
    b'{"task":"t","args":[0.30000000000000004,9007199254740993.0,1.00000000000000011102230246251565404236316680908203125]}',
    b'{"task":"t","args":["","\\u00e9","\\ud83d\\ude00","\\u0000","a\\"b\\\\c\\/d\\b\\f\\n\\r\\t","\xc3\xa9\xf0\x9f\x98\x80"]}',
    b'{"task":"t","args":[true,false,null,[[]],{"":{}}]}',
    b'{"task":"t","kwargs":{"a":1,"a":2,"b":{"x":1,"x":[2]}}}',
    b'{"task":"first","task":"second"}',
    b'{"task":"t","options":{}}',
    b'{"task":"t","options":{"backoff":0.5,"timeout":30}}',
    b'{"task":"t","options":{"timeout":1e-9,"timeout":2}}',
    b'{"task":"t","args":' + b"[" * 100 + b"]" * 100 + b"}",
]

REFUSED = [
    b"",
    b"null",
    b"[]",
    b'"task"',
    b"{",
    b'{"task":"t"} x',
    b'{"task":"t",}',
    b"{'task':'t'}",
    b'{"task":""}',
    b'{"task":1}',
    b'{"task":null}',
    b'{"args":[]}',
    b'{"task":"t","args":{}}',
    b'{"task":"t","args":null}',
    b'{"task":"t","kwargs":[]}',
    b'{"task":"t","extra":1}',
    b'{"task":"t","options":null}',
    b'{"task":"t","options":[]}',
    b'{"task":"t","options":{"retries":3}}',
    b'{"task":"t","options":{"timeout":0}}',
    b'{"task":"t","options":{"timeout":-1.5}}',
    b'{"task":"t","options":{"timeout":true}}',
    b'{"task":"t","options":{"timeout":"3"}}',
    b'{"task":"t","options":{"timeout":null}}',
    b'{"task":"t","args":[NaN]}',
    b'{"task":"t","args":[Infinity]}',
    b'{"task":"t","args":[1e400]}',
    b'{"task":"t","args":["\\ud800"]}',
    b'{"task":"t","args":["\xff"]}',
    b'{"task":"t","args":[01]}',
    b'{"task":"t","args":[1.]}',
    b'(\xb5/\xfd corrupt',
]

# Read by Python only: serde_json reads `-0` as -0.0 (orjson as the int 0).
LEFT_TO_PYTHON = [
    b'{"task":"t","args":[-0]}',
    b'{"task":"t","args":[-0.0]}',
    b'{"task":"t","kwargs":{"a":-0e5}}',
]


@pytest.mark.parametrize("data", ACCEPTED)
def test_the_native_reader_reads_calls_as_python_does(data: bytes) -> None:
    assert check(data) is not None


@pytest.mark.parametrize("data", REFUSED)
def test_payloads_python_refuses_are_left_to_python(data: bytes) -> None:
    assert python_decode(data) is None
    assert _native.decode_call(data) is None


@pytest.mark.parametrize("data", LEFT_TO_PYTHON)
def test_negative_zero_is_left_to_python(data: bytes) -> None:
    assert _native.decode_call(data) is None
    assert python_decode(data) is not None


def test_nesting_beyond_the_native_limit_is_left_to_python() -> None:
    """serde_json stops at 128 levels; orjson reads deeper. Such a payload
    goes to Python, which runs it."""
    data = b'{"task":"t","args":' + b"[" * 300 + b"]" * 300 + b"}"
    assert _native.decode_call(data) is None
    assert python_decode(data) is not None


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice([0, 1, -1, 2**31, -(2**63), 2**63 - 1, 2**64 - 1, rng.randrange(-(10**12), 10**12)])
    if kind == 2:
        scaled = rng.random() * 10 ** rng.randrange(-300, 300)
        return rng.choice([0.0, 0.1, 1e300, 5e-324, rng.uniform(-1e6, 1e6), scaled])
    if kind in (3, 4, 5):
        alphabet = 'ab"\\/\n\t\x00\x1f é€😀\u2028'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(8)))
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [str(random_value(rng, 4)) if rng.random() < 0.8 else "k" for _ in range(rng.randrange(4))]
    return {key: random_value(rng, depth + 1) for key in keys}


def test_random_calls_read_the_same_natively_and_in_python() -> None:
    rng = random.Random(1515)
    for _ in range(3000):
        call: dict[str, Any] = {"task": "t" + str(rng.randrange(100))}
        if rng.random() < 0.8:
            call["args"] = [random_value(rng) for _ in range(rng.randrange(4))]
        if rng.random() < 0.8:
            call["kwargs"] = {str(k): random_value(rng) for k in range(rng.randrange(4))}
        if rng.random() < 0.3:
            call["options"] = {"timeout": rng.choice([1, 0.25, 1e-3])}
        # As orjson writes it, and as json writes it (ASCII escapes, spaces).
        for data in (orjson.dumps(call), json.dumps(call, ensure_ascii=True, indent=rng.choice([None, 1])).encode()):
            assert check(data) is not None, data


def test_mutated_payloads_are_read_as_python_reads_them_or_left_to_it() -> None:
    """Bytes changed, dropped or repeated at random: whatever the native
    reader accepts, Python accepts with the same call."""
    rng = random.Random(2026)
    seeds = [data for data in ACCEPTED if len(data) < 400]
    accepted = 0
    for _ in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[at] = rng.choice(b'{}[]",:0123456789.eE+-tfnul\\ abk\xff')
            elif action == 1:
                del data[at]
            else:
                data[at:at] = data[at : at + rng.randrange(1, 6)]
        accepted += check(bytes(data)) is not None
    # Many mutations still read (a digit for a digit, a letter in a string).
    assert accepted > 500
