"""The HTTP API in process (FastAPI's TestClient): answers in the CLI's JSON shapes, refuses hostile requests."""

from __future__ import annotations

import shutil
import threading
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs the extra: pip install '.[serve]'")
pytest.importorskip("multipart", reason="the server needs python-multipart: pip install '.[serve]'")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about httpx2
    from fastapi.testclient import TestClient
from live_helpers import make_images
from server_helpers import SECRET, make_project, wait_for
from test_images_hostile import png_bomb

from vladsearch import Index
from vladsearch.server.app import create_app
from vladsearch.server.engine import Engine, Limits


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("server-api"))


@pytest.fixture(scope="module")
def client(project):
    with TestClient(create_app(project["index"], refresh_interval=0.2)) as client:
        yield client


@pytest.fixture
def own_project(project, tmp_path):
    """A copy of the project (index and photos moved together) for tests that change it."""
    shutil.copytree(project["photos"].parent, tmp_path / "p", symlinks=True)

    def moved(path: Path) -> Path:
        return tmp_path / "p" / path.relative_to(project["photos"].parent)

    return {key: [moved(p) for p in value] if isinstance(value, list) else moved(value)
            for key, value in project.items()}


def upload(client, path: Path, name: str | None = None, **params):
    return client.post("/api/search", params=params, files={"image": (name or path.name, path.read_bytes())})


def assert_json_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    return response.json()["error"]


# --- search ---------------------------------------------------------------------------------
def test_exact_copy_comes_first_in_the_cli_json_shape(client, project):
    image = project["images"][3]
    response = upload(client, image, name="my query.jpg", top=5)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"query", "answer", "matches", "seconds"}
    assert body["query"] == "my query.jpg" and body["answer"] == "identical"
    first = body["matches"][0]
    assert first["image"] == image.name and first["verdict"] == "identical" and first["confidence"] == 1.0
    assert all(m["verified"] for m in body["matches"])  # confirmed matches only, by default
    plain = upload(client, image, top=5, rerank=0).json()  # today's list, one flag away
    assert "answer" not in plain and plain["matches"][0] == {"image": image.name, "score": 1.0}
    assert len(plain["matches"]) == 5 and all(set(m) == {"image", "score"} for m in plain["matches"])


def test_search_answers_what_the_python_api_answers(client, project):
    """The oracle: Index.search on the same file, in this process, with the same defaults."""
    query = project["images"][7]
    for options in ({}, {"rerank": 6, "top": 8, "unverified": True}):
        expected = Index.open(project["index"]).search([query], **options)[0].to_dict()
        body = upload(client, query, **options).json()
        assert body["answer"] == expected["answer"] == "identical"
        assert body["matches"] == [{k: v for k, v in m.items() if v is not None} for m in expected["matches"]]
    assert body["matches"][0]["verified"] is True and body["matches"][0]["image"] == query.name
    assert any(m["verified"] is False for m in body["matches"])


def test_a_stranger_is_not_in_the_collection(client, tmp_path):
    import cv2
    import numpy as np

    rng = np.random.default_rng(3)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (300, 400), dtype=np.uint8), (0, 0), 2)
    cv2.imwrite(str(tmp_path / "stranger.png"), noise)
    body = upload(client, tmp_path / "stranger.png").json()
    assert body["answer"] == "not in the collection" and body["matches"] == []


def test_bad_search_parameters_are_400_or_422_json(client, project):
    assert "min-confidence" in assert_json_error(upload(client, project["images"][0], rerank=0, min_confidence=0.5), 400)
    assert_json_error(upload(client, project["images"][0], min_confidence=2), 422)
    assert_json_error(upload(client, project["images"][0], top=0), 422)
    assert_json_error(client.post("/api/search"), 422)  # no image field


def test_query_without_keypoints_is_an_error_entry(client, tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "flat.png"), np.full((64, 64), 128, np.uint8))
    body = upload(client, tmp_path / "flat.png").json()
    assert body["matches"] == [] and "no keypoints" in body["error"]


# --- hostile uploads --------------------------------------------------------------------------
def test_hostile_uploads_get_4xx_json_and_the_server_keeps_answering(client, project, tmp_path):
    jpeg = project["images"][0].read_bytes()
    png_bomb(tmp_path / "bomb.png", 30000)
    cases = {
        "text": (("notes.jpg", b"just some text, not an image\n"), 400),
        "truncated": (("cut.jpg", jpeg[: len(jpeg) // 2]), 400),
        "empty": (("empty.jpg", b""), 400),
        "bomb": (("bomb.png", (tmp_path / "bomb.png").read_bytes()), 400),
    }
    for what, ((name, data), status) in cases.items():
        error = assert_json_error(client.post("/api/search", files={"image": (name, data)}), status)
        assert name in error, what
    assert "too large (30000×30000" in assert_json_error(
        client.post("/api/search", files={"image": ("bomb.png", (tmp_path / "bomb.png").read_bytes())}), 400)
    big = b"\xff\xd8" + b"\0" * (60 * 1024 * 1024)
    assert "limit" in assert_json_error(client.post("/api/search", files={"image": ("big.jpg", big)}), 413)
    assert client.get("/api/info").status_code == 200
    assert upload(client, project["images"][2]).json()["matches"][0]["image"] == project["images"][2].name


def test_body_limit_holds_when_the_length_is_not_declared(project):
    """Chunked bodies (no Content-Length) are cut while they arrive, not read whole first."""
    app = create_app(project["index"], limits=Limits(max_upload_bytes=1024 * 1024))
    seen = []

    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n\xff\xd8'
        for _ in range(64):
            seen.append(1)
            yield b"x" * 65536

    with TestClient(app) as client:
        response = client.post("/api/search", content=chunks(),
                               headers={"content-type": "multipart/form-data; boundary=b"})
        assert_json_error(response, 413)
        small = make_images(project["photos"].parent / "small", 1, 77)[0]
        assert upload(client, small).status_code == 200  # a body under the limit still passes
    assert len(seen) == 64  # the rest was read and dropped, so the client could read the answer


def test_upload_pixel_limit_is_the_servers_own(project):
    with TestClient(create_app(project["index"], limits=Limits(max_pixels=320 * 240 - 1))) as small:
        error = assert_json_error(upload(small, project["images"][0]), 400)
    assert "too large (320×240 pixels" in error


# --- images and paths -----------------------------------------------------------------------
def test_indexed_images_and_thumbnails_are_served(client, project):
    from io import BytesIO

    from PIL import Image

    image = project["images"][4]
    full = client.get(f"/api/images/{image.name}")
    assert full.status_code == 200 and full.content == image.read_bytes()
    assert full.headers["x-content-type-options"] == "nosniff"
    thumb = client.get(f"/api/images/{image.name}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(BytesIO(thumb.content)) as im:
        assert max(im.size) <= 256 and im.size[0] > im.size[1]  # 320×240 kept its aspect


SPELLINGS = ["../outside/secret.txt", "..%2foutside%2fsecret.txt", "%2e%2e%2foutside%2fsecret.txt",
             "%2e%2e/outside/secret.txt", "img_5_000.jpg/../../outside/secret.txt", "%2fetc%2fpasswd",
             "/etc/passwd", "..%5coutside%5csecret.txt", "%00img_5_000.jpg", "dir_out/secret.txt", "notes.txt",
             "../photos.vlad/catalog.sqlite", "%252e%252e%252foutside%252fsecret.txt"]
INDEXED_OUT_OF_ROOT = ["link_out.jpg", "dir_out/outside_1005_001.jpg"]  # symlinks the index followed


@pytest.mark.parametrize("suffix", ["", "/thumbnail"])
def test_no_path_spelling_reaches_a_file_outside_the_root(client, project, suffix):
    outside = [SECRET, project["outside_images"][0].read_bytes(), Path("/etc/passwd").read_bytes()]
    for spelling in SPELLINGS + INDEXED_OUT_OF_ROOT:
        response = client.get(f"/api/images/{spelling}{suffix}")
        assert 400 <= response.status_code < 500, (spelling, response.status_code)
        assert response.headers["content-type"].startswith("application/json"), spelling
        assert not any(secret[:64] in response.content for secret in outside), spelling
    for spelling in SPELLINGS:
        assert 400 <= client.delete(f"/api/images/{spelling}").status_code < 500, spelling
    assert client.get(f"/api/images/{project['images'][0].name}").status_code == 200


def test_symlinks_leading_out_are_indexed_but_never_served(client, project):
    names = {m["image"] for m in upload(client, project["outside_images"][0], top=20, rerank=0).json()["matches"]}
    assert set(INDEXED_OUT_OF_ROOT) <= names  # the index followed them…
    for name in INDEXED_OUT_OF_ROOT:
        assert_json_error(client.get(f"/api/images/{name}"), 404)  # …the server does not
        assert_json_error(client.get(f"/api/images/{name}/thumbnail"), 404)


# --- writes -----------------------------------------------------------------------------------
def test_uploaded_images_are_stored_added_searchable_and_removable(own_project, tmp_path):
    new = make_images(tmp_path / "new", 2, 99, prefix="new")
    with TestClient(create_app(own_project["index"], refresh_interval=0.2)) as client:
        files = [("images", (p.name, p.read_bytes())) for p in new] + [("images", ("x.txt", b"text"))]
        response = client.post("/api/images", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["indexed"] == 2 and [s["path"] for s in body["skipped"]] == ["x.txt"]
        stored = [entry["image"] for entry in body["images"]]
        assert all(name.startswith("uploads/") and name.endswith(f"{p.stem}.jpg") for name, p in zip(stored, new))
        assert (own_project["photos"] / stored[0]).read_bytes() == new[0].read_bytes()
        assert upload(client, new[1], rerank=0).json()["matches"][0] == {"image": stored[1], "score": 1.0}
        assert client.get("/api/info").json()["counts"]["indexed"] == 16

        removed = client.delete(f"/api/images/{stored[1]}")
        assert removed.status_code == 200 and removed.json() == {"removed": stored[1], "vectors": 15}
        assert_json_error(client.get(f"/api/images/{stored[1]}"), 404)
        assert not (own_project["photos"] / stored[1]).exists()
        assert stored[1] not in {m["image"] for m in upload(client, new[1], top=20, rerank=0).json()["matches"]}
        assert_json_error(client.delete(f"/api/images/{stored[1]}"), 404)
    assert Index.open(own_project["index"]).info()["counts"]["indexed"] == 15  # committed on disk


def test_an_upload_of_no_usable_image_is_400(client):
    assert "no usable image" in assert_json_error(client.post("/api/images", files=[("images", ("a.jpg", b"no"))]),
                                                  400)


def test_commits_of_another_writer_are_followed_without_restart(own_project):
    new = make_images(own_project["photos"] / "later", 1, 123, prefix="later")[0]
    with TestClient(create_app(own_project["index"], refresh_interval=0.1)) as client:
        before = client.get("/api/info").json()["commits"]
        assert upload(client, new).json()["answer"] == "not in the collection"
        Index.open(own_project["index"]).add([new], workers=1, progress=False)  # another Index: another writer
        wait_for(lambda: upload(client, new, rerank=0).json()["matches"][0] == {"image": "later/later_123_000.jpg",
                                                                                "score": 1.0},
                 30, "the image another writer added, found")
        assert client.get("/api/info").json()["commits"] == before + 1
        assert client.get("/api/images/later/later_123_000.jpg").content == new.read_bytes()


def test_a_hit_removed_by_another_process_before_the_refresh_is_not_an_error(own_project):
    """The snapshot still holds the vector, the catalog no longer names it: answer from the newer commit."""
    victim = own_project["images"][4]
    with TestClient(create_app(own_project["index"], refresh_interval=3600)) as client:  # no follow meanwhile
        assert upload(client, victim).json()["matches"][0]["image"] == victim.name
        Index.open(own_project["index"]).remove([victim.name])  # another writer
        response = upload(client, victim)
        assert response.status_code == 200, response.text
        assert victim.name not in {m["image"] for m in response.json()["matches"]}


# --- service behaviour ------------------------------------------------------------------------
def test_a_full_queue_answers_503_and_recovers(project, monkeypatch):
    engine = Engine(project["index"], workers=1, waiting=0)
    release, entered = threading.Event(), threading.Event()
    original = engine.search_upload

    def slow(*args):
        entered.set()
        release.wait(60)
        return original(*args)

    monkeypatch.setattr(engine, "search_upload", slow)
    with TestClient(create_app(project["index"], engine=engine)) as client:
        first: list = []
        worker = threading.Thread(target=lambda: first.append(upload(client, project["images"][1])))
        worker.start()
        assert entered.wait(60)
        assert "busy" in assert_json_error(upload(client, project["images"][1]), 503)
        release.set()
        worker.join(60)
        assert first[0].status_code == 200
        assert upload(client, project["images"][1]).status_code == 200


def test_bearer_token_guards_the_api_but_not_the_page(project):
    with TestClient(create_app(project["index"], token="s3cret")) as client:
        assert_json_error(client.get("/api/info"), 401)
        assert client.get("/api/info").headers["www-authenticate"] == "Bearer"
        assert_json_error(client.get("/api/info", headers={"Authorization": "Bearer wrong"}), 401)
        assert_json_error(upload(client, project["images"][0]), 401)
        assert_json_error(client.get(f"/api/images/{project['images'][0].name}"), 401)
        assert client.get("/api/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/").status_code == 200


def test_serve_refuses_a_public_address_without_a_token(project, capsys):
    from vladsearch.cli import main

    assert main(["serve", str(project["index"]), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err


def test_page_openapi_and_unknown_routes(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="query-file"' in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/images", "/api/info", "/api/images/{path}", "/api/images/{path}/thumbnail"} <= set(paths)
    assert client.get("/docs").status_code == 200
    assert_json_error(client.get("/api/nothing"), 404)


def test_a_failed_add_keeps_no_stored_upload(own_project, monkeypatch):
    engine = Engine(own_project["index"])

    def rebuilt_meanwhile(*args, **kwargs):
        raise RuntimeError("the index was rebuilt while this add ran: run it again")

    monkeypatch.setattr(engine._writer, "add", rebuilt_meanwhile)
    with TestClient(create_app(own_project["index"], engine=engine)) as client:
        image = own_project["images"][0]
        error = assert_json_error(client.post("/api/images", files=[("images", (image.name, image.read_bytes()))]), 409)
        assert "run it again" in error
        assert list((own_project["photos"] / "uploads").iterdir()) == []
        assert client.get("/api/info").status_code == 200


def test_duplicates_of_the_whole_index(own_project):
    import cv2

    original = own_project["images"][2]
    copy = original.parent.parent / "copy.jpg"
    image = cv2.imread(str(original))
    cv2.imwrite(str(copy), cv2.resize(image, (image.shape[1] * 3 // 4, image.shape[0] * 3 // 4)))
    with TestClient(create_app(own_project["index"], refresh_interval=3600)) as client:
        assert client.get("/api/duplicates").json()["groups"] == []
        added = client.post("/api/images", files=[("images", ("copy.jpg", copy.read_bytes(), "image/jpeg"))])
        assert added.status_code == 200, added.text
        groups = client.get("/api/duplicates").json()["groups"]
        assert len(groups) == 1 and original.name in groups[0]["images"] and len(groups[0]["images"]) == 2
        assert groups[0]["keep"] == original.name  # the larger image
        assert_json_error(client.get("/api/duplicates", params={"neighbors": 0}), 422)
