"""Hypothesis strategies for hostile protobuf messages, built from any message Descriptor.

Every field may be missing; a present field gets a value its wire type allows but a
validator might not expect: integer extremes, NaN and infinities, enum numbers the
proto does not declare, strings of unusual Unicode or of megabytes, bytes that are
not UTF-8, nested messages down to a bounded depth. Oneofs set at most one member.

The strategies stay inside what the protobuf runtime can serialize (a proto3 string
holds valid UTF-8), so the message reaches the server's handler. What the runtime
refuses to build, `raw_string_field` encodes by hand: a string field whose
bytes are not UTF-8, which the server must refuse while decoding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import strategies as st

Strategy = st.SearchStrategy
# String field name -> extra values for it, mixed in with the generic ones (e.g. ids that exist).
Hints = Mapping[str, Strategy]

_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}

# Text that has broken parsers before: control and format characters, look-alike digits,
# astral planes, injection-shaped strings, numbers that do not fit.
HOSTILE_TEXT = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "\u202eevil",
    "\ufeff",
    "\u200b",
    "\u2028",
    "\uffff",
    "\U0010ffff",
    "\U0001f4b8" * 3,
    "e\u0301" * 4,
    "１２３４",
    "٣٤٥",
    "Ⅻ",
    "CNY",
    "cny",
    "XXX",
    "USD",
    "-1",
    "0",
    "1e309",
    "NaN",
    "-0",
    "9" * 19,
    "9" * 40,
    "²",
    "¹²:³⁴",
    "24:60",
    "0x7fffffffffffffff",
    "' OR 1=1 --",
    "%s%n%x",
    "${jndi:ldap://127.0.0.1/a}",
    "../../etc/passwd",
    "<script>",
    "null",
    "true",
    "[]",
    "{}",
    "测试用户",
    "+86 138 0000 0000",
    "a@b",
    "@",
    "11010519900517001X",
)
# Bytes a string decoder would choke on: lone continuation bytes, overlong forms, encoded surrogates,
# code points past U+10FFFF, truncated sequences.
INVALID_UTF8 = (
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xc3",
    b"\xe2\x82",
    b"ok\xffok",
    b"\x00\xff" * 8,
)
SPECIAL_FLOATS = (math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, -1.7976931348623157e308)


def integers_for(field_type: int) -> Strategy:
    low, high = _INT_RANGES[field_type]
    candidates = (low, low + 1, -1, 0, 1, 2**31 - 1, 2**31, 2**32, 2**53 + 1, high - 1, high)
    edges = sorted({v for v in candidates if low <= v <= high})
    return st.one_of(st.sampled_from(edges), st.integers(low, high))


def floats_for(field_type: int) -> Strategy:
    width = 32 if field_type == FieldDescriptor.TYPE_FLOAT else 64
    return st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(width=width))


def huge_text(max_chars: int) -> Strategy:
    """Long strings built by repetition: cheap to generate however long they are."""
    return st.builds(
        lambda unit, times: (unit * times)[:max_chars],
        st.sampled_from(["a", "9", "测", "\U0001f4b8", "\x00", "ab\u202e"]),
        st.integers(1_000, max_chars),
    )


def texts(max_chars: int) -> Strategy:
    ordinary = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
    # One string in ~30 is long (up to max_chars): large enough to find size limits, rare enough to stay fast.
    return st.integers(0, 29).flatmap(lambda roll: huge_text(max_chars) if roll == 0 else ordinary)


def binaries(max_bytes: int) -> Strategy:
    ordinary = st.one_of(st.sampled_from(INVALID_UTF8), st.binary(max_size=64))
    huge = st.builds(
        lambda unit, times: unit * times, st.sampled_from([b"\xff", b"\x00", b"ab"]), st.integers(1_000, max_bytes)
    )
    return st.integers(0, 29).flatmap(lambda roll: huge if roll == 0 else ordinary)


_WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


def usual_text(name: str) -> Strategy:
    """What a string field of this name usually holds, judged by its name alone."""
    if name.endswith("_id") or name.endswith("key") or name == "token":
        return st.uuids().map(str)
    if name.endswith("currency_code"):
        return st.sampled_from(["CNY", "USD"])
    if "email" in name:
        return st.just("someone@example.com")
    if "phone" in name:
        return st.just("+8613800138000")
    if name.endswith("_at") or name.endswith("date"):
        return st.sampled_from(["2026-01-01", "2026-01-01T00:00:00Z"])
    return _WORDS


def enums_for(field: FieldDescriptor) -> Strategy:
    declared = [v.number for v in field.enum_type.values]
    # Open (proto3) enums carry undeclared numbers; a server must refuse them, not index a table with them.
    return st.one_of(
        st.sampled_from(declared),
        st.sampled_from([max(declared) + 1, -1, 2**31 - 1, -(2**31)]),
        st.integers(-(2**31), 2**31 - 1),
    )


class MessageStrategies:
    """Builds (and caches) one strategy per message type and remaining depth.

    `plausible=True` builds near-valid messages instead: every field present with a value of the
    shape a real caller sends (ids, keys, currency codes, small amounts, declared enum values), and
    about one field in `hostile_one_in` replaced by a hostile value or left out. Wholly random
    messages mostly stop at validation; near-valid ones reach the rules and the database with one
    bad value, where a missed check does harm.
    """

    def __init__(
        self,
        *,
        max_depth: int = 3,
        max_repeated: int = 4,
        max_chars: int = 2_000_000,
        hints: Hints | None = None,
        plausible: bool = False,
        hostile_one_in: int = 8,
    ) -> None:
        self.plausible = plausible
        self.hostile_one_in = hostile_one_in
        self.max_depth = max_depth
        self.max_repeated = max_repeated
        self.max_chars = max_chars
        self.hints = dict(hints or {})
        self._cache: dict[tuple[str, int], Strategy] = {}

    def message(self, descriptor: Descriptor, depth: int | None = None) -> Strategy:
        depth = self.max_depth if depth is None else depth
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            self._cache[key] = self._build(descriptor, depth)
        return self._cache[key]

    def _build(self, descriptor: Descriptor, depth: int) -> Strategy:
        cls = message_factory.GetMessageClass(descriptor)
        plain = {f.name: self._field(f, depth) for f in descriptor.fields if f.containing_oneof is None}
        oneofs = [
            st.one_of(st.just({}), *[st.fixed_dictionaries({f.name: self._field(f, depth)}) for f in oneof.fields])
            for oneof in descriptor.oneofs
        ]
        # Every plain field is optional: a missing field is as hostile as a wrong one.
        present = st.fixed_dictionaries(plain) if self.plausible else st.fixed_dictionaries({}, optional=plain)
        parts = st.tuples(present, *oneofs)
        return parts.map(lambda dicts: _assemble(cls, descriptor, dicts))

    def _field(self, field: FieldDescriptor, depth: int) -> Strategy:
        if _is_map(field):
            entry = field.message_type
            key = self._single(entry.fields_by_name["key"], depth - 1)
            value = self._single(entry.fields_by_name["value"], depth - 1)
            return st.dictionaries(key, value, max_size=self.max_repeated)
        one = self._single(field, depth)
        if _is_repeated(field):
            return st.lists(one, max_size=self.max_repeated)
        return one

    def _single(self, field: FieldDescriptor, depth: int) -> Strategy:
        generic = self._generic(field, depth)
        # Hints are strings: an enum or message field that shares a hinted name keeps its own values.
        hint = self.hints.get(field.name) if field.type == FieldDescriptor.TYPE_STRING else None
        if self.plausible:
            usual = self._usual(field, depth) if hint is None else hint
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                return usual  # its own fields carry the hostile values
            # The hostile roll is the highest, so a shrunk (minimal) example is the wholly plausible message.
            last = self.hostile_one_in - 1
            return st.integers(0, last).flatmap(lambda roll: generic if roll == last else usual)
        return st.one_of(hint, generic) if hint is not None else generic

    def _usual(self, field: FieldDescriptor, depth: int) -> Strategy:
        """A value of the shape an honest caller sends for this field."""
        kind, name = field.type, field.name
        if kind == FieldDescriptor.TYPE_MESSAGE:
            return (
                self.message(field.message_type, depth - 1)
                if depth > 0
                else st.just(message_factory.GetMessageClass(field.message_type)())
            )
        if kind == FieldDescriptor.TYPE_STRING:
            return usual_text(name)
        if kind in _INT_RANGES:
            return st.integers(1, 10_000)
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return st.floats(0, 1_000)
        if kind == FieldDescriptor.TYPE_ENUM:
            declared = [v.number for v in field.enum_type.values if v.number] or [0]
            return st.sampled_from(declared)
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        return st.binary(min_size=1, max_size=16)

    def _generic(self, field: FieldDescriptor, depth: int) -> Strategy:
        kind = field.type
        if kind == FieldDescriptor.TYPE_MESSAGE or kind == FieldDescriptor.TYPE_GROUP:
            # Past the depth bound a nested message is left empty (present, all defaults).
            return (
                self.message(field.message_type, depth - 1)
                if depth > 0
                else st.just(message_factory.GetMessageClass(field.message_type)())
            )
        if kind in _INT_RANGES:
            return integers_for(kind)
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return floats_for(kind)
        if kind == FieldDescriptor.TYPE_BOOL:
            return st.booleans()
        if kind == FieldDescriptor.TYPE_STRING:
            return texts(self.max_chars)
        if kind == FieldDescriptor.TYPE_BYTES:
            return binaries(self.max_chars)
        if kind == FieldDescriptor.TYPE_ENUM:
            return enums_for(field)
        raise TypeError(f"unsupported field type {kind} of {field.full_name}")


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _is_map(field: FieldDescriptor) -> bool:
    return (
        _is_repeated(field) and field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
    )


def _assemble(cls: Callable[[], Any], descriptor: Descriptor, dicts: tuple[dict[str, Any], ...]) -> Any:
    message = cls()
    for values in dicts:
        for name, value in values.items():
            _set(message, descriptor.fields_by_name[name], value)
    return message


def _set(message: Any, field: FieldDescriptor, value: Any) -> None:
    target = getattr(message, field.name)
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        for key, item in value.items():
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif _is_repeated(field):
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            for item in value:
                target.add().CopyFrom(item)
        else:
            target.extend(value)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)


def request_strategy(descriptor: Descriptor, **options: Any) -> Strategy:
    """Arbitrary messages of `descriptor`'s type; options as MessageStrategies takes."""
    return MessageStrategies(**options).message(descriptor)


# --- one field at a time ---------------------------------------------------------------------------------

# Strings that pass str.isdigit() or a length check and still break int(), a BIGINT column or a time
# parser: superscript and Arabic-Indic digits, a number past 2**63, one past int()'s 4300-digit limit.
CONFUSED_TEXT = ("²", "¹²:³⁴", "١٢٣", "9" * 19, "9" * 5_000, "\x00", "-1")
CONFUSED_INTEGERS = (-(2**63), -1, 2**63 - 1)
# Bytes fields carry files (statements, keys): not UTF-8, line breaks alone, a line past parsers' field limits.
CONFUSED_BYTES = (b"\xff\xfe", b"\r\r\n\r", b"x" * 200_000)


def baseline(descriptor: Descriptor, examples: Mapping[str, str] | None = None, depth: int = 2) -> Any:
    """One well-formed message, the same every run: each field holds a value of the shape an honest caller
    sends (`examples` gives string fields by name), the first member of each oneof is set."""
    examples = examples or {}
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.fields[0] is not field:
            continue
        if _is_map(field):
            entry = field.message_type
            key = _usual_value(entry.fields_by_name["key"], examples, depth - 1)
            value = _usual_value(entry.fields_by_name["value"], examples, depth - 1)
            _set(message, field, {key: value})
        elif _is_repeated(field):
            _set(message, field, [_usual_value(field, examples, depth - 1)])
        elif field.type != FieldDescriptor.TYPE_MESSAGE or depth > 0:
            _set(message, field, _usual_value(field, examples, depth - 1))
    return message


def _usual_value(field: FieldDescriptor, examples: Mapping[str, str], depth: int) -> Any:
    kind, name = field.type, field.name
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return baseline(field.message_type, examples, depth)
    if kind == FieldDescriptor.TYPE_STRING:
        if name in examples:
            return examples[name]
        if name.endswith("_id") or name.endswith("key") or name == "token":
            return "00000000-0000-4000-8000-000000000001"
        return {"currency_code": "CNY", "email": "someone@example.com", "phone": "+8613800138000"}.get(name, "word")
    if kind in _INT_RANGES:
        return 100
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.0
    if kind == FieldDescriptor.TYPE_ENUM:
        return next((v.number for v in field.enum_type.values if v.number), 0)
    if kind == FieldDescriptor.TYPE_BOOL:
        return True
    return b"x"


def _sweepable(field: FieldDescriptor) -> bool:
    return not _is_repeated(field) and (
        field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES) or field.type in _INT_RANGES
    )


def one_bad_field(base: Any) -> Iterator[tuple[str, Any]]:
    """(field path, copy of `base` with that one scalar field confused), for every scalar field at the top
    level and one message level down."""
    for field in base.DESCRIPTOR.fields:
        if _sweepable(field):
            yield from _confused(base, [field])
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not _is_repeated(field):
            for inner in field.message_type.fields:
                if _sweepable(inner):
                    yield from _confused(base, [field, inner])


def _confused(base: Any, path: list[FieldDescriptor]) -> Iterator[tuple[str, Any]]:
    *parents, leaf = path
    if leaf.type == FieldDescriptor.TYPE_STRING:
        values: Sequence[Any] = CONFUSED_TEXT
    elif leaf.type == FieldDescriptor.TYPE_BYTES:
        values = CONFUSED_BYTES
    else:
        low, high = _INT_RANGES[leaf.type]
        values = [v for v in CONFUSED_INTEGERS if low <= v <= high]
    for value in values:
        message = type(base)()
        message.CopyFrom(base)
        target = message
        for parent in parents:
            target = getattr(target, parent.name)
        setattr(target, leaf.name, value)
        yield ".".join(f.name for f in path), message


# --- hand-made wire bytes the protobuf runtime would refuse to serialize -----------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string_fields(descriptor: Descriptor) -> list[FieldDescriptor]:
    return [f for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]


def raw_string_field(field: FieldDescriptor, payload: bytes) -> bytes:
    """The wire bytes of `field` holding `payload` as is: bytes the runtime would refuse to put in a string."""
    return _varint(field.number << 3 | 2) + _varint(len(payload)) + payload
