"""Finds personal data and secrets in the log and span files a test run wrote.

tests/conftest.py runs `scan_tree` over pytest's basetemp when the session ends
and fails the run on any finding; tests/reliability/test_secret_scan.py plants
samples of each kind to prove every pattern fires. What counts:

- identity_number: 18-character PRC resident identity number whose birth date
  is a real date and whose GB 11643 check character is right (so trace ids,
  nanosecond timestamps and other long digit runs do not count);
- phone: an 11-digit mainland mobile number (1[3-9]x, optionally +86);
- email: an e-mail address;
- password: the passwords tests, the demo and `finmesh load` register users
  with ("correct horse ...", "load owner <hex>");
- jwt / bearer: a signed token (three base64url parts, the first "eyJ") or
  an "authorization: Bearer ..." value;
- private_key: a PEM private key block;
- service_secret / service_credential: the mesh secret the tests use, and any
  service credential ("<service>." and a 43-character HMAC), whatever its secret;
- secret_field: a JSON field named like a secret (password, token, secret,
  credential, authorization, private_key) with an unmasked value.

Only log and span files are read (*.log, *.jsonl, *.out, *.err): databases and
key files hold such data by design. The synthetic people tests create are
shaped exactly like real ones on purpose: if one reaches a log, masking failed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from finmesh.platform.auth.service_tokens import KNOWN_SERVICES

LOG_SUFFIXES = frozenset({".log", ".jsonl", ".out", ".err"})
# The mesh secret tests.auth gives every service (test_secret_scan checks the two agree).
TEST_SERVICE_SECRET = "test-service-secret"

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK_CHARS = "10X98765432"


def _valid_identity_number(value: str) -> bool:
    value = value.upper()
    try:
        date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if not 1900 <= int(value[6:10]) <= 2100:
        return False
    return _CHECK_CHARS[sum(int(d) * w for d, w in zip(value[:17], _WEIGHTS, strict=True)) % 11] == value[17]


# Hits are (offset in the text, kind, matched value).
Hits = Iterator[tuple[int, str, str]]
_ASCII_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# One pass finds every long digit run; identity numbers and phones are told apart in Python. (Several
# look-around regexes over tens of MB of spans cost seconds; this costs a fraction.)
_DIGIT_RUN = re.compile(r"\+?[0-9]{11,}[0-9Xx]?")
_MOBILE = re.compile(r"\+?(?:86)?1[3-9][0-9]{9}")
_EMAIL_DOMAIN = re.compile(r"@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_EMAIL_LOCAL = re.compile(r"[A-Za-z0-9_.%+-]+\Z")


def _digits(text: str) -> Hits:
    for match in _DIGIT_RUN.finditer(text):
        start, end = match.span()
        if (start and text[start - 1] in _ASCII_ALNUM) or (end < len(text) and text[end] in _ASCII_ALNUM):
            continue  # part of a longer token (a hex id, a base64 blob)
        value = match.group(0)
        if len(value) == 18 and _valid_identity_number(value):
            yield start, "identity_number", value
        elif _MOBILE.fullmatch(value):
            yield start, "phone", value


def _emails(text: str) -> Hits:
    # From the '@' backwards: a regex starting at the local part would retry at every character.
    for match in _EMAIL_DOMAIN.finditer(text):
        local = _EMAIL_LOCAL.search(text, max(0, match.start() - 64), match.start())
        if local:
            yield local.start(), "email", text[local.start() : match.end()]


def _regex(kind: str, pattern: str, flags: int = 0) -> Callable[[str], Hits]:
    compiled = re.compile(pattern, flags)

    def find(text: str) -> Hits:
        for match in compiled.finditer(text):
            yield match.start(), kind, match.group(0)

    return find


_CREDENTIAL_MAC = re.compile(r"\.[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")


def _credentials(text: str) -> Hits:
    # Any secret's: a credential is "<service>." and 32 HMAC bytes in unpadded base64url. Found from the MAC
    # backwards, as e-mails are: a pattern led by the service names would be tried at every character.
    for match in _CREDENTIAL_MAC.finditer(text):
        for service in KNOWN_SERVICES:
            start = match.start() - len(service)
            if text.startswith(service, start) and (start == 0 or text[start - 1] not in _ASCII_ALNUM):
                yield start, "service_credential", text[start : match.end()]


FINDERS: tuple[Callable[[str], Hits], ...] = (
    _digits,  # identity_number, phone
    _emails,
    _regex("password", r"correct horse[\w ]*"),
    _regex("password", r"load owner [0-9a-f]{32}"),
    _regex("jwt", r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    _regex("bearer", r"Bearer\s+[A-Za-z0-9._~+/-]{16,}"),  # two literal-led patterns scan faster than [Bb]
    _regex("bearer", r"bearer\s+[A-Za-z0-9._~+/-]{16,}"),
    _regex("private_key", r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----"),
    _regex("service_secret", re.escape(TEST_SERVICE_SECRET)),
    _credentials,
    _regex(
        "secret_field",
        r"\"(?:password|token|access_token|refresh_token|secret|credential|service_credential|"
        r"authorization|private_key|signing_secret)\"\s*:\s*\"(?!\*+\")[^\"]{6,}\"",
        re.IGNORECASE,
    ),
)


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    kind: str
    masked: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.kind} {self.masked}"


def mask(value: str) -> str:
    """Enough to find the line again, not enough to leak the value."""
    return value[:2] + "*" * max(len(value) - 4, 3) + value[-2:] if len(value) > 8 else "*" * len(value)


def scan_text(text: str) -> Iterator[tuple[int, str, str]]:
    """(line number, kind, masked match) for everything in `text` that looks like personal data or a secret."""
    # Each finder over the whole text (several times faster than line by line); line numbers only for hits.
    hits = sorted(hit for find in FINDERS for hit in find(text))
    return iter([(text.count("\n", 0, offset) + 1, kind, mask(value)) for offset, kind, value in hits])


def log_files(roots: Iterable[Path]) -> Iterator[Path]:
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix in LOG_SUFFIXES and path.is_file() and not path.is_symlink():
                yield path


@dataclass
class ScanReport:
    files: int = 0
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)


def scan_tree(roots: Iterable[Path]) -> ScanReport:
    report = ScanReport()
    for path in log_files(roots):
        data = path.read_bytes()
        report.files += 1
        report.bytes += len(data)
        text = data.decode("utf-8", errors="replace")
        report.findings.extend(Finding(path, line, kind, masked) for line, kind, masked in scan_text(text))
    return report
