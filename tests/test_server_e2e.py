"""The real `vladsearch serve` process on a loopback port, with other processes writing to its index."""

from __future__ import annotations

import http.client
import json
import threading
from urllib.parse import urlparse

import pytest

pytest.importorskip("fastapi", reason="the server needs the extra: pip install '.[serve]'")
pytest.importorskip("uvicorn", reason="the server needs the extra: pip install '.[serve]'")
import httpx
from live_helpers import cli, make_images, popen_cli
from server_helpers import SECRET, make_project, serve, wait_for
from test_images_hostile import png_bomb

# Commits of other processes must show within this (the bound; the server checks every 0.5 s here).
FOLLOW_WITHIN_S = 15


# The start of a valid multipart body whose file part then goes on and on.
PART_HEAD = (b'--xyz\r\nContent-Disposition: form-data; name="images"; filename="big.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n\xff\xd8")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("server-e2e"))
    with serve(project["index"]) as base:
        yield base, project


def search(base: str, path, name: str | None = None, **params) -> httpx.Response:
    with open(path, "rb") as handle:
        return httpx.post(f"{base}/api/search", params=params, files={"image": (name or path.name, handle)},
                          timeout=60)


def top_image(base: str, path) -> str | None:
    body = search(base, path).json()
    assert "matches" in body, body
    matches = body["matches"]
    return matches[0]["image"] if matches and matches[0]["score"] > 0.99 else None


def raw_get(base: str, target: str) -> tuple[int, bytes, str]:
    """GET with the request target sent exactly as given (no client-side normalisation of .. or %2e)."""
    url = urlparse(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("content-type", "")
    finally:
        connection.close()


def test_exact_copy_comes_first(server):
    base, project = server
    response = search(base, project["images"][5], name="copy.jpg", top=3)
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "copy.jpg" and body["answer"] == "identical"
    first = body["matches"][0]
    assert first["image"] == project["images"][5].name and first["verdict"] == "identical" and first["score"] == 1.0
    assert all(m["verified"] for m in body["matches"]) and len(body["matches"]) <= 3


def test_hostile_requests_get_4xx_json_and_the_server_stays_up(server, tmp_path):
    base, project = server
    jpeg = project["images"][0].read_bytes()
    png_bomb(tmp_path / "bomb.png", 30000)
    uploads = {"text.jpg": b"hello, I am text\n" * 100, "cut.jpg": jpeg[: len(jpeg) // 3],
               "bomb.png": (tmp_path / "bomb.png").read_bytes()}
    for name, data in uploads.items():
        response = httpx.post(f"{base}/api/search", files={"image": (name, data)}, timeout=60)
        assert response.status_code == 400 and name in response.json()["error"], (name, response.text)
    big = b"\xff\xd8" + bytes(60 * 1024 * 1024)
    response = httpx.post(f"{base}/api/search", files={"image": ("big.jpg", big)}, timeout=120)
    assert response.status_code == 413 and "limit" in response.json()["error"]

    def chunked():  # no Content-Length: the limit holds while the body arrives
        yield PART_HEAD
        for _ in range(60):
            yield bytes(1024 * 1024)

    response = httpx.post(f"{base}/api/images", content=chunked(), timeout=120,
                          headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 413 and response.json()["error"]
    assert httpx.get(f"{base}/api/info", timeout=30).status_code == 200
    assert top_image(base, project["images"][1]) == project["images"][1].name


@pytest.mark.parametrize("target", [
    "/api/images/../../outside/secret.txt", "/api/images/%2e%2e%2f%2e%2e%2foutside%2fsecret.txt",
    "/api/images/%2e%2e/outside/secret.txt", "/api/images/..%2foutside%2fsecret.txt",
    "/api/images/%2e%2e%2foutside%2fsecret.txt/thumbnail", "/api/images//etc/passwd", "/api/images/%2fetc%2fpasswd",
    "/api/images/img_5_000.jpg/..%2f..%2f..%2foutside%2fsecret.txt", "/api/images/link_out.jpg",
    "/api/images/link_out.jpg/thumbnail", "/api/images/dir_out/outside_1005_001.jpg", "/api/images/dir_out/secret.txt",
    "/api/images/..%5c..%5coutside%5csecret.txt", "/../../../etc/passwd", "/static/../../../etc/passwd",
    "/static/%2e%2e%2f%2e%2e%2fcli.py"])
def test_path_traversal_never_returns_a_file(server, target):
    base, project = server
    status, body, content_type = raw_get(base, target)
    assert 400 <= status < 500, (target, status)
    for secret in (SECRET, project["outside_images"][0].read_bytes()[:64], project["outside_images"][1].read_bytes()[:64],
                   b"root:x:0:0", b"def add_cli"):
        assert secret not in body, target
    if target.startswith("/api/"):
        assert content_type.startswith("application/json") and json.loads(body)["error"]
    assert raw_get(base, "/api/info")[0] == 200


def test_an_image_added_by_the_cli_is_found_without_restart(server, tmp_path):
    base, project = server
    new = make_images(project["photos"] / "from_cli", 1, 321, prefix="cli")[0]
    assert top_image(base, new) is None
    cli("add", str(project["index"]), str(new), "-q", "--workers", "1")  # another process commits
    found = wait_for(lambda: top_image(base, new), FOLLOW_WITHIN_S, "the CLI's image through the API")
    assert found == "from_cli/cli_321_000.jpg"
    assert httpx.get(f"{base}/api/images/{found}", timeout=30).content == new.read_bytes()


def test_concurrent_clients_during_commits_of_another_process_get_only_right_answers(server, tmp_path):
    """Searches from 4 threads while `vladsearch add` commits twice: every answer is a 200 with the right image first."""
    base, project = server
    batches = [make_images(tmp_path / f"batch{n}", 3, 900 + n, prefix=f"b{n}") for n in range(2)]
    writer = popen_cli("add", str(project["index"]), *(str(b[0].parent) for b in batches[:1]), "-q", "--workers", "1")
    answers: list = []

    def client(number: int) -> None:
        with httpx.Client(timeout=120) as session:
            for i in range(12):
                query = project["images"][(number * 3 + i) % 9]
                with open(query, "rb") as handle:
                    response = session.post(f"{base}/api/search", files={"image": (query.name, handle)})
                answers.append((response.status_code, query.name,
                                response.json()["matches"][0]["image"] if response.status_code == 200 else None))
                if number == 0 and i == 6:
                    cli("add", str(project["index"]), str(batches[1][0].parent), "-q", "--workers", "1")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.wait(timeout=300) == 0, writer.stderr.read()
    assert len(answers) == 48
    assert [a for a in answers if a[0] != 200 or a[1] != a[2]] == []
    wait_for(lambda: top_image(base, batches[1][2]), FOLLOW_WITHIN_S, "the second batch found")


def test_an_image_removed_by_the_cli_stops_being_served(server):
    base, project = server
    victim = project["images"][10].name
    assert httpx.get(f"{base}/api/images/{victim}", timeout=30).status_code == 200
    cli("remove", str(project["index"]), victim)
    wait_for(lambda: httpx.get(f"{base}/api/images/{victim}", timeout=30).status_code == 404, FOLLOW_WITHIN_S,
             "the removed image refused")
    assert top_image(base, project["images"][10]) is None


def test_uploaded_image_becomes_searchable_and_a_removed_one_stops_being_served(server, tmp_path):
    base, project = server
    new = make_images(tmp_path, 1, 654, prefix="up")[0]
    response = httpx.post(f"{base}/api/images", files=[("images", (new.name, new.read_bytes()))], timeout=120)
    assert response.status_code == 200 and response.json()["indexed"] == 1
    stored = response.json()["images"][0]["image"]
    assert stored.startswith("uploads/") and top_image(base, new) == stored
    assert httpx.get(f"{base}/api/images/{stored}/thumbnail", timeout=30).status_code == 200
    assert httpx.delete(f"{base}/api/images/{stored}", timeout=120).status_code == 200
    assert httpx.get(f"{base}/api/images/{stored}", timeout=30).status_code == 404
    assert top_image(base, new) is None
    info = json.loads(cli("info", str(project["index"]), "--json").stdout)  # the commit is on disk, for everyone
    assert stored not in {row["path"] for row in info["skipped_files"]} and info["counts"]["deletions"] >= 1
