import pytest
from pykka import ActorRegistry


@pytest.fixture(autouse=True)
def _stop_all():
    """No actor outlives its test."""
    yield
    ActorRegistry.stop_all(timeout=5)
