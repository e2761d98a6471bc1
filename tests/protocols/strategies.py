"""Hypothesis strategies shared by the protocol fuzz tests: JSON values and hostile variants of
valid messages (wrong types, missing keys, huge numbers, deep nesting, lone surrogates, garbage).
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from protocols.errors import PROTOCOL_ERROR_KINDS, ProtocolError

__all__ = [
    "FUZZ",
    "any_text",
    "check_protocol_error",
    "extras",
    "hostile_text",
    "json_values",
    "mutated",
    "short_text",
]

# Hypothesis caches Unicode tables and source constants under ./.hypothesis by default; test
# runs leave the tree alone, so keep that cache in the temp directory.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "bridge-hypothesis")

# The same examples on every run (CI never fails on a fresh seed), no example database written
# into the tree, and no wall-clock deadline: the machine is shared and a slow example is not a bug.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# An error detail goes into a warning log line: short, and always encodable (a lone surrogate
# copied into it from the input would break the log writer, not the parser).
MAX_DETAIL_CHARS = 200

# Any code point, and often a lone surrogate too: JSON carries one as a \udXXX escape and a
# Python str holds it raw, so both reach the parsers. (Inserted rather than drawn as a character:
# st.characters() rarely yields one, and a union of character strategies is slow to draw.)
_surrogates = st.none() | st.tuples(st.integers(0, 30), st.integers(0xD800, 0xDFFF))


def _hostile(text: str, surrogate: tuple[int, int] | None) -> str:
    if surrogate is not None:
        at, code = surrogate
        text = text[:at] + chr(code) + text[at:]
    # A high then a low surrogate is one astral character once through JSON ("\\ud800\\udc00"
    # decodes to U+10000); join such pairs up front so round trips compare like with like.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def hostile_text(min_size: int = 0, max_size: int = 30) -> st.SearchStrategy[str]:
    return st.builds(_hostile, st.text(min_size=min_size, max_size=max_size), _surrogates)


any_text = hostile_text()
short_text = hostile_text(max_size=8)

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**4000), max_value=10**4000)  # huge, yet json.dumps-able
    | st.floats()  # NaN and ±Infinity included: json.dumps writes them, json.loads reads them
    | any_text
)

json_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(short_text, children, max_size=4),
    max_leaves=8,
)

# Raw JSON text put in place of a value after serialising, for what json.dumps cannot write:
# integers past the 4300-digit conversion limit, overflowing exponents, nesting deep enough to
# hit the recursion limit (balanced, so only the depth is wrong).
_raw_tokens = st.one_of(
    st.integers(4301, 6000).map(lambda n: "9" * n),
    st.sampled_from(["1e999999", "-1e999999", "-0", "1E400", "0.1e-99999", "-Infinity", "NaN"]),
    st.integers(1, 20_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 10_000).map(lambda n: '{"a":' * n + "0" + "}" * n),
)

# Values of the wrong type for any field, plus edges of the right types.
_odd_values = st.sampled_from(
    [None, True, False, 0, -1, 1.5, -0.0, "", " ", "0", "-1", "1.0", "0x10", "١٢", "\ud800",
     [], {}, [None], {"": None}, 10**30, -(10**30), 2**63, float("nan"), float("inf")]
)

_MARKER = re.compile(r'"@@raw:(\d+)@@"')
_EDITS = ["delete", "null", "odd", "any", "raw", "stringify", "wrap", "add"]


def extras(reserved: frozenset[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Extra top-level fields a peer may add; the parsers must ignore them."""
    return st.dictionaries(
        short_text.filter(lambda key: key not in reserved and "@@" not in key),
        _scalars | st.lists(_scalars, max_size=3),  # cheap to draw; mutated() nests deeper
        max_size=3,
    )


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """(container, key) for every value nested in `value`, the root excluded."""
    found: list[tuple[Any, Any]] = []
    stack = [value]
    while stack:
        container = stack.pop()
        keys = list(container) if type(container) is dict else range(len(container))
        for key in keys:
            found.append((container, key))
            if type(container[key]) in (dict, list):
                stack.append(container[key])
    return found


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy[dict[str, Any]]) -> str:
    """A valid message after 1–3 structural edits, serialised, then maybe damaged as text."""
    message = copy.deepcopy(draw(messages))
    raw: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(message)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        edit = draw(st.sampled_from(_EDITS))
        if edit == "delete":
            del container[key]
        elif edit == "null":
            container[key] = None
        elif edit == "odd":
            container[key] = draw(_odd_values)
        elif edit == "any":
            container[key] = draw(json_values)
        elif edit == "raw":
            raw.append(draw(_raw_tokens))
            container[key] = f"@@raw:{len(raw) - 1}@@"
        elif edit == "stringify":
            # "8000" for 8000, "None" for null, "{'a': 1}" for an object: right text, wrong type.
            container[key] = str(container[key])
        elif edit == "wrap":
            container[key] = [container[key]]
        elif type(container[key]) is dict:
            container[key][draw(short_text)] = draw(json_values)
        else:
            container[key] = {"value": container[key]}
    text = json.dumps(message, ensure_ascii=draw(st.booleans()))
    text = _MARKER.sub(lambda match: raw[int(match.group(1))], text)
    damage = draw(st.sampled_from(["none", "none", "truncate", "insert", "delete"]))
    if damage != "none" and text:
        at = draw(st.integers(0, len(text) - 1))
        if damage == "truncate":
            text = text[:at]
        elif damage == "insert":
            text = text[:at] + draw(hostile_text(min_size=1, max_size=3)) + text[at:]
        else:
            text = text[:at] + text[at + 1 :]
    return text


def check_protocol_error(exc: ProtocolError) -> ProtocolError:
    """What every refusal keeps, whatever the input: a known kind and a short, loggable detail."""
    assert exc.kind in PROTOCOL_ERROR_KINDS
    assert isinstance(exc.detail, str)
    assert len(exc.detail) <= MAX_DETAIL_CHARS, exc.detail
    exc.detail.encode("utf-8")  # no lone surrogate copied from the input
    assert str(exc).startswith(f"{exc.kind}: ")
    return exc
