"""The app server's kernels, seen from outside: one per page, shut down once the page is gone, capped.

Servers of their own (`python -m app.serve`) run with short or long idle
timeouts and `--max_kernels 2`; pages are opened in headless Chromium. Kernels
are counted twice over: as the server's child processes in /proc, and through
the server's `GET /api/kernels/<id>` with the id each page was given (Voila
routes no list of kernels: it takes `/api/kernels` for a file, and refuses it).
"""
import json
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from app.kernel_manager import busy_message
from harness import start_server, stop_server

CULL_IDLE_SECONDS = 5
CULL_INTERVAL_SECONDS = 1
MAX_KERNELS = 2
PAGE_TIMEOUT_MS = 120_000  # the kernel imports TensorFlow and loads both models first
SHUTDOWN_DEADLINE_SECONDS = 60  # far past CULL_IDLE_SECONDS, far short of LONG_CULL_IDLE_SECONDS
LONG_CULL_IDLE_SECONDS = 600


def serve(models_dir: Path, data_dir: Path, tmp_path_factory, *, cull_idle_seconds: int):
    """Yields (process, url) of `python -m app.serve` with `cull_idle_seconds` and a cap of MAX_KERNELS."""
    log_path = tmp_path_factory.mktemp("kernels-server") / "serve.log"
    process, url = start_server(
        models_dir=models_dir, data_dir=data_dir, log_path=log_path,
        extra_args=["--cull_idle_seconds", str(cull_idle_seconds),
                    "--cull_interval_seconds", str(CULL_INTERVAL_SECONDS), "--max_kernels", str(MAX_KERNELS)])
    yield process, url
    stop_server(process)


@pytest.fixture(scope="module")
def server(models_dir, data_dir, tmp_path_factory):
    """A server that culls a kernel after CULL_IDLE_SECONDS without a page."""
    yield from serve(models_dir, data_dir, tmp_path_factory, cull_idle_seconds=CULL_IDLE_SECONDS)


@pytest.fixture(scope="module")
def slow_culling_server(models_dir, data_dir, tmp_path_factory):
    """A server whose culler waits LONG_CULL_IDLE_SECONDS: what shuts a kernel down sooner is the page."""
    yield from serve(models_dir, data_dir, tmp_path_factory, cull_idle_seconds=LONG_CULL_IDLE_SECONDS)


def kernel_pids(server_pid: int) -> set[int]:
    """Pids of the server's child processes that run ipykernel: its kernels, as the OS sees them."""
    pids = set()
    for stat_path in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may hold spaces; the parent pid is the second field after it.
            parent_pid = int(stat_path.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat_path.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError):  # the process ended while it was read
            continue
        if parent_pid == server_pid and b"ipykernel_launcher" in command:
            pids.add(int(stat_path.parent.name))
    return pids


def kernel_model(url: str, kernel_id: str) -> dict | None:
    """The server's model of a kernel ({id, execution_state, connections, last_activity, ...});
    None once the server no longer has it."""
    try:
        with urllib.request.urlopen(f"{url}api/kernels/{kernel_id}", timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def open_app(browser, url: str) -> tuple[Page, str]:
    """A page with the app rendered and its widgets connected to its kernel; returns it and the kernel's id."""
    page = browser.new_page()
    response = page.goto(url, timeout=PAGE_TIMEOUT_MS)
    assert response.status == 200, f"the page load got HTTP {response.status}: {page.inner_text('body')}"
    page.wait_for_selector(".soundsight-tabs", timeout=PAGE_TIMEOUT_MS)
    kernel_id = page.evaluate("JSON.parse(document.getElementById('jupyter-config-data').textContent).kernelId")
    deadline = time.monotonic() + 30
    while (kernel_model(url, kernel_id) or {}).get("connections", 0) < 1:
        assert time.monotonic() < deadline, f"the page never connected to its kernel {kernel_id}"
        time.sleep(0.2)
    return page, kernel_id


def wait_until_shut_down(server, kernel_ids: list[str], pids: set[int]) -> None:
    """Returns once the server has none of `kernel_ids` and none of `pids` runs; fails past the deadline."""
    process, url = server
    deadline = time.monotonic() + SHUTDOWN_DEADLINE_SECONDS
    while True:
        left = [kernel_id for kernel_id in kernel_ids if kernel_model(url, kernel_id)]
        left_pids = pids & kernel_pids(process.pid)
        if not left and not left_pids:
            return
        assert time.monotonic() < deadline, (
            f"still running after {SHUTDOWN_DEADLINE_SECONDS} s: kernels {left}, processes {sorted(left_pids)}")
        time.sleep(0.5)


def close_without_beacon(page: Page) -> None:
    """Closes the tab without running `beforeunload`, so Voila's shutdown beacon is never sent,
    as when a browser is killed or a page is left before its scripts have loaded."""
    page.close(run_before_unload=False)


def test_a_kernel_lives_while_its_page_is_open_and_is_culled_once_it_closes(browser, server):
    process, url = server
    assert kernel_pids(process.pid) == set(), "kernels were running before the first page"
    page, kernel_id = open_app(browser, url)
    pids = kernel_pids(process.pid)
    assert len(pids) == 1

    # Wait until the server's last_activity for the kernel is older than the timeout plus two culler
    # rounds (the server shares this machine's clock): an open page keeps its kernel however idle.
    deadline = time.monotonic() + SHUTDOWN_DEADLINE_SECONDS
    while True:
        model = kernel_model(url, kernel_id)
        assert model is not None, "the kernel of an open page was shut down"
        idle = datetime.now(timezone.utc) - datetime.fromisoformat(model["last_activity"])
        if idle.total_seconds() > CULL_IDLE_SECONDS + 2 * CULL_INTERVAL_SECONDS:
            break
        assert time.monotonic() < deadline, f"kernel {kernel_id} never went idle: {model}"
        time.sleep(0.5)
    assert kernel_model(url, kernel_id)["connections"] >= 1
    assert kernel_pids(process.pid) == pids

    close_without_beacon(page)
    wait_until_shut_down(server, [kernel_id], pids)
    assert kernel_pids(process.pid) == set()


def test_a_page_past_the_cap_is_refused_without_starting_a_kernel(browser, server, screenshot_dir):
    process, url = server
    assert kernel_pids(process.pid) == set(), "kernels of an earlier test are still running"
    pages, kernel_ids = [], []
    for _ in range(MAX_KERNELS):
        page, kernel_id = open_app(browser, url)
        pages.append(page)
        kernel_ids.append(kernel_id)
    pids = kernel_pids(process.pid)
    assert len(pids) == MAX_KERNELS

    refused = browser.new_page()
    response = refused.goto(url, timeout=PAGE_TIMEOUT_MS)
    assert response.status == 503
    expect(refused.locator("h1")).to_contain_text(busy_message(MAX_KERNELS))
    refused.screenshot(path=str(screenshot_dir / "busy-page.png"))
    assert kernel_pids(process.pid) == pids
    assert all(kernel_model(url, kernel_id) for kernel_id in kernel_ids)
    refused.close()

    for page in pages:
        close_without_beacon(page)
    wait_until_shut_down(server, kernel_ids, pids)
    assert kernel_pids(process.pid) == set()

    # With the abandoned kernels culled, a page gets a kernel again.
    page, kernel_id = open_app(browser, url)
    assert len(kernel_pids(process.pid)) == 1
    close_without_beacon(page)


def test_reloading_a_page_shuts_its_old_kernel_down_through_the_beacon(browser, slow_culling_server):
    process, url = slow_culling_server
    page, old_kernel_id = open_app(browser, url)
    old_pids = kernel_pids(process.pid)
    assert len(old_pids) == 1

    # The page unloads before the server answers the beacon, so its request is all the browser reports.
    with page.expect_request(lambda request: "/voila/api/shutdown/" in request.url) as beacon:
        page.reload(timeout=PAGE_TIMEOUT_MS)
    assert beacon.value.url.endswith(f"/voila/api/shutdown/{old_kernel_id}")
    page.wait_for_selector(".soundsight-tabs", timeout=PAGE_TIMEOUT_MS)
    wait_until_shut_down(slow_culling_server, [old_kernel_id], old_pids)
    assert len(kernel_pids(process.pid)) == 1  # the reloaded page's own
    page.close()
