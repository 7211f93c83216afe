"""The verified download path, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lightning_ae.data import DatasetFileError, DownloadError, MNISTDataModule, download_file
from tests.conftest import write_mnist

PAYLOAD = bytes(range(256)) * 400  # 100 KiB
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:
        mode, _, name = self.path.strip("/").partition("/")
        if mode == "down" or name not in self.files:
            self.send_error(404)
            return
        body = self.files[name]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "truncated":
            self.wfile.write(body[: len(body) // 3])  # then the connection closes short
        elif mode == "corrupt":
            self.wfile.write(bytes(reversed(body)))
        else:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    mnist = write_mnist(tmp_path / "src") / "MNIST" / "raw"
    _Handler.files = {"blob.bin": PAYLOAD, **{p.name: p.read_bytes() for p in mnist.iterdir()}}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_success(server: str, tmp_path: Path) -> None:
    path = download_file("blob.bin", [f"{server}/ok/"], tmp_path / "out", MD5)
    assert path.read_bytes() == PAYLOAD
    assert _leftovers(tmp_path / "out") == ["blob.bin"]


def test_truncated_response_is_rejected_and_removed(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"truncated|IncompleteRead|retrieval incomplete"):
        download_file("blob.bin", [f"{server}/truncated/"], tmp_path / "out", MD5, timeout=5)
    assert _leftovers(tmp_path / "out") == []


def test_wrong_checksum_leaves_nothing(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="md5 mismatch"):
        download_file("blob.bin", [f"{server}/corrupt/"], tmp_path / "out", MD5)
    assert _leftovers(tmp_path / "out") == []


def test_first_mirror_down_second_up(server: str, tmp_path: Path) -> None:
    path = download_file("blob.bin", [f"{server}/down/", f"{server}/ok/"], tmp_path / "out", MD5)
    assert path.read_bytes() == PAYLOAD


def test_all_mirrors_down_lists_each(server: str, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        download_file("blob.bin", [f"{server}/down/", "http://127.0.0.1:9/"], tmp_path / "out", MD5, timeout=5)
    assert f"{server}/down/blob.bin" in str(err.value)
    assert "127.0.0.1:9/blob.bin" in str(err.value)
    assert "copy blob.bin into" in str(err.value)


def test_mnist_prepare_data_downloads_verified_files(server: str, tmp_path: Path) -> None:
    md5s = {name: hashlib.md5(body).hexdigest() for name, body in _Handler.files.items() if "ubyte" in name}
    data = MNISTDataModule(data_dir=str(tmp_path), mirrors=[f"{server}/down/", f"{server}/ok/"], val_size=16)
    data.files = md5s  # the test server's files, not the official ones
    data.prepare_data()
    data.setup("fit")
    assert len(data.train_set) + len(data.val_set) == 96


def test_mnist_checksum_mismatch_fails_prepare_data(server: str, tmp_path: Path) -> None:
    data = MNISTDataModule(data_dir=str(tmp_path), mirrors=[f"{server}/ok/"])  # official md5s: the files differ
    with pytest.raises(DownloadError, match="md5 mismatch"):
        data.prepare_data()
    assert _leftovers(tmp_path / "MNIST" / "raw") == []


def test_offline_without_download_says_where_to_put_files(tmp_path: Path) -> None:
    data = MNISTDataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(DatasetFileError, match=r"MNIST/raw.*train-images-idx3-ubyte\.gz.*copy"):
        data.prepare_data()
