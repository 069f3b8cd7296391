import pytest

from tests.studio.apptest import signed_in


@pytest.fixture
def app(server, monkeypatch, request):
    """app(name, page) -> the studio signed in as `name` on `page` (default: the module's PAGE, else the overview),
    against the test module's real engine `server`."""
    monkeypatch.setenv("DERMAE_API_URL", server.url)
    return lambda name, page=None: signed_in(name, page or getattr(request.module, "PAGE", "pages/overview.py"))
