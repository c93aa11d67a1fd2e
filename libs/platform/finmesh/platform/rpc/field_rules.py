"""The contracts' request-field rules (option `finmesh.common.v1.field`), checked before every handler.

Every string and bytes field a request can carry declares a maximum length and a kind of text beside the field in
its .proto (protos/finmesh/common/v1/options.proto says what each kind allows). `checker_for` compiles the rules of
one message type, once, into a flat list of steps over its fields and the messages it nests; the servicer guard
(rpc_errors.guarded) runs it on every request after authorization:

- a value over its bound, one holding NUL or a lone surrogate (PostgreSQL stores neither), a control or format
  character where the kind forbids it, or a card number in a TOKEN field is INVALID_ARGUMENT naming the field by
  its path ("risk_context.device_id", "transfers[3].to_account_id"), never quoting the value;
- card numbers in FREE_TEXT fields are masked in the request itself (last four digits kept), so the handler
  never stores or logs them.

A repeated field declared `per_item` (batch calls whose items are judged one by one) is left to its handler, which
checks each item with `checker_for(item type).violations(item, "events[3].")`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from finmesh.common.v1 import options_pb2
from finmesh.platform.errors import FieldViolation, InvalidArgument
from finmesh.platform.privacy.pan import contains_pan, mask_pans

# A caller hears about this many bad fields at most (the rest are the same mistake again); rpc_errors.to_status
# sends no more either, so the trailer stays small.
MAX_VIOLATIONS = 10

IDENTIFIER = options_pb2.TEXT_KIND_IDENTIFIER
TOKEN = options_pb2.TEXT_KIND_TOKEN
FREE_TEXT = options_pb2.TEXT_KIND_FREE_TEXT
SECRET = options_pb2.TEXT_KIND_SECRET
DOCUMENT = options_pb2.TEXT_KIND_DOCUMENT
BINARY = options_pb2.TEXT_KIND_BINARY

_STRUCT = "google.protobuf.Struct"
# What no string may hold: PostgreSQL refuses NUL in text, and a lone surrogate is no character at all.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# What text with lines (FREE_TEXT, DOCUMENT) refuses: C0 controls but tab, line feed and carriage return (so
# ESC and with it every ANSI sequence), DEL and C1 controls, bidi embeddings/overrides and isolates.
_NOT_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

_SAYS: dict[int, str] = {
    IDENTIFIER: "a single line of printable characters (no control or format characters)",
    TOKEN: "a single line of printable characters (no control or format characters)",
    FREE_TEXT: "no control characters (only tab and line breaks), ANSI escapes or bidi overrides",
    DOCUMENT: "no control characters (only tab and line breaks), ANSI escapes or bidi overrides",
    SECRET: "must not contain NUL or unpaired surrogates",
}


@dataclass(frozen=True, slots=True)
class _Step:
    """One field of one message type to check."""

    name: str
    max_length: int
    kind: int
    repeated: bool = False
    map_key_length: int = 0  # > 0: a map<string, string>
    struct: bool = False
    nested: FieldChecker | None = None
    # A single string whose kind is satisfied by printable text within its bound: the common case, decided
    # with two C calls (len, str.isprintable) before any closer look.
    quick: bool = False


class FieldChecker:
    """The compiled rules of one message type."""

    def __init__(self, steps: list[_Step]) -> None:
        self.steps = steps

    def __bool__(self) -> bool:
        return bool(self.steps)

    def check(self, message: Any) -> None:
        """Raise InvalidArgument naming every bad field (up to MAX_VIOLATIONS); mask card numbers in free text."""
        out: list[FieldViolation] = []
        self._walk(message, "", out)
        if out:
            raise InvalidArgument(out)

    def violations(self, message: Any, prefix: str = "") -> list[FieldViolation]:
        out: list[FieldViolation] = []
        self._walk(message, prefix, out)
        return out

    def _walk(self, message: Any, prefix: str, out: list[FieldViolation]) -> None:
        for step in self.steps:
            if step.quick:
                value = getattr(message, step.name)
                if not value or (len(value) <= step.max_length and value.isprintable()):
                    continue
            if len(out) >= MAX_VIOLATIONS:
                return
            if step.nested is not None:
                if step.repeated:
                    for index, item in enumerate(getattr(message, step.name)):
                        if len(out) >= MAX_VIOLATIONS:
                            return
                        step.nested._walk(item, f"{prefix}{step.name}[{index}].", out)
                elif message.HasField(step.name):
                    step.nested._walk(getattr(message, step.name), f"{prefix}{step.name}.", out)
            elif step.map_key_length:
                _check_map(message, step, prefix, out)
            elif step.struct:
                if message.HasField(step.name):
                    _check_struct(getattr(message, step.name), step, prefix + step.name, out)
            elif step.repeated:
                values = getattr(message, step.name)
                for index, value in enumerate(values):
                    if len(out) >= MAX_VIOLATIONS:
                        return
                    checked = _check_value(value, step, f"{prefix}{step.name}[{index}]", out)
                    if checked is not value:
                        values[index] = checked
            else:
                value = getattr(message, step.name)
                if not value:
                    continue
                checked = _check_value(value, step, prefix + step.name, out)
                if checked is not value:
                    setattr(message, step.name, checked)


def _check_value(value: Any, step: _Step, path: str, out: list[FieldViolation]) -> Any:
    """`value` as the handler may see it (card numbers masked in free text); a violation appended if refused."""
    kind = step.kind
    if len(value) > step.max_length:
        unit = "bytes" if kind == BINARY else "characters"
        out.append(FieldViolation(path, f"too long: at most {step.max_length} {unit}"))
        return value
    if kind == BINARY:
        return value
    if kind in (IDENTIFIER, TOKEN):
        # str.isprintable is false for every control, format (bidi), surrogate and line-break character.
        if not value.isprintable():
            out.append(FieldViolation(path, _SAYS[kind]))
        elif kind == TOKEN and contains_pan(value):
            out.append(FieldViolation(path, "must not be a card number: send the channel's token for it"))
        return value
    if kind == SECRET:
        if _UNSTORABLE.search(value) is not None:
            out.append(FieldViolation(path, _SAYS[kind]))
        return value
    # FREE_TEXT and DOCUMENT: printable text (the common case) needs no closer look.
    if not value.isprintable() and _NOT_IN_TEXT.search(value) is not None:
        out.append(FieldViolation(path, _SAYS[kind]))
        return value
    return mask_pans(value) if kind == FREE_TEXT else value


def _check_map(message: Any, step: _Step, prefix: str, out: list[FieldViolation]) -> None:
    entries = getattr(message, step.name)
    path = prefix + step.name
    masked = {}
    for key, value in entries.items():
        if len(key) > step.map_key_length or not key.isprintable():
            out.append(FieldViolation(path, f"keys: at most {step.map_key_length} printable characters"))
            return
        before = len(out)
        checked = _check_value(value, step, path, out)
        if len(out) > before:
            return
        if checked is not value:
            masked[key] = checked
    for key, value in masked.items():
        entries[key] = value


def _check_struct(struct: Any, step: _Step, path: str, out: list[FieldViolation]) -> None:
    size = struct.ByteSize()
    if size > step.max_length:
        out.append(FieldViolation(path, f"too long: at most {step.max_length} bytes encoded"))
        return
    for text in _struct_strings(struct):
        if not text.isprintable() and _NOT_IN_TEXT.search(text) is not None:
            out.append(FieldViolation(path, _SAYS[DOCUMENT]))
            return


def _struct_strings(struct: Any) -> Any:
    for key, value in struct.fields.items():
        yield key
        yield from _value_strings(value)


def _value_strings(value: Any) -> Any:
    which = value.WhichOneof("kind")
    if which == "string_value":
        yield value.string_value
    elif which == "struct_value":
        yield from _struct_strings(value.struct_value)
    elif which == "list_value":
        for item in value.list_value.values:
            yield from _value_strings(item)


def rules_of(field: FieldDescriptor) -> options_pb2.FieldRules | None:
    options = field.GetOptions()
    return options.Extensions[options_pb2.field] if options.HasExtension(options_pb2.field) else None


_CHECKERS: dict[str, FieldChecker] = {}


def checker_for(descriptor: Descriptor) -> FieldChecker:
    """The compiled rules of a message type (cached; an empty checker for a type with nothing to check)."""
    found = _CHECKERS.get(descriptor.full_name)
    if found is None:
        found = _CHECKERS[descriptor.full_name] = FieldChecker([])  # cached before compiling: ends a cycle of types
        found.steps.extend(_compile(descriptor))
    return found


def _compile(descriptor: Descriptor) -> list[_Step]:
    steps = []
    for field in descriptor.fields:
        rules = rules_of(field)
        repeated = field.is_repeated
        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            if rules is not None:
                quick = (
                    not repeated
                    and rules.kind in (IDENTIFIER, SECRET, DOCUMENT)
                    and field.type == FieldDescriptor.TYPE_STRING
                )
                steps.append(_Step(field.name, rules.max_length, rules.kind, repeated=repeated, quick=quick))
        elif field.message_type is None:
            continue
        elif field.message_type.GetOptions().map_entry:
            if rules is not None:
                steps.append(_Step(field.name, rules.max_length, rules.kind, map_key_length=rules.max_key_length))
        elif field.message_type.full_name == _STRUCT:
            if rules is not None:
                steps.append(_Step(field.name, rules.max_length, rules.kind, struct=True))
        elif not (rules is not None and rules.per_item):
            nested = checker_for(field.message_type)
            if nested.steps:  # Timestamp and the like: nothing to walk into
                steps.append(_Step(field.name, 0, 0, repeated=repeated, nested=nested))
    return steps
