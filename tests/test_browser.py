"""The pages in a real browser: Debian's Chromium, headless, driven by Playwright against a
live uvicorn server on 127.0.0.1. Skipped (with the reason) only where Chromium is absent
or cannot start; `make chromium` installs it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spermhead.config import PreprocessConfig
from spermhead.data.synthetic import render_head
from spermhead.preprocess.acquisition import describe, fit_ranges
from spermhead.preprocess.align import canonicalize
from spermhead.serving.app import create_app
from spermhead.serving.predictor import untrained_bundle

pytestmark = pytest.mark.browser

CLASSES = ("normal", "tapered", "pyriform", "amorphous")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("SPERMHEAD_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    for k, label in enumerate(CLASSES):
        (root / label).mkdir()
        for i in range(2):
            rgb, _ = render_head(label, "hushem", np.random.default_rng(10 * k + i))
            Image.fromarray(rgb).save(root / label / f"{label}_{i}.png")
    return root


@pytest.fixture(scope="module")
def page_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = untrained_bundle(tmp_path_factory.mktemp("bundle"), "spermnet", classes=CLASSES,
                              image_size=32, width=8)
    # the range of HuSHeM-style heads, as a bundle trained on them records it
    meta = json.loads((bundle / "model.json").read_text())
    cfg = PreprocessConfig(image_size=32)
    meta["input_ranges"] = fit_ranges([describe(canonicalize(render_head(CLASSES[i % 4], "hushem",
                                                                         np.random.default_rng(1000 + i))[0], cfg))
                                       for i in range(40)])
    # and its held-out confusion and share check, so the page can adjust and star a sample's shares
    meta["confusions"] = {"accuracy": [[60, 0, 0, 40], [0, 95, 5, 0], [0, 5, 95, 0], [0, 0, 5, 95]]}
    meta["share_checks"] = {"accuracy": {
        "heads": [50, 200], "samples": 400, "level": 0.95,
        "error": {"counted": [0.2, 0.01, 0.01, 0.2], "adjusted": [0.05, 0.02, 0.02, 0.05]},
        "held": {"counted": [0.3, 1, 1, 0.3], "adjusted": [0.95] * 4},
        "extra_sd": {"counted": [0.15, 0, 0, 0.15], "adjusted": [0] * 4},
        "closer": ["adjusted", "counted", "counted", "adjusted"]}}
    meta["run"] = {"dataset": "synthetic-heads", "metrics": {"accuracy": 0.9}, "synthetic": True}
    (bundle / "model.json").write_text(json.dumps(meta))
    return bundle


@pytest.fixture(scope="module")
def server(page_bundle: Path, images: Path) -> Iterator[str]:
    with serving(create_app(page_bundle, review_source=images)) as url:
        yield url


@contextmanager
def serving(app: object) -> Iterator[str]:
    """`app` on a live uvicorn server in a thread, for as long as the block runs."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium not found at /usr/bin/chromium (apt-get install chromium, or `make chromium`)")
    from playwright.sync_api import Error, sync_playwright

    with sync_playwright() as pw:
        try:
            browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        except Error as exc:
            pytest.skip(f"Chromium at {exe} could not be launched: {str(exc).splitlines()[0]}")
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        pg = context.new_page()
        pg.set_default_timeout(20_000)
        yield pg
        browser.close()


def screenshot_dir() -> Path:
    # SPERMHEAD_SCREENSHOTS keeps the pictures for a human to look at; default: pytest's tmp.
    return Path(os.environ.get("SPERMHEAD_SCREENSHOTS", "")) if os.environ.get("SPERMHEAD_SCREENSHOTS") else None


def test_the_api_docs_page_lists_the_endpoints(page, server: str) -> None:
    # FastAPI writes OpenAPI 3.1, which Swagger UI before version 5 refuses to draw
    page.goto(server + "/docs")
    page.wait_for_selector(".opblock-summary-path:has-text('/api/predict')")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/api/predict", "/api/composition", "/api/model", "/health"} <= {p.strip() for p in paths}
    assert "Unable to render" not in page.content()


def test_the_pages_work_where_a_proxy_serves_them_under_a_path(page, page_bundle: Path, images: Path) -> None:
    """A lab's reverse proxy may put the server at https://host/spermhead/: every page, image and
    API call stays under that path."""
    web = create_app(page_bundle, review_source=images)

    async def proxied(scope: dict, receive: object, send: object) -> None:
        """What nginx's `location /lab/ { proxy_pass http://app/; }` does: the path without /lab,
        and the app not told of it (no --root-path)."""
        if scope["type"] == "http":
            if not scope["path"].startswith("/lab/"):
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            scope = {**scope, "path": scope["path"][len("/lab"):], "raw_path": scope["raw_path"][len(b"/lab"):]}
        await web(scope, receive, send)

    asked: list[str] = []

    def record(request: object) -> None:
        asked.append(request.url)

    page.on("request", record)
    try:
        with serving(proxied) as url:
            page.goto(url + "/lab/")
            page.wait_for_selector("#model-info:has-text('spermnet')")
            page.set_input_files("#file-input", [str(images / "normal" / "normal_0.png")])
            page.wait_for_selector(".card.result .cls")
            page.click("nav a:has-text('Review')")
            page.wait_for_function("document.getElementById('review-image')?.naturalWidth > 0")
            page.click("nav a:has-text('API')")
            page.wait_for_selector(".opblock-summary-path:has-text('/api/predict')")
    finally:
        page.remove_listener("request", record)
    served = [u for u in asked if u.startswith(url)]
    assert all(u.startswith(url + "/lab/") for u in served), [u for u in served if "/lab/" not in u]
    assert any("/lab/api/predict" in u for u in served) and any("/lab/api/review/image/" in u for u in served)


def test_classify_page_shows_class_and_probability(page, server: str, images: Path, tmp_path: Path) -> None:
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    assert "run accuracy 90.0% on synthetic heads" in page.locator("#model-info").inner_text()
    page.set_input_files("#file-input", [str(images / "normal" / "normal_0.png"),
                                         str(images / "tapered" / "tapered_1.png")])
    page.wait_for_function("document.querySelectorAll('.card.result').length === 2")
    card = page.locator(".card.result").first
    assert card.locator(".cls").inner_text().strip().lower() in CLASSES
    assert card.locator(".verdict .pct").inner_text().strip().endswith("%")
    assert card.locator(".bars .val").count() == len(CLASSES)
    crop = card.locator("img[alt='aligned crop']")
    assert crop.get_attribute("src").startswith("data:image/png;base64,")
    assert card.locator("img[alt='Grad-CAM overlay']").count() == 1
    out = (screenshot_dir() or tmp_path) / "classify.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000


def test_the_image_picker_is_reached_from_the_keyboard(page, server: str) -> None:
    """Tab reaches the file input (a hidden one could be opened by mouse only), and its label
    shows the focus."""
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "file-input":
            break
    assert page.evaluate("document.activeElement.id") == "file-input"
    outline = page.evaluate("getComputedStyle(document.querySelector('label[for=file-input]')).outlineStyle")
    assert outline == "solid"


def test_classify_page_marks_an_image_unlike_the_training_images(page, server: str, images: Path,
                                                                  tmp_path: Path) -> None:
    other = tmp_path / "other_lab.png"  # a SCIAN-style head: small, blurred, filling its crop
    Image.fromarray(render_head("normal", "scian", np.random.default_rng(0))[0]).save(other)
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    page.set_input_files("#file-input", [str(images / "normal" / "normal_0.png"), str(other)])
    page.wait_for_function("document.querySelectorAll('.card.result').length === 2")
    cards = page.locator(".card.result")  # newest first: find each by its file name
    like, unlike = cards.filter(has_text="normal_0.png"), cards.filter(has_text="other_lab.png")
    assert like.locator(".badge.unlike").count() == 0
    assert unlike.locator(".badge.unlike").inner_text().strip().lower() == "unlike training images"
    assert "px long (training" in unlike.locator(".unlike-reasons").inner_text()
    if screenshot_dir():
        page.screenshot(path=str(screenshot_dir() / "classify-unlike.png"), full_page=True)


def test_classify_page_shows_a_bad_file_as_an_error_card(page, server: str, tmp_path: Path) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    page.goto(server + "/")
    page.set_input_files("#file-input", str(bad))
    page.wait_for_selector(".card.error")
    # the card's title names the file; its message says what is wrong, without the name again
    assert page.locator(".card.error h3").inner_text() == "notes.png"
    assert page.locator(".card.error .err").inner_text().startswith("not a supported image")


def test_review_page_steps_with_buttons_and_keys(page, server: str, tmp_path: Path) -> None:
    page.goto(server + "/review")
    page.wait_for_selector("#pos:has-text('1 / 8')")

    def state() -> tuple[str, str, str, str]:
        return (page.locator("#pos").inner_text(), page.locator("#item-name").inner_text(),
                page.locator("#true-label").inner_text(), page.locator("#pred-label").inner_text())

    first = state()
    assert first[2].lower() in CLASSES and first[3].lower() in CLASSES
    verdict = page.locator("#pred-label").get_attribute("class")
    assert ("right" in verdict) == (first[2] == first[3]) and ("wrong" in verdict) == (first[2] != first[3])
    # said in words as well as by colour, and the position is announced to screen readers
    assert page.locator("#verdict-mark").inner_text() == ("✓ right" if first[2] == first[3] else "✗ wrong")
    assert page.locator("#pos").get_attribute("aria-live") == "polite"
    page.keyboard.press("Alt+ArrowRight")  # the browser's own keys are left to the browser
    page.keyboard.press("Control+e")
    assert state() == first and not page.locator("#errors-only").is_checked()
    page.wait_for_function("document.getElementById('review-image').naturalWidth > 0")

    page.click("#next")
    second = state()
    assert second[0] == "2 / 8" and second[1] != first[1]
    page.click("#prev")
    assert state() == first
    page.keyboard.press("ArrowRight")
    assert state() == second
    page.keyboard.press("ArrowLeft")
    assert state() == first
    assert page.locator("#prev").is_disabled()  # no wrapping past the first image
    assert page.locator("#stat-running").inner_text().endswith("%")
    out = (screenshot_dir() or tmp_path) / "review.png"
    page.screenshot(path=str(out), full_page=True)

    errors = int(page.locator("#stat-errors").inner_text())
    page.check("#errors-only")
    if errors:
        page.wait_for_selector(f"#pos:has-text('/ {errors}')")
        assert "wrong" in page.locator("#pred-label").get_attribute("class")
        # the filter leaves the running accuracy as the unfiltered view gives it at the same image
        for _ in range(errors - 1):  # the last error, with the most images before it
            page.click("#next")
        name, filtered = page.locator("#item-name").inner_text(), page.locator("#stat-running-k").inner_text()
        page.uncheck("#errors-only")
        while page.locator("#item-name").inner_text() != name:
            page.click("#next")
        assert page.locator("#stat-running-k").inner_text() == filtered
    else:
        page.wait_for_selector("#empty:has-text('No errors')")
        assert page.locator("#layout").is_hidden()


def always_amorphous(tmp_path: Path) -> tuple[Path, Path]:
    """(a bundle that answers "amorphous" to everything, a review folder of two amorphous heads
    then two normal ones, the review set's order)."""
    bundle = untrained_bundle(tmp_path / "bundle", "spermnet", classes=CLASSES, image_size=32, width=8)
    meta = json.loads((bundle / "model.json").read_text())
    always = [0.0, 0.0, 0.0, 50.0]  # CLASSES[3] is amorphous
    meta["class_bias"], meta["operating_points"] = always, {"accuracy": always, "balanced": always}
    (bundle / "model.json").write_text(json.dumps(meta))
    for label in ("amorphous", "normal"):
        (tmp_path / "set" / label).mkdir(parents=True)
        for i in range(2):
            rgb, _ = render_head(label, "hushem", np.random.default_rng(900 + i))
            Image.fromarray(rgb).save(tmp_path / "set" / label / f"{label}_{i}.png")
    return bundle, tmp_path / "set"


def test_review_running_accuracy_counts_every_image_up_to_the_current_one(page, tmp_path: Path) -> None:
    # the first error is the third image, after two right answers
    bundle, review_set = always_amorphous(tmp_path)
    with serving(create_app(bundle, review_source=review_set)) as url:
        page.goto(url + "/review")
        page.wait_for_selector("#pos:has-text('1 / 4')")
        page.check("#errors-only")
        page.wait_for_selector("#pos:has-text('1 / 2')")
        # over the errors alone it would read 0/1
        assert page.locator("#stat-running-k").inner_text() == "running accuracy · 2/3 so far"


def test_review_page_marks_an_image_the_model_trained_on(page, tmp_path: Path) -> None:
    from spermhead.data.duplicates import signatures
    from spermhead.serving.bundle import save_training_signatures

    bundle, review_set = always_amorphous(tmp_path)
    save_training_signatures(bundle, signatures([review_set / "amorphous" / "amorphous_0.png"]))
    (review_set / "small").mkdir()  # a class the model lacks: shown, not scored
    Image.fromarray(render_head("small", "hushem", np.random.default_rng(950))[0]).save(review_set / "small" / "s.png")
    with serving(create_app(bundle, review_source=review_set)) as url:
        page.goto(url + "/review")
        page.wait_for_selector("#pos:has-text('1 / 5')")
        assert page.locator("#item-seen").is_visible() and "1 of 5 images" in page.locator("#note").inner_text()
        # 2 of the 4 scored right; of the three scored and not trained on, one (amorphous_1) is right
        assert page.locator("#stat-overall").inner_text() == "50.0%"
        assert page.locator("#stat-overall-k").inner_text() == "overall accuracy · 33.3% on the 3 not seen in training"
        page.click("#next")
        page.wait_for_selector("#pos:has-text('2 / 5')")
        assert page.locator("#item-seen").is_hidden()


def test_the_pages_say_why_an_image_or_the_server_is_missing(page, page_bundle: Path, tmp_path: Path) -> None:
    """A review image gone since the set was scored shows the server's reason; a Grad-CAM that
    could not be drawn says so on its card; a server that is gone is said to be."""
    review_set = tmp_path / "set"
    for label in CLASSES:
        (review_set / label).mkdir(parents=True)
        Image.fromarray(render_head(label, "hushem", np.random.default_rng(7))[0]).save(review_set / label / "a.png")
    with serving(create_app(page_bundle, review_source=review_set)) as url:
        upload = tmp_path / "upload.png"
        (review_set / CLASSES[1] / "a.png").rename(upload)
        for label in CLASSES:  # every item's file gone, the first one's too
            (review_set / label / "a.png").unlink(missing_ok=True)
        page.goto(url + "/review")
        page.wait_for_selector("#image-box .noimg")
        assert "a.png" in page.locator("#image-box .noimg").inner_text()

        import httpx

        # the server's answer, as if drawing had failed
        answer = httpx.post(url + "/api/predict?gradcam=true",
                            files={"files": ("upload.png", upload.read_bytes(), "image/png")}).json()
        for row in answer["results"]:
            row.pop("gradcam", None)
            row["gradcam_error"] = "RuntimeError: no gradient"
        page.route("**/api/predict*", lambda route: route.fulfill(json=answer))
        page.goto(url + "/")
        page.set_input_files("#file-input", str(upload))
        page.wait_for_selector(".card.result")
        assert "RuntimeError: no gradient" in page.locator(".card.result").inner_text()
        page.unroute("**/api/predict*")
        page.route("**/api/review", lambda route: route.abort())  # the server gone after the page came
        page.goto(url + "/review")
        page.wait_for_selector("#empty:has-text('could not be reached')")
        page.unroute("**/api/review")


def test_review_page_without_a_review_set_shows_no_viewer(page, tmp_path: Path) -> None:
    bundle = untrained_bundle(tmp_path / "bundle", "spermnet", classes=CLASSES, image_size=32, width=8)
    with serving(create_app(bundle)) as url:
        page.goto(url + "/review")
        page.wait_for_selector("#empty:has-text('no review set')")
        assert page.locator("#layout").is_hidden()  # not an empty viewer with live-looking buttons


def head_files(folder: Path, n: int, seed: int) -> list[str]:
    """`n` HuSHeM-style heads as PNG files, the classes in turn."""
    files = []
    for i in range(n):
        path = folder / f"head_{i}.png"
        Image.fromarray(render_head(CLASSES[i % 4], "hushem", np.random.default_rng(seed + i))[0]).save(path)
        files.append(str(path))
    return files


def test_classify_page_leaves_images_with_no_head_out_of_the_shares(page, server: str, tmp_path: Path) -> None:
    files = head_files(tmp_path, 10, seed=700)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (120, 120), (200, 200, 200)).save(blank)  # a frame with nothing in it
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    page.set_input_files("#file-input", [str(blank), *files[:9]])
    page.wait_for_selector("#status:has-text('10 classified')")
    assert "no head found in 1 (not in the class shares)" in page.locator("#status").inner_text()
    assert page.locator(".badge.unaligned:has-text('no head found')").count() == 1
    assert page.locator("#sample").is_hidden()  # nine heads and a blank frame are not yet ten heads
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    page.set_input_files("#file-input", [str(broken), *files[9:]])
    page.wait_for_selector("#sample table.shares")
    assert "all 10 heads on this page" in page.locator("#sample h2").inner_text()
    # the status line counts the whole page, as the shares do, not the last upload alone
    page.wait_for_selector("#status:has-text('11 classified on this page, 1 could not be used')")
    assert "no head found in 1" in page.locator("#status").inner_text()


def test_classify_page_gives_the_class_shares_of_all_its_heads(page, server: str, images: Path,
                                                               tmp_path: Path) -> None:
    files = head_files(tmp_path, 10, seed=500)  # predict's smallest sample
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    page.set_input_files("#file-input", files[:6])
    page.wait_for_selector("#status:has-text('6 classified')")  # set once the page has settled
    assert page.locator(".card.result").count() == 6
    assert page.locator("#sample").is_hidden()  # six heads are not yet a sample
    page.set_input_files("#file-input", files[6:])
    page.wait_for_selector("#sample table.shares")
    assert "all 10 heads on this page" in page.locator("#sample h2").inner_text()
    rows = page.locator("#sample table.shares tr")
    assert rows.count() == 1 + len(CLASSES)
    assert "adjusted for the model's errors" in rows.nth(0).inner_text()
    counts = [int(rows.nth(1 + i).locator("td").nth(1).inner_text()) for i in range(len(CLASSES))]
    shown = [card.inner_text().strip().lower() for card in page.locator(".card.result .cls").all()]
    assert sum(counts) == 10 and counts == [shown.count(c) for c in CLASSES]
    # each class's row stars the estimate the bundle's check found closer
    normal = rows.nth(1).locator("td")
    assert "★" in normal.nth(3).inner_text() and "★" not in normal.nth(2).inner_text()
    tapered = rows.nth(2).locator("td")
    assert "★" in tapered.nth(2).inner_text() and "★" not in tapered.nth(3).inner_text()
    assert "closer of the two in this model's check" in page.locator("#sample").inner_text()
    out = (screenshot_dir() or tmp_path) / "classify-sample.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out))
    page.click("#new-sample")  # the next sample starts from an empty page
    assert page.locator("#sample").is_hidden() and page.locator(".card").count() == 0
    page.set_input_files("#file-input", files[:6])
    page.wait_for_selector("#status:has-text('6 classified')")
    assert page.locator(".card.result").count() == 6 and page.locator("#sample").is_hidden()


def test_new_sample_pressed_during_an_upload_drops_the_answers_still_out(page, server: str, tmp_path: Path) -> None:
    files = head_files(tmp_path, 26, seed=700)
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    page.set_input_files("#file-input", files[:10])
    page.wait_for_selector("#sample:has-text('all 10 heads')")  # a settled page of one sample
    held = []  # the next upload's first batch is held until New sample has been pressed
    page.route("**/api/predict**", lambda route: route.continue_() if len(held) else held.append(route))
    page.set_input_files("#file-input", files[10:])  # 16 files: two batches of 8, one after the other
    while not held:
        page.wait_for_timeout(20)
    page.click("#new-sample")
    held[0].continue_()
    page.wait_for_timeout(1500)  # time enough for the held batch to come back and the next to go
    # none of the drop joins the new sample: not the batch that was out, nor the ones after it
    assert page.locator(".card").count() == 0 and page.locator("#sample").is_hidden()
    assert page.locator("#status").inner_text() == "" and page.locator("#new-sample").is_hidden()
    assert page.evaluate("document.activeElement.id") == "file-input"  # not the top of the page
    # below the heads a sample needs, the page can still be cleared
    page.set_input_files("#file-input", files[:3])
    page.wait_for_selector("#status:has-text('3 classified')")
    assert page.locator("#sample").is_hidden() and page.locator("#new-sample").is_visible()
    page.click("#new-sample")
    assert page.locator(".card").count() == 0
    # New sample while the class shares are on their way: they are not the cleared page's
    shares = []
    page.route("**/api/composition", lambda route: shares.append(route))
    page.set_input_files("#file-input", files[:10])
    while not shares:
        page.wait_for_timeout(20)
    page.click("#new-sample")
    shares[0].continue_()
    page.wait_for_timeout(500)
    assert page.locator("#sample").is_hidden() and page.locator("#status").inner_text() == ""
    page.unroute("**/api/predict**")
    page.unroute("**/api/composition")  # or the later tests' shares would be held for ever


def test_cards_keep_the_order_of_the_files_each_drop_on_top(page, server: str, tmp_path: Path) -> None:
    files = head_files(tmp_path, 12, seed=800)
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    page.set_input_files("#file-input", files[:10])  # two batches of the page: 8, then 2
    page.wait_for_function("document.querySelectorAll('.card.result').length === 10")
    page.set_input_files("#file-input", files[10:])
    page.wait_for_function("document.querySelectorAll('.card.result').length === 12")
    shown = page.locator(".card h3").all_inner_texts()
    assert shown == [Path(f).name for f in files[10:] + files[:10]], shown


def test_the_classify_page_fits_a_phone_screen(page, server: str, images: Path) -> None:
    page.set_viewport_size({"width": 320, "height": 700})
    try:
        page.goto(server + "/")
        page.wait_for_selector("#model-info:has-text('spermnet')")
        page.set_input_files("#file-input", [str(images / "normal" / "normal_0.png")])
        page.wait_for_selector(".card.result img[alt='Grad-CAM overlay']")
        assert page.evaluate("document.documentElement.scrollWidth") <= 320  # no sideways scrolling
        right = page.evaluate("document.querySelector('.card.result').getBoundingClientRect().right")
        assert right <= 320
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_the_report_fits_a_phone_screen(page, tmp_path: Path) -> None:
    """Wide tables scroll inside themselves, so the page itself never scrolls sideways."""
    from spermhead.data.samples import Sample, SampleTable
    from spermhead.evaluation.metrics import cv_metrics
    from spermhead.evaluation.plots import write_plots
    from spermhead.evaluation.predictions import Predictions
    from spermhead.evaluation.report import write_report

    classes = ["normal", "tapered", "pyriform", "small", "amorphous"]
    table = SampleTable("t", [Sample(f"s{i}", Path("p"), classes[i % 5], "a") for i in range(100)], classes)
    pred = Predictions.from_model_output([s.id for s in table.samples],
                                         np.random.default_rng(0).dirichlet(np.ones(5), size=100), table,
                                         folds=[i % 5 for i in range(100)])
    report = write_report(tmp_path, {"dataset": "scian-pa", "model": {"name": "spermnet"},
                                     "protocol": {"kind": "cv", "folds": 5}},
                          cv_metrics(pred, n_boot=200), write_plots(pred, [], tmp_path / "plots"))
    page.set_viewport_size({"width": 375, "height": 800})
    try:
        page.goto(report.as_uri())
        widest = page.evaluate("Math.max(...[...document.querySelectorAll('table')].map(t => t.scrollWidth))")
        assert widest > 375  # the per-class tables are wider than the phone...
        assert page.evaluate("document.documentElement.scrollWidth") <= 375  # ...but scroll on their own
    finally:
        page.set_viewport_size({"width": 1280, "height": 900})


def test_the_same_file_given_twice_is_one_head_and_a_failed_one_may_be_given_again(page, server: str,
                                                                                   tmp_path: Path) -> None:
    files = head_files(tmp_path, 10, seed=900)
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    page.set_input_files("#file-input", files)
    page.wait_for_selector("#sample:has-text('all 10 heads')")
    page.set_input_files("#file-input", files[:4])  # picked again: the same heads, not four more
    page.wait_for_selector("#status:has-text('4 files already on this page left out')")
    assert page.locator(".card").count() == 10 and "all 10 heads" in page.locator("#sample h2").inner_text()
    assert page.locator("#status").inner_text().startswith("10 classified on this page")
    # two heads with one name, size and time (image_001.BMP of two class folders) are two heads
    twins = []
    for k, folder in enumerate(("01_Normal", "02_Tapered")):
        (tmp_path / folder).mkdir()
        path = tmp_path / folder / "image_001.bmp"
        Image.fromarray(render_head(CLASSES[k], "hushem", np.random.default_rng(990 + k))[0]).save(path)
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
        twins.append(str(path))
    assert os.path.getsize(twins[0]) == os.path.getsize(twins[1])
    page.set_input_files("#file-input", twins[:1])
    page.wait_for_selector("#status:has-text('11 classified on this page')")
    page.set_input_files("#file-input", twins[1:])
    page.wait_for_selector("#status:has-text('12 classified on this page')")
    assert "4 files already on this page left out" in page.locator("#status").inner_text()
    # a file that failed (here the server's answer was no JSON, as a proxy's error page) is no repeat
    page.click("#new-sample")
    page.route("**/api/predict**", lambda route: route.fulfill(status=200, content_type="text/html",
                                                                body="<html>gateway timeout</html>"))
    try:
        page.set_input_files("#file-input", files[:3])
        page.wait_for_selector("#status:has-text('0 classified on this page, 3 could not be used')")
        assert page.locator(".card.error").count() == 3
        assert "unreadable answer from the server" in page.locator(".card.error .err").first.inner_text()
    finally:
        page.unroute("**/api/predict**")
    page.set_input_files("#file-input", files[:3])
    page.wait_for_selector("#status:has-text('3 classified on this page, 3 could not be used')")
    assert "left out" not in page.locator("#status").inner_text()


def test_batches_stay_within_the_servers_request_limit(page, server: str, tmp_path: Path) -> None:
    files = head_files(tmp_path, 7, seed=950)
    sizes = [Path(f).stat().st_size for f in files]
    room = max(sizes) * 2.5  # two or three heads to a request, not eight
    limit_mb = (room + 64 * 1024) / (1 << 20)  # the page keeps 64 kB for the form itself
    expected, size = 1, 0  # requests the sizes call for, batch by batch
    for n in sizes:
        if size and size + n > room:
            expected, size = expected + 1, 0
        size += n

    def model(route: object) -> None:
        body = route.fetch().json()
        body["limits"]["max_request_mb"] = limit_mb
        route.fulfill(json=body)

    sent: list[str] = []
    page.route("**/api/model", model)

    def record(request: object) -> None:
        if "/api/predict" in request.url:
            sent.append(request.url)

    page.on("request", record)
    try:
        page.goto(server + "/")
        page.wait_for_selector("#model-info:has-text('spermnet')")
        page.set_input_files("#file-input", files)
        page.wait_for_selector("#status:has-text('7 classified')")
    finally:
        page.unroute("**/api/model")
        page.remove_listener("request", record)
    assert expected >= 3 and len(sent) == expected, (sizes, sent)  # not the 7 in one request of before


def test_an_older_class_shares_answer_does_not_replace_a_newer_one(page, server: str, tmp_path: Path) -> None:
    files = head_files(tmp_path, 15, seed=980)
    held: list[object] = []
    page.route("**/api/composition", lambda route: route.continue_() if held else held.append(route))
    try:
        page.goto(server + "/")
        page.wait_for_selector("#model-info:has-text('spermnet')")
        page.set_input_files("#file-input", files[:10])
        while not held:  # the first ten heads' shares are answered late
            page.wait_for_timeout(20)
        page.set_input_files("#file-input", files[10:])
        page.wait_for_selector("#sample:has-text('all 15 heads')")
        held[0].continue_()
        page.wait_for_timeout(1000)
    finally:
        page.unroute("**/api/composition")
    assert "all 15 heads" in page.locator("#sample h2").inner_text()
    assert page.locator("#status").inner_text().startswith("15 classified on this page")


def test_errors_only_with_no_errors_leaves_the_way_back(page, server: str) -> None:
    def all_right(route: object) -> None:
        body = route.fetch().json()
        for it in body["items"]:
            it["pred"], it["correct"] = it["true"], True
        route.fulfill(json=body)

    page.route("**/api/review", all_right)
    try:
        page.goto(server + "/review")
        page.wait_for_selector("#pos:has-text('1 / 8')")
        version = page.evaluate("fetch('api/review').then((r) => r.json()).then((d) => d.version)")
        assert version and page.locator("#review-image").get_attribute("src").endswith(f"?v={version}")
        page.check("#errors-only")
        page.wait_for_selector("#empty:has-text('No errors')")
        page.uncheck("#errors-only", timeout=2000)  # still in reach, by mouse and keyboard
        page.wait_for_selector("#pos:has-text('1 / 8')")
    finally:
        page.unroute("**/api/review")


def test_new_sample_frees_the_previews_of_the_uploaded_images(page, server: str, tmp_path: Path) -> None:
    files = head_files(tmp_path, 3, seed=990)
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    page.evaluate("""() => { window.freed = []; const free = URL.revokeObjectURL;
                             URL.revokeObjectURL = (u) => { window.freed.push(u); free(u); }; }""")
    page.set_input_files("#file-input", files)
    page.wait_for_selector("#status:has-text('3 classified')")
    shown = page.eval_on_selector_all(".card.result img[alt='uploaded image']", "imgs => imgs.map(i => i.src)")
    page.click("#new-sample")
    assert len(shown) == 3 and sorted(page.evaluate("window.freed")) == sorted(shown)


def test_dropped_files_and_folders_are_read_as_predict_reads_a_folder(page, server: str, tmp_path: Path) -> None:
    files = head_files(tmp_path, 3, seed=1100)
    page.goto(server + "/")
    page.wait_for_selector("#model-info:has-text('spermnet')")
    # A drop as the browser hands it over: its items' entries, here a folder (with a subfolder, a
    # hidden file, a note and a broken link; read a batch at a time) beside a loose hidden file.
    # A script cannot make real entries, so they are built with the same interface.
    drop = """async ([bodies, delay]) => {
        const png = (i) => (name) => new File([new Uint8Array(bodies[i])], name, { type: "image/png" });
        const file = (name, made) => ({ name, isFile: true,
            file: (ok, fail) => setTimeout(() => (made ? ok(made(name)) : fail(new Error("gone"))), delay) });
        const folder = (name, children) => {
            let at = 0;  // two entries a batch, then an empty one, as readEntries gives them
            return { name, isFile: false, children, createReader: () => ({
                readEntries: (ok) => { ok(children.slice(at, at + 2)); at += 2; } }) };
        };
        const place = (en, above) => {  // each entry's path from the drop, as the browser gives it
            en.fullPath = `${above}/${en.name}`;
            (en.children || []).forEach((child) => place(child, en.fullPath));
        };
        const slide = folder("slide 3", [file("b.png", png(1)), file(".DS_Store", png(0)),
                                         file("notes.txt", png(0)), file("SYNTHETIC.txt", png(0)),
                                         folder("day 2", [file("c.png", png(2))]), file("a.png", png(0)),
                                         file("z.png", null), { name: "locked", isFile: false, createReader: () => ({
                                             readEntries: (ok, fail) => fail(new Error("denied")) }) }]);
        const entries = [slide, file(".scan.png", png(0))];
        entries.forEach((en) => place(en, ""));
        const ev = new Event("drop", { bubbles: true, cancelable: true });
        Object.defineProperty(ev, "dataTransfer", { value: {
            items: entries.map((en) => ({ webkitGetAsEntry: () => en })), files: [] } });
        document.getElementById("dropzone").dispatchEvent(ev);
    }"""
    bodies = [list(Path(f).read_bytes()) for f in files]
    page.evaluate(drop, [bodies, 0])
    page.wait_for_selector("#status:has-text('4 classified on this page')")
    # in name order, the subfolder in its place, each card named by its path from the drop (a
    # folder's subfolders may hold files of one name); a hidden file dropped by itself is tried, as
    # predict tries a file it is given; in the folder, the hidden one and SYNTHETIC.txt pass silently
    in_folder = ["slide 3/a.png", "slide 3/b.png", "slide 3/day 2/c.png"]
    assert page.locator(".card h3").all_inner_texts() == [*in_folder, ".scan.png"]
    status = page.locator("#status").inner_text()
    # the broken link and the folder that cannot be listed are counted, not the whole drop lost
    assert "2 could not be used" in status and "1 file in dropped folders skipped for their suffix" in status
    # New sample while a slow folder is still being read: none of it joins the new sample
    page.click("#new-sample")
    page.evaluate(drop, [bodies, 200])
    page.wait_for_selector("#status:has-text('reading the dropped files')")
    page.evaluate("newSample()")
    page.wait_for_timeout(2500)
    assert page.locator(".card").count() == 0 and page.locator("#status").inner_text() == ""
    # a file picked while a slow folder is read: the page does not look settled until both are
    page.evaluate(drop, [bodies, 700])
    page.wait_for_selector("#status:has-text('reading the dropped files')")
    page.set_input_files("#file-input", files[2:])  # head_2.png
    page.wait_for_selector(".card.result h3:has-text('head_2.png')")
    assert "classified on this page" not in page.locator("#status").inner_text()
    page.wait_for_selector("#status:has-text('5 classified on this page')")
    # ... and the cards keep the order of the drops, the quicker later one on top
    assert page.locator(".card h3").all_inner_texts() == ["head_2.png", *in_folder, ".scan.png"]
    # a plain drop of files (no entries, as a script's DataTransfer gives) is classified as given
    page.click("#new-sample")
    page.evaluate("""async (bodies) => {
        const dt = new DataTransfer();
        bodies.forEach((b, i) => dt.items.add(new File([new Uint8Array(b)], `dropped_${i}.png`, { type: "image/png" })));
        document.getElementById("dropzone").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true }));
    }""", bodies[:2])
    page.wait_for_selector("#status:has-text('2 classified on this page')")
    assert page.locator(".card h3").all_inner_texts() == ["dropped_0.png", "dropped_1.png"]
    page.click("#new-sample")
    # a folder with no image says so
    page.evaluate("""() => {
        const empty = { name: "empty", isFile: false, createReader: () => ({ readEntries: (ok) => ok([]) }) };
        const ev = new Event("drop", { bubbles: true, cancelable: true });
        Object.defineProperty(ev, "dataTransfer", { value: { items: [{ webkitGetAsEntry: () => empty }], files: [] } });
        document.getElementById("dropzone").dispatchEvent(ev);
    }""")
    page.wait_for_selector("#status:has-text('1 drop held no image to classify')")
