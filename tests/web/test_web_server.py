"""``glidekit serve`` as a real server (a subprocess on 127.0.0.1, tiny models) driven through
``gradio_client``: both API endpoints, bad input, 20 concurrent clients, cleanup at exit.

The browser tests (tests/test_web_browser.py) reuse :func:`start_server`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import TIMEOUT, Server, random_picture, save_tiny_models, square_mask, start_server  # noqa: F401
from PIL import Image

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402

from glidekit.pipelines import read_png_params  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


def gen_args(**over):
    args = dict(
        prompt="a red circle", num_images=1, guidance_scale=3.0, steps="4", sampler="ancestral",
        seed=0, random_seed=True, upsample=True,
    )  # fmt: skip
    args.update(over)
    return args


def inp_args(image, mask, **over):
    return dict(image=image, mask=mask, **gen_args(prompt="a dog", guidance_scale=5.0, **over))


def refused(client: Client, api_name: str, words: str, **kwargs) -> str:
    """Call the endpoint, expect it to fail with a message containing ``words``."""
    with pytest.raises(Exception) as info:  # noqa: B017 (client errors have several types)
        client.predict(**kwargs, api_name=api_name)
    message = str(info.value)
    assert words.lower() in message.lower(), message
    return message


# --------------------------------------------------------------------------- API


def test_api_generate_pngs_with_metadata(server, tmp_path):
    client = server.client(tmp_path)
    gallery, seed, files = client.predict(**gen_args(num_images=2, seed=7, random_seed=False),
                                          api_name="/generate")  # fmt: skip
    assert seed == 7 and len(gallery) == 2 and len(files) == 2
    for i, f in enumerate(files):
        params = read_png_params(f)
        assert params["seed"] == 7 and params["prompt"] == "a red circle" and params["index"] == i
        assert params["steps"] == "4" and params["upsample_steps"] == "ddim4"
        assert Image.open(f).size == (32, 32)
    # the same seed and batch give the same pictures; "random" picks one and says which
    again = client.predict(**gen_args(num_images=2, seed=7, random_seed=False),
                           api_name="/generate")  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(files[0])), np.asarray(Image.open(again[2][0])))
    _, used, files = client.predict(**gen_args(upsample=False), api_name="/generate")
    assert read_png_params(files[0])["seed"] == used and Image.open(files[0]).size == (8, 8)


def test_api_inpaint(server, tmp_path):
    client = server.client(tmp_path / "dl")
    picture, mask = tmp_path / "p.png", tmp_path / "m.png"
    random_picture((64, 64), seed=4).save(picture)
    square_mask((64, 64), (16, 16, 40, 40)).save(mask)
    source, mask_out, gallery, seed, files = client.predict(
        **inp_args(handle_file(str(picture)), handle_file(str(mask)), seed=3, random_seed=False),
        api_name="/inpaint",
    )
    result = np.asarray(Image.open(files[0])).astype(int)
    src = np.asarray(Image.open(source).convert("RGB")).astype(int)
    replaced = np.asarray(Image.open(mask_out).convert("L")) > 127
    assert seed == 3 and result.shape == (32, 32, 3) and replaced.any()
    assert np.array_equal(result[~replaced], src[~replaced])
    assert read_png_params(files[0])["prompt"] == "a dog"


def test_bad_input_is_refused_and_the_server_carries_on(server, tmp_path):
    client = server.client(tmp_path / "dl")
    ok_img, ok_mask = tmp_path / "ok.png", tmp_path / "mask.png"
    random_picture((32, 32)).save(ok_img)
    square_mask((32, 32), (8, 8, 20, 20)).save(ok_mask)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1)).save(one)
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(11 * 1024 * 1024))

    refused(client, "/generate", "prompt is empty", **gen_args(prompt="   "))
    refused(client, "/generate", "too long", **gen_args(prompt="x" * 5000))
    refused(client, "/generate", "steps", **gen_args(steps="100000"))
    refused(client, "/generate", "steps", **gen_args(steps="lots"))
    refused(client, "/generate", "4", **gen_args(num_images=1000))
    refused(client, "/generate", "not in the list", **gen_args(sampler="../../etc"))
    refused(client, "/inpaint", "not an image",
            **inp_args(handle_file(str(text)), handle_file(str(ok_mask))))  # fmt: skip
    refused(client, "/inpaint", "too small: 1x1",
            **inp_args(handle_file(str(one)), handle_file(str(ok_mask))))  # fmt: skip
    refused(client, "/inpaint", "mask",
            **inp_args(handle_file(str(ok_img)), handle_file(str(one))))  # fmt: skip
    with pytest.raises(Exception) as info:  # noqa: B017 (refused at upload, before the job)
        client.predict(**inp_args(handle_file(str(big)), handle_file(str(ok_mask))),
                       api_name="/inpaint")  # fmt: skip
    assert "413" in str(info.value) or "size" in str(info.value).lower(), str(info.value)
    # a path on the server is not an upload
    for path in ("/etc/passwd", str(server.log)):
        fake = {"path": path, "meta": {"_type": "gradio.FileData"}}
        with pytest.raises(Exception):  # noqa: B017
            client.predict(**inp_args(fake, handle_file(str(ok_mask))), api_name="/inpaint")
    # still serving
    assert server.process.poll() is None
    assert len(client.predict(**gen_args(), api_name="/generate")[2]) == 1


def test_twenty_concurrent_clients(server, tmp_path):
    """Each request succeeds or is told the server is busy; none hangs; memory stays bounded."""
    warm = server.client(tmp_path / "warm")
    warm.predict(**gen_args(num_images=2), api_name="/generate")  # models loaded
    rss_before = server.rss_kb()
    outcomes: dict[int, str] = {}
    ranks: list[int] = []
    start = threading.Barrier(20)

    def one(i: int) -> None:
        try:
            client = server.client(tmp_path / f"c{i}")
            start.wait(TIMEOUT)
            job = client.submit(**gen_args(steps="40", num_images=2, upsample=i % 2 == 0),
                                api_name="/generate")  # fmt: skip
            deadline = time.monotonic() + TIMEOUT
            while not job.done() and time.monotonic() < deadline:
                status = job.status()
                if status.rank is not None and status.code.name == "IN_QUEUE":
                    ranks.append(status.rank)
                time.sleep(0.05)
            files = job.result(timeout=max(1.0, deadline - time.monotonic()))[2]
            outcomes[i] = "ok" if len(files) == 2 else f"bad result {files}"
        except Exception as exc:
            text = str(exc).lower()
            outcomes[i] = "busy" if "queue is full" in text else f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(20)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT + 30)
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert len(outcomes) == 20
    assert set(outcomes.values()) <= {"ok", "busy"}, outcomes
    assert "ok" in outcomes.values() and "busy" in outcomes.values(), outcomes
    assert ranks and max(ranks) >= 1  # waiting clients were told their place in the queue
    assert time.monotonic() - t0 < TIMEOUT + 30
    rss_after = server.rss_kb()
    assert rss_after - rss_before < 300 * 1024, (rss_before, rss_after)
    assert len(warm.predict(**gen_args(), api_name="/generate")[2]) == 1  # still answers


def test_serve_removes_its_work_folder_at_exit(tmp_path):
    srv = start_server(tmp_path, queue_size=2)
    try:
        client = srv.client(tmp_path / "dl")
        client.predict(**gen_args(), api_name="/generate")
        work = list(srv.tmp.glob("glidekit-web-*"))
        assert len(work) == 1 and any(work[0].rglob("*.png"))
    finally:
        code = srv.stop()
    assert code == 0, srv.log.read_text()[-2000:]
    assert not list(srv.tmp.glob("glidekit-web-*"))
