"""The real server serves every indexed image wherever it lies, nothing else, and answers a too-large upload in every client.

- Images added from another folder (`add INDEX OTHER_FOLDER`, named by their absolute path) are
  served and get thumbnails; symlinks out of that folder, `..` and files never indexed are not.
- A 60 MB upload over the 32 MB limit gets its 413 and JSON error in urllib (which sends the whole
  body before reading), requests/httpx and curl: the server reads and drops the rest of the body first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi", reason="the server needs the extra: pip install '.[serve]'")
pytest.importorskip("uvicorn", reason="the server needs the extra: pip install '.[serve]'")
import httpx
from live_helpers import cli, make_images
from server_helpers import SECRET, serve
from test_server_e2e import raw_get

BIG = 60 * 1024 * 1024  # over the server's default 32 MiB limit


def image_url(base: str, name: str, suffix: str = "") -> str:
    """The URL the web page asks for an indexed name (app.js apiPath: each part percent-encoded)."""
    return f"{base}/api/images/" + "/".join(quote(part, safe="") for part in name.split("/")) + suffix


def make_library(root) -> dict:
    """photos/ (indexed by build), elsewhere/ (added from outside the root, with a symlink leading out of it),
    outside/ (never indexed: two images and a secret)."""
    photos, outside, other = root / "photos", root / "outside", root / "elsewhere"
    images = make_images(photos, 8, 5)
    outside_images = make_images(outside, 2, 1005, prefix="outside")
    (outside / "secret.txt").write_bytes(SECRET)
    added = make_images(other, 2, 77, prefix="other")
    os.symlink(outside_images[1], other / "link_out.jpg")  # indexed by the walk, but leads out of elsewhere/
    heic = None
    try:
        import pillow_heif
        from PIL import Image

        pillow_heif.register_heif_opener()
        heic = other / "phone.heic"
        Image.open(images[4]).save(heic, quality=90)
    except ImportError:  # the formats extra is missing: the HEIC checks skip
        pass
    index = root / "photos.vlad"
    cli("build", str(photos), "--index", str(index), "-k", "16", "-q", "--workers", "1")
    cli("add", str(index), str(other), "-q", "--workers", "1")
    return {"photos": photos, "outside": outside, "other": other, "index": index, "images": images,
            "outside_images": outside_images, "added": added, "heic": heic}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    project = make_library(tmp_path_factory.mktemp("server-files"))
    with serve(project["index"]) as base:
        yield base, project


def test_an_image_added_from_another_folder_is_served_with_its_thumbnail(server):
    base, project = server
    name = str(project["added"][0])
    assert name.startswith("/")  # outside the root: the index names it by its absolute path
    response = httpx.get(image_url(base, name), timeout=30)
    assert response.status_code == 200 and response.content == project["added"][0].read_bytes()
    thumbnail = httpx.get(image_url(base, name, "/thumbnail"), timeout=30)
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert thumbnail.content[:2] == b"\xff\xd8"


def test_a_search_names_the_other_folders_image_as_the_page_asks_for_it(server):
    base, project = server
    query = project["added"][1]
    with open(query, "rb") as handle:
        matches = httpx.post(f"{base}/api/search", files={"image": ("q.jpg", handle)}, params={"rerank": 0},
                             timeout=60).json()["matches"]
    assert matches[0]["image"] == str(query)
    assert httpx.get(image_url(base, matches[0]["image"], "/thumbnail"), timeout=30).status_code == 200


def test_heic_added_from_elsewhere_has_a_thumbnail_and_an_heic_query_is_searched(server):
    base, project = server
    if project["heic"] is None:
        pytest.skip('HEIC needs the extra: pip install ".[formats]"')
    thumbnail = httpx.get(image_url(base, str(project["heic"]), "/thumbnail"), timeout=30)
    assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"
    with open(project["heic"], "rb") as handle:
        response = httpx.post(f"{base}/api/search", files={"image": ("phone.heic", handle)}, params={"rerank": 0},
                              timeout=60)
    assert response.status_code == 200, response.text
    found = [m["image"] for m in response.json()["matches"][:2]]
    assert str(project["heic"]) in found and project["images"][4].name in found


def test_nothing_but_indexed_files_inside_their_folders_is_served(server):
    base, project = server
    other = str(project["other"])
    secret = project["outside"] / "secret.txt"
    refused = [
        image_url(base, f"{other}/link_out.jpg"),  # indexed, but a symlink leading out of its folder
        image_url(base, f"{other}/link_out.jpg", "/thumbnail"),
        image_url(base, str(secret)),  # a real file, never indexed
        image_url(base, str(project["outside_images"][0])),  # an image, never indexed
        image_url(base, "/etc/passwd"),
    ]
    for url in refused:
        response = httpx.get(url, timeout=30)
        assert response.status_code == 404 and response.json()["error"], url
        assert SECRET not in response.content
    for target in (f"/api/images/{other}/../outside/secret.txt", f"/api/images/{other}/%2e%2e/outside/secret.txt",
                   f"/api/images/{quote(other, safe='')}%2f..%2foutside%2fsecret.txt",
                   f"/api/images/{other}//other_77_000.jpg", f"/api/images/{other}/./other_77_000.jpg"):
        status, body, content_type = raw_get(base, target)
        assert 400 <= status < 500 and SECRET not in body, target
        assert content_type.startswith("application/json"), target


def multipart(size: int) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + b"\xff\xd8" + bytes(size) + f"\r\n--{boundary}--\r\n".encode(), boundary


def test_a_60_mb_upload_gets_its_413_and_json_error_in_urllib(server):
    base, _ = server
    body, boundary = multipart(BIG)
    request = urllib.request.Request(f"{base}/api/search", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    for attempt in range(3):  # the reset was intermittent before: every try must get the answer
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=120)
        assert caught.value.code == 413, attempt
        assert "limit" in json.loads(caught.value.read())["error"]
    assert httpx.get(f"{base}/api/info", timeout=30).status_code == 200


def test_a_60_mb_upload_gets_its_413_in_requests_and_curl(server, tmp_path):
    base, _ = server
    body, boundary = multipart(BIG)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    requests = pytest.importorskip("requests")
    response = requests.post(f"{base}/api/images", data=body, headers=headers, timeout=120)
    assert response.status_code == 413 and "limit" in response.json()["error"]
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    upload = tmp_path / "big.jpg"
    upload.write_bytes(b"\xff\xd8" + bytes(BIG))
    for expect in ([], ["-H", "Expect:"]):  # with and without curl's "Expect: 100-continue"
        result = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-F", f"image=@{upload}",
                                 *expect, f"{base}/api/search"], capture_output=True, text=True, timeout=120)
        answer, status = result.stdout.rsplit("\n", 1)
        assert status == "413" and "limit" in json.loads(answer)["error"], (expect, result.stderr)
