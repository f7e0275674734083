"""Downloads over real HTTP (a local server on 127.0.0.1): checksum, cache, interrupted
transfers that resume, offline errors, and MovieLens fetched and parsed end to end."""

from __future__ import annotations

import hashlib
import io
import threading
import urllib.error
import urllib.request
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from recozoo.data.download import DownloadError, download, extract_zip
from recozoo.data.sources import MovieLensSource
from recozoo.data.sources.movielens import RELEASES

U_DATA = "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n"
U_ITEM = ("10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
          "20|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n")


def ml100k_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-100k/u.data", U_DATA)
        archive.writestr("ml-100k/u.item", U_ITEM)
        archive.writestr("ml-100k/README", "x" * 50_000)  # room for an interruption
    return buffer.getvalue()


class FileServer:
    """Serves ``files`` (path -> bytes); honours Range; can cut the next transfer in half."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[dict[str, str]] = []
        self.cut_next = False
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, "range": self.headers.get("Range")})
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if self.headers.get("Range") and server.honour_range:
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if server.cut_next:
                    server.cut_next = False
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served():
    body = ml100k_zip()
    server = FileServer({"/ml-100k.zip": body})
    yield server, body
    server.close()


def test_download_verifies_md5_and_is_cached(served, tmp_path):
    server, body = served
    md5 = hashlib.md5(body).hexdigest()
    path = download(f"{server.url}/ml-100k.zip", tmp_path, md5=md5, progress=False)
    assert path.read_bytes() == body
    assert not path.with_name(path.name + ".part").exists()
    again = download(f"{server.url}/ml-100k.zip", tmp_path, md5=md5, progress=False)
    assert again == path and len(server.requests) == 1  # the second call did not fetch


def test_interrupted_download_is_not_taken_whole_and_resumes(served, tmp_path):
    server, body = served
    md5 = hashlib.md5(body).hexdigest()
    url = f"{server.url}/ml-100k.zip"
    server.cut_next = True
    with pytest.raises(DownloadError, match="interrupted") as error:
        download(url, tmp_path, md5=md5, progress=False)
    assert url in str(error.value)
    assert not (tmp_path / "ml-100k.zip").exists()
    part = tmp_path / "ml-100k.zip.part"
    assert 0 < part.stat().st_size < len(body)
    path = download(url, tmp_path, md5=md5, progress=False)
    assert server.requests[-1]["range"] == f"bytes={len(body) // 2}-"
    assert path.read_bytes() == body and not part.exists()


def test_server_without_ranges_restarts_the_download(served, tmp_path):
    server, body = served
    server.honour_range, server.cut_next = False, True
    url = f"{server.url}/ml-100k.zip"
    with pytest.raises(DownloadError):
        download(url, tmp_path, progress=False)
    assert download(url, tmp_path, progress=False).read_bytes() == body


def test_checksum_mismatch_deletes_the_file(served, tmp_path):
    server, _ = served
    with pytest.raises(DownloadError, match="does not match"):
        download(f"{server.url}/ml-100k.zip", tmp_path, md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_offline_name_the_url_and_the_local_path_option(served, tmp_path):
    server, _ = served
    with pytest.raises(DownloadError, match="404") as error:
        download(f"{server.url}/missing.zip", tmp_path, progress=False)
    assert f"{server.url}/missing.zip" in str(error.value)
    closed = FileServer({})
    url = f"{closed.url}/ml-100k.zip"
    closed.close()
    with pytest.raises(DownloadError, match="data.path=") as error:
        download(url, tmp_path, progress=False, timeout=5)
    assert url in str(error.value)


def test_extract_zip_is_all_or_nothing(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DownloadError, match="not a valid zip"):
        extract_zip(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_movielens_downloads_checks_unpacks_and_parses(served, tmp_path):
    server, body = served
    source = MovieLensSource(variant="100k", cache_dir=str(tmp_path),
                             url=f"{server.url}/ml-100k.zip", md5=hashlib.md5(body).hexdigest())
    data = source.load()
    assert (data.n_users, data.n_items, len(data)) == (2, 2, 3)
    assert data.items.text[list(data.item_ids).index("10")] == \
        "Toy Story. Animation, Children's, Comedy."
    assert (tmp_path / "movielens" / "ml-100k.zip").exists()


def test_movielens_default_is_the_official_url_and_fails_clearly_offline(monkeypatch, tmp_path):
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DownloadError) as error:
        MovieLensSource(variant="100k", cache_dir=str(tmp_path)).load()
    message = str(error.value)
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in message
    assert "data.path=" in message
    assert RELEASES["100k"].md5 == "0e33842e24a9c977be4e0107933c0723"


def test_ml100k_config_uses_the_cache_dir(make_config, tmp_path):
    from hydra.utils import instantiate

    cfg = make_config(["data=ml100k"], tiny=False)
    source = instantiate(cfg.data.source)
    assert isinstance(source, MovieLensSource) and source.path is None
    assert Path(source.cache_dir) == Path(cfg.paths.cache_dir)
