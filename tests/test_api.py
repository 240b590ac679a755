"""REST API and pages: every kind of bad upload answers 4xx naming the file; the server
keeps serving; the review page serves images by index only."""

from __future__ import annotations

import io
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from spermhead.data.synthetic import render_head
from spermhead.evaluation.predictions import Predictions
from spermhead.serving.app import create_app
from spermhead.serving.predictor import untrained_bundle

CLASSES = ("normal", "tapered", "pyriform", "amorphous")


def head(label: str = "normal", seed: int = 0) -> np.ndarray:
    rgb, _ = render_head(label, "hushem", np.random.default_rng(seed))
    return rgb


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png(seed: int = 0, label: str = "normal") -> bytes:
    return encode(Image.fromarray(head(label, seed)), "PNG")


def huge_png_header(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header claiming width x height 1-bit pixels, with a token IDAT: a few
    hundred bytes that must be refused from the header, never decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Tiny and untrained: the API's plumbing does not depend on accuracy.
    return untrained_bundle(tmp_path_factory.mktemp("bundle"), "spermnet", classes=CLASSES,
                            image_size=32, tta=True, width=8)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    for k, label in enumerate(CLASSES):
        (root / label).mkdir()
        for i in range(2):
            Image.fromarray(head(label, 10 * k + i)).save(root / label / f"{label}_{i}.bmp")
    return root


@pytest.fixture(scope="module")
def client(bundle: Path, labelled: Path) -> TestClient:
    app = create_app(bundle, review_source=labelled, max_upload_mb=1)
    with TestClient(app) as c:
        yield c


def post(client: TestClient, *files: tuple[str, bytes], query: str = "") -> object:
    return client.post("/api/predict" + query,
                       files=[("files", (name, data, "application/octet-stream")) for name, data in files])


def test_one_image(client: TestClient) -> None:
    r = post(client, ("head.png", png()))
    assert r.status_code == 200, r.text
    (row,) = r.json()["results"]
    assert row["ok"] and row["status"] == 200 and row["name"] == "head.png"
    assert row["class"] in CLASSES
    assert set(row["probabilities"]) == set(CLASSES)
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-5
    assert row["confidence"] == max(row["probabilities"].values())
    assert isinstance(row["uncertain"], bool)
    assert row["crop"].startswith("data:image/png;base64,")
    assert "gradcam" not in row and "path" not in row
    assert {"aligned", "alignment", "morphometrics"} <= set(row) and row["head_found"] is True


def test_an_image_with_no_head_says_so(client: TestClient) -> None:
    blank = encode(Image.new("RGB", (120, 120), (200, 200, 200)), "PNG")
    (row,) = post(client, ("blank.png", blank)).json()["results"]
    assert row["ok"] and row["head_found"] is False and row["alignment"].startswith("fallback: no head found")


def test_gradcam_overlay(client: TestClient) -> None:
    r = post(client, ("head.png", png(3)), query="?gradcam=true")
    assert r.status_code == 200, r.text
    row = r.json()["results"][0]
    assert row["gradcam"].startswith("data:image/png;base64,")
    assert "gradcam_note" not in row  # a map with evidence, from the network alone


def test_a_gradcam_with_no_evidence_says_so(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import spermhead.serving.app as app_module

    monkeypatch.setattr(app_module, "gradcam_map", lambda model, image, *a: np.zeros(image.shape[1:], np.float32))
    row = post(client, ("head.png", png(3)), query="?gradcam=true").json()["results"][0]
    assert row["gradcam"].startswith("data:image/png;base64,")
    assert row["gradcam_note"] == "no positive evidence for this class in the network's last layer"


def test_batch_mixes_good_and_bad(client: TestClient) -> None:
    r = post(client, ("a.png", png(1)), ("notes.png", b"just some text"), ("b.png", png(2, "tapered")))
    assert r.status_code == 200, r.text
    a, bad, b = r.json()["results"]
    assert a["ok"] and b["ok"] and (a["name"], b["name"]) == ("a.png", "b.png")
    assert not bad["ok"] and bad["status"] == 415 and bad["error"].startswith("notes.png:")


def _truncated_bmp() -> bytes:
    data = encode(Image.fromarray(head()), "BMP")
    return data[: len(data) // 2]


def _tiff16() -> bytes:
    gray = head()[..., 1].astype(np.uint16) * 257
    return encode(Image.fromarray(gray), "TIFF")


def _cmyk_jpeg() -> bytes:
    return encode(Image.fromarray(head()).convert("CMYK"), "JPEG", quality=92)


def _alpha_png() -> bytes:
    rgba = np.dstack([head(), np.full(head().shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = 0
    return encode(Image.fromarray(rgba), "PNG")


@pytest.mark.parametrize(
    ("name", "make", "status", "words"),
    [
        ("empty.png", lambda: b"", 400, "empty"),
        ("cut.bmp", _truncated_bmp, 400, "truncated"),
        ("notes.png", lambda: b"this is text, not a picture\n" * 4, 415, "not a supported image"),
        ("huge.png", huge_png_header, 413, "pixels"),
        ("big.png", lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * (1_200_000), 413, "upload limit"),
    ],
)
def test_bad_upload_answers_4xx_naming_the_file(client: TestClient, name: str, make, status: int, words: str) -> None:
    data = make()
    r = post(client, (name, data))
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"{name}:") and words in detail, detail
    assert client.get("/health").status_code == 200  # the server keeps serving


def test_huge_header_file_is_small() -> None:
    assert len(huge_png_header()) < 1000  # refused by its header, not by its size


@pytest.mark.parametrize(("name", "make"), [("deep.tif", _tiff16), ("cmyk.jpg", _cmyk_jpeg), ("alpha.png", _alpha_png)])
def test_unusual_but_valid_formats_work(client: TestClient, name: str, make) -> None:
    r = post(client, (name, make()))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["class"] in CLASSES


def test_client_file_name_is_never_a_path(client: TestClient) -> None:
    r = post(client, ("../../etc/passwd.png", b"nope"))
    assert r.status_code == 415
    assert r.json()["detail"].startswith("passwd.png:")


def test_missing_or_wrong_files_field_is_4xx(client: TestClient) -> None:
    assert 400 <= client.post("/api/predict").status_code < 500
    assert 400 <= client.post("/api/predict", data={"files": "not a file"}).status_code < 500
    assert 400 <= client.post("/api/predict", content=b"junk", headers={"content-type": "multipart/form-data"}).status_code < 500


def test_too_many_files(bundle: Path) -> None:
    with TestClient(create_app(bundle, max_files=2)) as c:
        r = post(c, ("a.png", png()), ("b.png", png()), ("c.png", png()))
        assert r.status_code == 413 and "limit is 2" in r.json()["detail"]
        # over 1000, the form parser refuses them before the endpoint counts: the same answer
        many = c.post("/api/predict", files=[("files", (f"{i}.png", b"x")) for i in range(1001)])
        assert many.status_code == 413 and "limit is 2" in many.json()["detail"], many.text
        # other refusals of the parser keep their own status
        assert c.post("/api/predict", content=b"junk", headers={"content-type": "multipart/form-data"}).status_code == 400


def test_an_image_sent_without_a_file_name_is_named_as_such_not_echoed(bundle: Path) -> None:
    """`curl -F files=<img.png` (no file name) makes a text field: FastAPI's 422 echoed the image
    back as text, and over 1 MB Starlette's 400 spoke of a part size. Both now say what happened."""
    image = png()
    with TestClient(create_app(bundle)) as c:
        r = c.post("/api/predict", data={"files": image.decode("latin-1")})
        assert r.status_code == 422 and r.json()["detail"].startswith("files part 1: sent without a file name")
        assert len(r.content) < 300  # the image is not sent back
        big = c.post("/api/predict", data={"files": "x" * (1024 * 1024 + 10)})
        assert big.status_code == 400 and "over 1 MB that is not a file" in big.json()["detail"], big.text
        # other validation errors keep FastAPI's own answer
        assert c.post("/api/predict").json()["detail"][0]["loc"] == ["body", "files"]


def test_the_documented_answer_has_the_fields_a_real_one_has(bundle: Path) -> None:
    """/docs shows an example of /api/predict's rows: its fields are a real answer's, so the
    docs cannot drift from what integrators get."""
    from spermhead.serving.app import PREDICT_EXAMPLE, PREDICT_ROWS

    with TestClient(create_app(bundle)) as c:
        documented = c.get("/openapi.json").json()["paths"]["/api/predict"]["post"]["responses"]["200"]
        real = post(c, ("a.png", png()), ("notes.txt", b"hello")).json()["results"]
        with_cam = post(c, ("a.png", png()), query="?gradcam=true").json()["results"][0]
    assert documented["content"]["application/json"]["example"] == PREDICT_EXAMPLE
    good, bad = PREDICT_EXAMPLE["results"]
    assert set(real[0]) == set(good) and set(real[1]) == set(bad)
    assert set(good["probabilities"]) == set(real[0]["probabilities"]) == set(CLASSES)
    assert set(good["morphometrics"]) == set(real[0]["morphometrics"])
    assert set(good["acquisition"]) == set(real[0]["acquisition"])
    for field in (*real[0], *with_cam, "gradcam_error"):  # every field is described
        assert f"`{field}`" in PREDICT_ROWS, field


def test_request_body_cap(bundle: Path) -> None:
    app = create_app(bundle, max_upload_mb=1, max_request_mb=1)
    with TestClient(app) as c:
        r = post(c, ("a.png", b"\0" * 600_000), ("b.png", b"\0" * 600_000))
        assert r.status_code == 413 and "request" in r.json()["detail"]
        assert c.get("/health").status_code == 200
        # sent without a length (chunked), the cut-off inside the form parser is still a 413
        boundary = "spermheadtest"
        part = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
                "Content-Type: image/png\r\n\r\n").encode()

        def body():
            for _ in range(3):
                yield part + b"\0" * 600_000 + b"\r\n"
            yield f"--{boundary}--\r\n".encode()

        r = c.post("/api/predict", content=body(), headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413 and "request limit" in r.json()["detail"], r.text
        assert c.get("/health").status_code == 200


def test_review_names_a_file_whose_name_is_not_utf8(bundle: Path, tmp_path: Path) -> None:
    import os

    (tmp_path / "normal").mkdir()
    (tmp_path / "normal" / os.fsdecode(b"t\xeate.png")).write_bytes(png())
    with TestClient(create_app(bundle, tmp_path)) as c:
        r = c.get("/api/review")
        assert r.status_code == 200 and r.json()["items"][0]["name"] == "t\\xeate.png"


def test_the_request_limit_holds_a_full_page_batch_at_the_file_limit(bundle: Path) -> None:
    """The classify page sends 8 files a request: raising the per-file limit raises the
    request's with it, and /api/model says both."""
    import re

    from spermhead.serving import app as app_module

    page = (Path(app_module.__file__).parent / "static" / "classify.js").read_text()
    assert int(re.search(r"const BATCH = (\d+);", page).group(1)) == app_module.PAGE_BATCH  # the same batch
    for per_file, request in ((20, 200), (50, 410)):
        with TestClient(create_app(bundle, max_upload_mb=per_file)) as c:
            limits = c.get("/api/model").json()["limits"]
            assert (limits["max_upload_mb"], limits["max_request_mb"]) == (per_file, request)
    from spermhead.errors import ConfigError

    with pytest.raises(ConfigError, match="--max-request-mb 10 is below --max-upload-mb 50"):
        create_app(bundle, max_upload_mb=50, max_request_mb=10)
    with pytest.raises(ConfigError, match="--max-request-mb 10 is below"):  # before the model loads (minutes with --review)
        create_app(bundle / "no such bundle", max_upload_mb=50, max_request_mb=10)
    for nothing in (0, -5):  # a server that would refuse every file does not start
        with pytest.raises(ConfigError, match=f"--max-upload-mb {nothing}: must be a number above 0"):
            create_app(bundle, max_upload_mb=nothing)
    for option, given in (("upload", {"max_upload_mb": float("inf")}), ("request", {"max_request_mb": float("inf")}),
                          ("request", {"max_request_mb": float("nan")})):  # no limit is no number of bytes
        with pytest.raises(ConfigError, match=f"--max-{option}-mb (inf|nan): must be a number above 0"):
            create_app(bundle, **given)


def test_unexpected_error_is_json_500_and_server_survives(bundle: Path) -> None:
    app = create_app(bundle)

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("bug")

    app.state.service.process_many = boom
    with TestClient(app, raise_server_exceptions=False) as c:
        r = post(c, ("a.png", png()))
        assert r.status_code == 500 and r.json()["detail"].startswith("internal error")
        assert c.get("/health").json()["status"] == "ok"


def test_model_health_docs(client: TestClient) -> None:
    m = client.get("/api/model").json()
    assert m["classes"] == list(CLASSES) and m["architecture"] == "spermnet"
    assert m["input"]["size"] == 32 and m["input"]["color"] == "gray"
    assert (m["input"]["scale"], m["input"]["background"]) == ("head", "keep")
    assert (m["shape_fusion"], m["pixel_fusion"]) == (0.0, 0.0)  # an untrained bundle fuses nothing
    assert {"operating_point", "uncertainty_threshold", "run", "tta", "limits"} <= set(m)
    assert client.get("/health").json()["status"] == "ok"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text  # works offline
    assert client.get("/swagger-ui/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"200", "400", "413", "415"} <= set(paths["/api/predict"]["post"]["responses"])  # what it answers
    assert "404" in paths["/api/review"]["get"]["responses"]


def test_pages_and_docs_follow_the_path_a_proxy_serves_them_under(bundle: Path) -> None:
    """Behind a proxy that strips /lab, every page (the docs too) loads its files and calls the API
    by relative links, so from /lab; `serve --root-path /lab` adds it to the API's servers, for the
    docs' Try it out (tests/test_browser.py runs the pages under a path)."""
    with TestClient(create_app(bundle)) as c:  # no root path given: the links still hold
        docs = c.get("/docs").text
        assert "'openapi.json'" in docs and '"swagger-ui/swagger-ui-bundle.js"' in docs and "'/" not in docs
        assert "servers" not in c.get("/openapi.json").json()
        page = c.get("/").text
        assert 'src="/' not in page and 'href="/' not in page and "static/classify.js" in page
    with TestClient(create_app(bundle), root_path="/lab") as c:
        assert c.get("/openapi.json").json()["servers"] == [{"url": "/lab"}]
    from spermhead.serving.app import STATIC

    for script in STATIC.glob("*.js"):  # the calls they make, relative too
        assert 'fetch("/' not in script.read_text() and "`/api" not in script.read_text(), script.name


def test_composition_gives_the_heads_class_shares_and_names_what_it_cannot_use(client: TestClient) -> None:
    from spermhead.evaluation.composition import composition

    heads = ["normal"] * 3 + ["amorphous"] * 17
    r = client.post("/api/composition", json={"predicted": heads})
    assert r.status_code == 200, r.text
    body = r.json()
    # an untrained bundle records no confusion: counted only, as predict's table would give it
    assert body["heads"] == 20 and not body["adjusted"] and body["closer"] is None and body["check"] is None
    assert body["note"] is None
    few = client.post("/api/composition", json={"predicted": heads[:3]}).json()
    assert few["rows"] == composition(heads[:3], list(CLASSES)) and few["note"].startswith("3 heads: predict")
    assert body["rows"] == composition(heads, list(CLASSES))
    assert client.get("/api/model").json()["sample_min_heads"] == 10
    bad = client.post("/api/composition", json={"predicted": ["normal", "banana", "Normall"]})
    assert bad.status_code == 422 and "'Normall', 'banana'" in bad.json()["detail"] and "it has normal" in bad.json()["detail"]
    # a class as a lab writes it, or as its folder is named, is the model's class
    spelt = client.post("/api/composition", json={"predicted": ["Normal", "01_Normal", " AMORPHOUS"] + heads[3:]})
    assert spelt.status_code == 200, spelt.text
    assert spelt.json()["rows"] == composition(["normal"] * 2 + ["amorphous"] * 18, list(CLASSES))
    assert client.post("/api/composition", json={"predicted": []}).status_code == 422
    assert client.post("/api/composition", json={"heads": heads}).status_code == 422
    assert client.post("/api/composition", content=b"not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.get("/health").json()["status"] == "ok"


def test_composition_is_adjusted_widened_and_starred_as_the_bundle_records(bundle: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from spermhead.evaluation.composition import composition

    copy = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    meta = json.loads((copy / "model.json").read_text())
    confusion = [[60, 0, 0, 40], [0, 95, 5, 0], [0, 5, 95, 0], [0, 0, 5, 95]]
    check = {"heads": [50, 200], "samples": 400, "level": 0.95, "error": {"counted": [0.2, 0.01, 0.01, 0.2],
             "adjusted": [0.05, 0.02, 0.02, 0.05]}, "held": {"counted": [0.3, 1, 1, 0.3], "adjusted": [0.95] * 4},
             "extra_sd": {"counted": [0.15, 0, 0, 0.15], "adjusted": [0, 0, 0, 0]},
             "closer": ["adjusted", "counted", "counted", "adjusted"]}
    meta.update(confusions={"accuracy": confusion}, share_checks={"accuracy": check})
    (copy / "model.json").write_text(json.dumps(meta))
    with TestClient(create_app(copy)) as c:
        heads = ["normal"] * 12 + ["tapered"] * 10 + ["amorphous"] * 18
        body = c.post("/api/composition", json={"predicted": heads}).json()
    assert body["adjusted"] and body["closer"] == check["closer"] and body["check"]["samples"] == 400
    assert body["check"]["heads"] == 200  # the largest sample the check drew
    assert body["rows"] == composition(heads, list(CLASSES), confusion, extra_sd=check["extra_sd"])


def test_pages_are_self_contained(client: TestClient) -> None:
    for page in ("/", "/review"):
        r = client.get(page)
        assert r.status_code == 200 and "<html" in r.text
        assert "http://" not in r.text and "https://" not in r.text  # no CDN
    for asset in ("style.css", "common.js", "classify.js", "review.js"):
        r = client.get(f"/static/{asset}")
        assert r.status_code == 200 and "https://" not in r.text


def test_review_folder_is_predicted(client: TestClient) -> None:
    data = client.get("/api/review").json()
    assert data["kind"] == "folder" and data["count"] == 8
    assert {it["true"] for it in data["items"]} == set(CLASSES)
    assert all(it["pred"] in CLASSES and it["has_image"] for it in data["items"])
    judged = [it["correct"] for it in data["items"]]
    assert data["accuracy"] == pytest.approx(sum(judged) / len(judged))
    r = client.get("/api/review/image/0")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_a_review_sets_version_changes_with_its_images(tmp_path: Path) -> None:
    """The page puts it in each image's address, which the browser caches for an hour: item 0 of
    another set, or an image replaced under its name, must not come from the cache."""
    import os

    from spermhead.serving.app import ReviewItem, ReviewSet

    for name in ("a.png", "b.png"):
        Image.new("L", (8, 8), 50).save(tmp_path / name)

    def review(*names: str) -> ReviewSet:
        items = [ReviewItem(i, n, tmp_path / n, "normal", "normal") for i, n in enumerate(names)]
        return ReviewSet("folder", str(tmp_path), ["normal"], items)

    first = review("a.png").to_dict()["version"]
    assert review("a.png").version == first and review("b.png").version != first
    st = (tmp_path / "a.png").stat()
    Image.new("L", (9, 8), 60).save(tmp_path / "a.png")  # replaced under its own name
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert review("a.png").version != first


def test_the_server_ends_the_workers_and_pools_it_started(bundle: Path, labelled: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from spermhead.serving import predictor as predictor_module

    started = []

    class Spy(predictor_module.ProcessPreparer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    # a review set large enough for worker processes, on any machine
    monkeypatch.setattr(predictor_module, "PROCESS_MIN", 2)
    monkeypatch.setattr(predictor_module.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(predictor_module, "ProcessPreparer", Spy)
    app = create_app(bundle, review_source=labelled)
    predictor = app.state.service.predictor
    # the review set was scored in worker processes, which ended once it was
    assert len(started) == 1 and started[0]._pool is None and predictor._preparer is None
    with TestClient(app) as c:
        assert c.get("/api/review").json()["count"] == 8
        assert post(c, ("a.png", png(1)), ("b.png", png(2))).status_code == 200
        assert predictor._pool is not None  # two uploads are prepared by its threads
    assert predictor._pool is None  # the server's end closed the predictor it opened


@pytest.mark.parametrize("attempt", [
    "/api/review/image/..%2F..%2F..%2Fetc%2Fpasswd",
    "/api/review/image/../../../etc/passwd",
    "/api/review/image/%2e%2e%2fpyproject.toml",
    "/api/review/image/-1",
    "/api/review/image/8",
    "/api/review/image/1e3",
    "/api/review/image/0x1",
    "/api/review/image/%C2%B2",  # a superscript two: str.isdigit() says yes, int() says no
    "/api/review/image/%D9%A3",  # an Arabic-Indic three
    "/api/review/image/" + "9" * 5000,  # past int()'s 4300-digit limit
    "/static/../app.py",
    "/static/%2e%2e/app.py",
    "/static/..%2Fapp.py",
    "/review/../../etc/passwd",
])
def test_review_path_traversal_refused(client: TestClient, attempt: str) -> None:
    r = client.get(attempt)
    assert r.status_code in (400, 404), (attempt, r.status_code)
    assert "root:" not in r.text and "def create_app" not in r.text


def test_review_from_predictions_csv(bundle: Path, labelled: Path, tmp_path: Path) -> None:
    from spermhead.data.readers import load_dataset

    table = load_dataset(str(labelled))
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=len(table))
    Predictions.from_model_output([s.id for s in table.samples], probs, table,
                                  classes=list(CLASSES)).write_csv(tmp_path / "predictions.csv")
    app = create_app(bundle, review_source=tmp_path / "predictions.csv", review_data=labelled)
    with TestClient(app) as c:
        data = c.get("/api/review").json()
        assert data["kind"] == "predictions" and data["count"] == len(table)
        expected = [CLASSES[k] for k in probs.argmax(1)]
        assert [it["pred"] for it in data["items"]] == expected
        assert [it["correct"] for it in data["items"]] == [p == s.label for p, s in zip(expected, table.samples, strict=True)]
        assert c.get("/api/review/image/3").status_code == 200


def test_review_without_source_says_so(bundle: Path) -> None:
    with TestClient(create_app(bundle)) as c:
        r = c.get("/api/review")
        assert r.status_code == 404 and "--review" in r.json()["detail"]
        assert c.get("/api/review/image/0").status_code == 404


def test_concurrent_requests_get_their_own_results(bundle: Path) -> None:
    """The batcher merges waiting requests into one model call; each must get back exactly
    its own rows, decorated as it asked."""
    import asyncio

    import httpx

    app = create_app(bundle)
    predictor = app.state.service.predictor
    images = {f"h{i}.png": png(i, CLASSES[i % 4]) for i in range(12)}
    expected = {r["name"]: r["probabilities"] for r in predictor.predict_many_bytes(list(images.items()))}
    service, sizes = app.state.service, []
    original = service.process_many

    def slow_first(jobs: list) -> list:
        sizes.append(len(jobs))
        if len(sizes) == 1:
            time.sleep(0.3)  # hold the worker so the other requests queue up behind it
        return original(jobs)

    service.process_many = slow_first

    async def run() -> list[tuple[str, bool, httpx.Response]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            async def one(name: str, data: bytes, cam: bool) -> tuple[str, bool, httpx.Response]:
                q = "?gradcam=true" if cam else ""
                return name, cam, await c.post("/api/predict" + q, files=[("files", (name, data))])
            return await asyncio.gather(*(one(n, d, i % 3 == 0) for i, (n, d) in enumerate(images.items())))

    for name, cam, r in asyncio.run(run()):
        assert r.status_code == 200, r.text
        (row,) = r.json()["results"]
        assert row["name"] == name and ("gradcam" in row) == cam
        for c in CLASSES:
            assert row["probabilities"][c] == pytest.approx(expected[name][c], abs=1e-5)
    assert max(sizes) > 1 and sum(sizes) == len(images)  # requests really were merged


def test_review_run_folder_finds_images_through_its_config(bundle: Path, labelled: Path, tmp_path: Path) -> None:
    from spermhead.config import RunConfig, save_config
    from spermhead.data.readers import load_dataset

    table = load_dataset(str(labelled))
    probs = np.eye(len(CLASSES))[[i % len(CLASSES) for i in range(len(table))]] * 0.9 + 0.025
    Predictions.from_model_output([s.id for s in table.samples], probs, table,
                                  classes=list(CLASSES)).write_csv(tmp_path / "predictions.csv")
    save_config(RunConfig(dataset=str(labelled), out=str(tmp_path)), tmp_path / "config.yaml")
    shutil.copytree(bundle, tmp_path / "model")  # the run's own bundle
    with TestClient(create_app(tmp_path, review_source=tmp_path)) as c:  # the run folder itself
        data = c.get("/api/review").json()
        assert data["count"] == len(table) and not data["note"]
        assert all(it["has_image"] for it in data["items"])
        assert c.get(f"/api/review/image/{len(table) - 1}").status_code == 200
    with TestClient(create_app(bundle, review_source=tmp_path)) as c:  # another model served beside them
        note = c.get("/api/review").json()["note"]
        assert f"recorded in {tmp_path / 'predictions.csv'}, by the model at {(tmp_path / 'model').resolve()}" in note
    (tmp_path / "config.yaml").unlink()
    with TestClient(create_app(bundle, review_source=tmp_path / "predictions.csv")) as c:
        data = c.get("/api/review").json()  # labels and predictions still reviewable, without images
        assert "images unavailable" in data["note"] and not any(it["has_image"] for it in data["items"])
        assert c.get("/api/review/image/0").status_code == 404


def test_serve_reviews_a_named_dataset_from_the_data_folder_its_error_names(bundle: Path, tmp_path: Path,
                                                                             monkeypatch) -> None:
    """`serve --review hushem` without a data folder says to pass --data-dir; serve takes it."""
    import uvicorn
    from typer.testing import CliRunner

    import spermhead.cli as cli
    from spermhead.cli import app
    from spermhead.data.synthetic import write_synthetic

    served, settings = [], []
    monkeypatch.setattr(uvicorn, "run", lambda web, **kw: (served.append(web), settings.append(kw)))  # no server here
    monkeypatch.setattr(cli, "check_port_free", lambda host, port: None)  # port 8000 may be taken on this machine
    monkeypatch.chdir(tmp_path)  # no ./data
    monkeypatch.delenv("SPERMHEAD_DATA", raising=False)
    runner = CliRunner()
    proxied = runner.invoke(app, ["serve", "--model", str(bundle), "--root-path", "/spermhead/"])
    assert proxied.exit_code == 0 and settings[-1]["root_path"] == "/spermhead", proxied.output
    assert "a proxy serves it at /spermhead/" in proxied.output
    bare = runner.invoke(app, ["serve", "--model", str(bundle), "--root-path", "spermhead"])
    assert bare.exit_code == 2 and "e.g. /spermhead" in bare.output and len(served) == 1, bare.output
    served.clear()
    out_of_range = runner.invoke(app, ["serve", "--model", str(bundle), "--port", "70000"])
    assert out_of_range.exit_code == 2 and "65535" in out_of_range.output and not served
    shared = runner.invoke(app, ["serve", "--model", str(bundle), "--host", "0.0.0.0"], terminal_width=300)
    said = " ".join(shared.output.split())
    assert shared.exit_code == 0 and "every network interface" in said and "no login and no HTTPS" in said
    served.clear()
    missing = runner.invoke(app, ["serve", "--model", str(bundle), "--review", "hushem"], terminal_width=200)
    assert missing.exit_code == 2 and "pass --data-dir" in missing.output and not served, missing.output
    write_synthetic(tmp_path / "heads", "hushem", n_per_class=2, seed=0)
    result = runner.invoke(app, ["serve", "--model", str(bundle), "--review", "hushem", "--data-dir", "heads"])
    assert result.exit_code == 0, result.output
    with TestClient(served[0]) as c:
        assert len(c.get("/api/review").json()["items"]) == 8
    # a named-dataset run's predictions find their images in the data folder given the same way
    from spermhead.data.readers import load_dataset

    table = load_dataset("hushem", tmp_path / "heads")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "assessment.json").write_text('{"dataset": "hushem", "data_dir": "/moved/away"}')
    Predictions.from_model_output([s.id for s in table.samples], np.full((8, 4), 0.25), table,
                                  classes=list(CLASSES)).write_csv(tmp_path / "run" / "predictions.csv")
    result = runner.invoke(app, ["serve", "--model", str(bundle), "--review", "run", "--data-dir", "heads"])
    assert result.exit_code == 0, result.output
    with TestClient(served[-1]) as c:
        review = c.get("/api/review").json()
        assert review["count"] == 8 and all(it["has_image"] for it in review["items"]), review["note"]


@pytest.mark.parametrize("large_by", ["bytes", "pixels"])
def test_a_request_of_large_photographs_does_not_hold_the_small_ones_behind_it(bundle: Path, monkeypatch,
                                                                               large_by: str) -> None:
    """A large upload is read and aligned in its own thread, off the worker's reading threads:
    while it is, a crop sent after it is answered (before, the one batching worker read both, the
    large one first). Large by its header's pixels too: a PNG of tens of megapixels can be a few kB."""
    import asyncio
    import threading

    import anyio.to_thread
    import httpx

    import spermhead.serving.app as app_module

    web = create_app(bundle)
    predictor = web.state.service.predictor
    photo = io.BytesIO()  # a head photographed at 5 times the scale: a much larger file than a crop
    Image.open(io.BytesIO(png(1))).resize((655, 655)).save(photo, format="PNG")
    big, small = photo.getvalue(), png(2)
    assert len(small) < len(big)
    if large_by == "bytes":
        monkeypatch.setattr(app_module, "PREPARE_APART_BYTES", len(big))
    else:
        monkeypatch.setattr(app_module, "PREPARE_APART_PIXELS", 655 * 655)
    reading, release = threading.Event(), threading.Event()
    read = predictor.prepare_many_bytes

    def slow(items, pooled=True):  # the large upload takes its time; the crop does not
        if any(len(data) >= len(big) for _, data in items):
            assert not pooled  # the reading threads stay the small requests'
            reading.set()
            release.wait(20)
        return read(items, pooled)

    monkeypatch.setattr(predictor, "prepare_many_bytes", slow)

    async def both() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://spermhead") as c:
            first = asyncio.create_task(c.post("/api/predict", files=[("files", ("big.png", big))]))
            for _ in range(2000):
                if reading.is_set() or first.done():
                    break
                await asyncio.sleep(0.01)
            assert reading.is_set(), "the large upload was not read apart"
            answer = await asyncio.wait_for(c.post("/api/predict", files=[("files", ("crop.png", small))]), 10)
            assert answer.status_code == 200 and not first.done()
            # more large requests wait their turn in the event loop, not in the threadpool's slots,
            # which every other endpoint needs (40 waiting large requests held them all)
            more = [asyncio.create_task(c.post("/api/predict", files=[("files", (f"big{i}.png", big))]))
                    for i in range(3)]
            await asyncio.sleep(0.5)
            assert anyio.to_thread.current_default_thread_limiter().borrowed_tokens == 0
            release.set()
            assert (await first).status_code == 200
            assert [(await m).status_code for m in more] == [200] * 3

    try:
        asyncio.run(both())
    finally:
        release.set()
        web.state.batcher.close()


def test_serve_says_first_that_its_port_is_taken(bundle: Path, monkeypatch) -> None:
    import socket

    from typer.testing import CliRunner

    import spermhead.serving.app as app_module
    from spermhead.cli import app

    monkeypatch.setattr(app_module, "create_app", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as other:  # another server, listening
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--model", str(bundle), "--port", str(port)], terminal_width=200)
    assert result.exit_code == 2 and f"127.0.0.1:{port}: cannot listen there" in result.output
    assert "give another --port" in result.output and "serving" not in result.output


def test_an_app_served_a_second_time_still_answers(bundle: Path) -> None:
    """The batching worker ends with the server; an app served again (a program embedding it, a
    test) starts another, where /api/predict hung while /health answered."""
    web = create_app(bundle)
    for _ in range(2):
        with TestClient(web) as c:
            # asked first: a request to a worker that is gone would wait for ever
            assert web.state.batcher.thread.is_alive(), "no batching worker"
            answer = c.post("/api/predict", files=[("files", ("a.png", png(1)))])
            assert answer.status_code == 200 and answer.json()["results"][0]["ok"]


def test_the_pages_take_the_image_suffixes_the_readers_take() -> None:
    """classify.js (for dropped folders) and the file picker list them again: they must not drift."""
    import re

    from spermhead.data.readers import IMAGE_SUFFIXES

    static = Path(__file__).parents[1] / "src" / "spermhead" / "serving" / "static"
    listed = re.search(r"const IMAGE_SUFFIXES = \[(.*?)\]", (static / "classify.js").read_text()).group(1)
    assert set(re.findall(r'"(\.[a-z]+)"', listed)) == IMAGE_SUFFIXES
    accept = re.search(r'accept="([^"]+)"', (static / "index.html").read_text()).group(1)
    assert set(accept.split(",")) == IMAGE_SUFFIXES
