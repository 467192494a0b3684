import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_server import FakeInThread  # noqa: E402


@pytest.fixture
def fake_server():
    fake = FakeInThread()
    yield fake
    fake.close()
