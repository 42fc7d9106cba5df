"""Drive the FiftyOne App in headless Chromium for tests/test_browser.py.

- :func:`require_chromium`: Debian's ``chromium`` + ``chromium-driver`` (``make browser`` installs
  them); missing, the test FAILS naming that target (it must never skip in CI).
- :class:`AppServer`: FiftyOne's App server (``python -m fiftyone.server.main``) in its own process
  on a free port, on the test session's database and plugins folder (the environment
  tests/conftest.py set), its log kept as an artifact; launched early, waited for when needed.
- :class:`Browser`: a Selenium Chrome session with explicit waits; :meth:`Browser.step` turns any
  failure into an AssertionError naming the step, with a screenshot, the page HTML and the
  server log's tail saved in the artifacts folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"  # gitignored; screenshots, page HTML, server log
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL_HINT = "run `make browser` (installs Debian's chromium and chromium-driver; `make test` depends on it)"


def require_chromium() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or AssertionError naming the make target."""
    chromium = shutil.which("chromium") or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    driver = shutil.which("chromedriver") or (CHROMEDRIVER if os.access(CHROMEDRIVER, os.X_OK) else None)
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path]
    if missing:
        raise AssertionError(f"{' and '.join(missing)} not found: {INSTALL_HINT}")
    try:
        import selenium  # noqa: F401
    except ImportError as err:
        raise AssertionError(f"the selenium package is missing ({err}): `make test` installs the pinned "
                             f"test requirements") from err
    return chromium, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """FiftyOne's App server on 127.0.0.1:<free port> in a child process (its own process group,
    ended by :meth:`stop`). ``env`` is added to this process's environment."""

    def __init__(self, log_path: Path, env: dict[str, str] | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen | None = None

    def launch(self) -> "AppServer":
        """Start the server process (returns at once: :meth:`wait_ready` waits for it)."""
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "fiftyone.server.main", "--port", str(self.port), "--address", "127.0.0.1"],
                env=self._env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until the server answers HTTP 200 on ``/``; AssertionError with its log if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise AssertionError(f"the App server exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the App server did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGTERM)  # our child's own group (start_new_session)
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()


class Browser:
    """Headless Chromium through Selenium; every UI action waits explicitly for its element."""

    def __init__(self, chromium: str, chromedriver: str, artifacts: Path, server: AppServer,
                 size: tuple[int, int] = (1600, 1000), timeout: float = 60.0):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-first-run", "--disable-extensions", f"--window-size={size[0]},{size[1]}"):
            options.add_argument(arg)
        service = Service(executable_path=chromedriver, log_output=str(artifacts / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)  # given paths: no driver download
        self.artifacts = artifacts
        self.server = server
        self.timeout = timeout
        self.shots: list[Path] = []
        self.timings: dict[str, float] = {}  # step -> seconds, written to timings.txt

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.driver.quit()

    # -- evidence ----------------------------------------------------------------------------

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)
        return path

    @contextlib.contextmanager
    def step(self, name: str):
        """Run one user step; on failure save ``failure-<name>.png`` + ``.html`` and raise an
        AssertionError naming the step, the artifacts and the server log's tail."""
        start = time.monotonic()
        try:
            yield
        except Exception as err:
            shot = html = None
            with contextlib.suppress(Exception):
                shot = self.screenshot(f"failure-{name}")
            with contextlib.suppress(Exception):
                html = self.artifacts / f"failure-{name}.html"
                html.write_text(self.driver.page_source)
            raise AssertionError(
                f"browser step '{name}' failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}\n"
                f"screenshot: {shot}\npage: {html}\nserver log {self.server.log_path}, tail:\n"
                f"{self.server.log_tail(2000)}") from err
        finally:
            self.timings[name] = time.monotonic() - start
            (self.artifacts / "timings.txt").write_text(
                "".join(f"{step}\t{seconds:.1f} s\n" for step, seconds in self.timings.items()))

    # -- waits -------------------------------------------------------------------------------

    def wait(self, condition, timeout: float | None = None, message: str = ""):
        """``condition(driver)`` until truthy; the App re-renders often, so a stale element is retried."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout or self.timeout, poll_frequency=0.25,
                             ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
                             ).until(condition, message)

    def visible(self, xpath: str, timeout: float | None = None):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        return self.wait(EC.visibility_of_element_located((By.XPATH, xpath)), timeout, f"not visible: {xpath}")

    def clickable(self, xpath: str, timeout: float | None = None):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        return self.wait(EC.element_to_be_clickable((By.XPATH, xpath)), timeout, f"not clickable: {xpath}")

    def gone(self, xpath: str, timeout: float | None = None) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as EC

        self.wait(EC.invisibility_of_element_located((By.XPATH, xpath)), timeout, f"still shown: {xpath}")

    def type_into(self, xpath: str, text: str, tries: int = 3) -> None:
        """Replace the value of the input at ``xpath`` with ``text``, as typed keys; typed again
        if a re-render of the form dropped keys."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.common.keys import Keys

        for attempt in range(tries):
            field = self.clickable(xpath)
            field.send_keys(Keys.CONTROL, "a")
            field.send_keys(text)
            try:
                self.wait(lambda d: self.value(xpath) == text, timeout=10)
                return
            except TimeoutException:
                if attempt == tries - 1:
                    raise AssertionError(f"typed {text!r} into {xpath}, it holds {self.value(xpath)!r}") from None

    def value(self, xpath: str) -> str | None:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.XPATH, xpath).get_attribute("value")

    def find_all(self, xpath: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.XPATH, xpath)


def data_cy(name: str) -> str:
    """XPath of the element the App marks ``data-cy="<name>"``."""
    return f"//*[@data-cy='{name}']"


def text_is(text: str, tag: str = "*") -> str:
    """XPath of a ``tag`` whose own normalised text is ``text``."""
    return f"//{tag}[normalize-space()='{text}']"
