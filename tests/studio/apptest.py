"""The studio under Streamlit's AppTest, signed in through its own sign-in page (accounts made by
tests.processes.review_server have the password "<name>-password"). The engine is the one DERMAE_API_URL names."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "studio" / "app.py")


def signed_in(name: str, page: str, password: str | None = None) -> AppTest:
    """An AppTest signed in as `name` and switched to `page`: AppTest stays on the script it ran, where a browser
    lands on the default page."""
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(password or f"{name}-password")
    at.button[0].click().run()
    assert not at.exception, at.exception
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def table_with(at: AppTest, column: str):
    """The first dataframe on the page that has `column` (a pandas DataFrame)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def field(widgets, prefix: str):
    """The widget among `widgets` whose key starts with `prefix` (keys that carry a version after it)."""
    return next(w for w in widgets if w.key and w.key.startswith(prefix))
