"""The session's `vlm-service serve` child process (see fc_helpers.py)."""

from __future__ import annotations

import pytest

from tests.first_contact.fc_helpers import start_serve, stop


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    server = start_serve(tmp_path_factory.mktemp("served"))
    yield server
    stop(server)
