"""Schema-driven fuzzing: schemathesis against /api/openapi.json of a running server.

Every check (server errors, response schema, status codes, content types,
headers, positive and negative data, unsupported methods, ...), the coverage,
fuzzing and stateful phases (create -> get -> update -> delete -> 404, chained
through the document's `links`), on each of the three databases: on the demo
tables, and on the awkward schema of each database (tests/awkward_schemas.py:
every column type, reserved and mixed-case names, composite keys, views,
generated columns), where the document must say exactly what each type takes
and gives. The budget is fixed (examples per operation, seed) so a run is
reproducible: about ten seconds per database on the demo, twenty to sixty on the
awkward schema (its coverage phase alone, which the budget does not bound, is most
of that). What it found is kept in tests/test_fuzz_regressions.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.awkward_schemas import load_awkward
from tests.conftest import write_config
from tests.live_server import LiveServer, free_port

pytest.importorskip("schemathesis")

MAX_EXAMPLES = int(os.environ.get("PYLIGHT_FUZZ_EXAMPLES", "8"))
# The awkward schemas have many more operations (a dozen tables and views on each
# database): fewer examples per operation keep the three runs within ~2 minutes.
AWKWARD_EXAMPLES = int(os.environ.get("PYLIGHT_FUZZ_AWKWARD_EXAMPLES", "3"))
PHASES = os.environ.get("PYLIGHT_FUZZ_PHASES", "examples,coverage,fuzzing,stateful")
SEED = int(os.environ.get("PYLIGHT_FUZZ_SEED", "20240601"))

# The list operation's parameters depend on one another in ways OpenAPI cannot
# express: `after` must be a cursor from a next link made for the same `order`,
# and `after` with `offset` is refused, as is `all=true` without `format=csv` or
# with `limit`. So a list request whose parameters each
# fit their schema can still be a 400; every other operation must accept
# whatever its schema allows. An If-Match on a row's operation is a claim about the
# row's current state: one that does not hold is a 412 however well formed (as a
# conflict with the data is a 409), and it is checked before the values a body
# gives reach the database (RFC 9110 section 13.2.1), so a 412 also rejects a body
# the database would refuse.
CONFIG = """
# The awkward schemas' "Order Items" computes line_total = quantity * unit_price
# into a numeric(14,2): two values that each fit their own column can overflow it,
# and the database refuses the row (a 422 with its reason). OpenAPI cannot say so.
# Listed first: the first block that names an operation applies to it.
[[operations]]
include-operation-id-regex = "^(create|put|patch|filter_update)_Order.Items$"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "400", "401", "403", "404", "409", "412", "422", "429", "5xx"]

[[operations]]
include-operation-id-regex = "^list_"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]

[[operations]]
include-operation-id-regex = "^(get|put|patch|delete)_"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "412", "429", "5xx"]
checks.negative_data_rejection.expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "412", "415", "422", "428", "429", "5xx"]

# A write by filter (PATCH/DELETE on a collection) takes every filter as optional,
# but at least one is required: without any it is a 400.
[[operations]]
include-operation-id-regex = "^filter_(update|delete)_"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "409"]
"""


def _st() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if found is None:
        pytest.skip("the schemathesis command (st) is not installed")
    return found


def _schemathesis(server: Any, tmp_path: Path, max_examples: int) -> None:
    """Run every check and phase against ``server``; fail with what was found."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        _st(), "--config-file", str(config), "run", f"{server.base_url}/api/openapi.json",
        "--checks", "all",
        "--phases", PHASES,
        "--max-examples", str(max_examples),
        "--seed", str(SEED),
        "--generation-deterministic",
        "--workers", "1",
        "--request-timeout", "10",
        "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path / "report"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            cwd=tmp_path, env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, (
        f"schemathesis found problems (exit {result.returncode}):\n{output[-20000:]}\n"
        f"server log:\n{server.log()[-5000:]}")
    # The closing banner counts failures and errors ("No issues found" without any).
    # Warnings are about the run's own reach, not the server: operations that kept
    # answering 404 (random keys; a composite key no link can build) and links that
    # could not be followed (a create given an array answers {"items": [...]}).
    summary = output.strip().splitlines()[-1]
    assert "failure" not in summary and "error" not in summary, output[-5000:]
    # The stateful phase ran and followed the links (create, then get/update/delete).
    assert "Stateful" in output, output[-5000:]


def test_schemathesis_finds_nothing(live_server: Any, tmp_path: Path) -> None:
    _schemathesis(live_server, tmp_path, MAX_EXAMPLES)


def test_schemathesis_finds_nothing_on_awkward_schema(database: Any, tmp_path: Path) -> None:
    load_awkward(database)
    conf = write_config(tmp_path, database.url, seed=False)
    server = LiveServer(conf, free_port(), tmp_path).start()
    try:
        _schemathesis(server, tmp_path, AWKWARD_EXAMPLES)
    finally:
        server.stop()
