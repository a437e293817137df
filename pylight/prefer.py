"""The ``Prefer`` request header (RFC 7240) as the REST writes read it: ``return=`` and
``resolution=``, PostgREST's spelling."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pylight.errors import bad_request

MERGE = "merge-duplicates"
IGNORE = "ignore-duplicates"
RESOLUTIONS = (MERGE, IGNORE)


@dataclass(frozen=True)
class Prefer:
    #: ``return=minimal``: a write answers 204 without a body.
    minimal: bool = False
    #: ``resolution=``: a POST is an upsert (MERGE) or inserts only new rows (IGNORE).
    resolution: str | None = None

    @property
    def merge(self) -> bool:
        return self.resolution == MERGE


def parse(headers: Iterable[str]) -> Prefer:
    """The preferences of every ``Prefer`` header line of a request.

    Unknown preferences and values of ``return`` other than ``minimal`` are
    ignored, as RFC 7240 and PostgREST do; a ``resolution`` this server does not
    know is a 400, since ignoring it would turn an upsert into a plain insert.
    """
    minimal = False
    resolution = None
    for header in headers:
        for item in header.split(","):
            # Parameters after ";" qualify a preference; none of ours has any.
            name, _, value = item.split(";", 1)[0].partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "return":
                minimal = value.lower() == "minimal"
            elif name == "resolution":
                if value not in RESOLUTIONS:
                    raise bad_request(f"Prefer: resolution={value[:40]!r} is not one of "
                                      f"{', '.join(RESOLUTIONS)}", header="Prefer")
                if resolution not in (None, value):
                    raise bad_request("Prefer: give one resolution, not both", header="Prefer")
                resolution = value
    return Prefer(minimal, resolution)
