"""Entity tags of rows and the conditional requests on them (If-Match, If-None-Match).

A row's ETag is a strong validator: a hash of its record as served, so the
same stored values give the same tag in every process and after restarts,
and any change a client could see gives another. Hidden columns are never
read (API.md section 1), so they are not part of the tag either: a change to
a hidden column alone does not invalidate a tag, and the tag cannot be used
to test guesses of a hidden value. Writes check the tag on the row as read
under its lock, in the write's own transaction (store.update_row/delete_row).

Headers are read leniently (RFC 9110 section 13.1): the quoted tags found in
one are its list, so a malformed If-Match matches nothing (412) and a
malformed If-None-Match matches nothing (the request goes on).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pylight import values
from pylight.errors import precondition_failed

# An entity-tag (RFC 9110 section 8.8.3): W/ for a weak one, then etagc between quotes.
_TAG = re.compile(r'(W/)?("[\x21\x23-\x7e\x80-\xff]*")')


def row_tag(record: Mapping[str, Any]) -> str:
    """The ETag of a row, from its record as the API serves it (keys sorted)."""
    canonical = values.dumps(sorted(record.items(), key=lambda item: item[0]))
    digest = hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=15)
    return '"' + base64.urlsafe_b64encode(digest.digest()).decode() + '"'


@dataclass(frozen=True)
class TagList:
    """The value of an If-Match or If-None-Match header: ``*`` or ``(weak, tag)`` pairs."""

    any: bool
    tags: tuple[tuple[bool, str], ...] = ()

    def strong_match(self, tag: str) -> bool:
        """If-Match compares strongly: a weak tag never matches."""
        return self.any or any(not weak and given == tag for weak, given in self.tags)

    def weak_match(self, tag: str) -> bool:
        """If-None-Match compares weakly: ``W/"x"`` matches ``"x"``."""
        return self.any or any(given == tag for _, given in self.tags)


def _tag_list(header: str | None) -> TagList | None:
    if header is None:
        return None
    if header.strip(" \t") == "*":
        return TagList(True)
    return TagList(False, tuple((bool(weak), tag) for weak, tag in _TAG.findall(header)))


@dataclass(frozen=True)
class Preconditions:
    """A request's If-Match and If-None-Match (None: not sent), evaluated as RFC 9110
    section 13.2.2 orders them: If-Match first."""

    if_match: TagList | None
    if_none_match: TagList | None

    def require(self, record: Mapping[str, Any]) -> None:
        """Before a write: 412 unless the row as it is now satisfies both headers."""
        tag = row_tag(record)
        self.require_match(tag)
        if self.if_none_match is not None and self.if_none_match.weak_match(tag):
            raise precondition_failed("If-None-Match matches the row's current ETag; "
                                      "nothing was written", header="If-None-Match")

    def not_modified(self, tag: str) -> bool:
        """For a read of the row tagged ``tag``: whether to answer 304 (412 when If-Match
        does not hold)."""
        self.require_match(tag)
        return self.if_none_match is not None and self.if_none_match.weak_match(tag)

    def require_match(self, tag: str) -> None:
        """412 unless If-Match (if sent) holds ``tag``."""
        if self.if_match is not None and not self.if_match.strong_match(tag):
            raise precondition_failed(
                "If-Match does not match the row's current ETag: the row has changed since "
                "(or If-Match holds no quoted tag); nothing was written, read the row again",
                header="If-Match")


def preconditions(headers: Mapping[str, str]) -> Preconditions | None:
    """The conditions of a request's headers; None when it has neither header."""
    if_match, if_none_match = headers.get("If-Match"), headers.get("If-None-Match")
    if if_match is None and if_none_match is None:
        return None
    return Preconditions(_tag_list(if_match), _tag_list(if_none_match))
