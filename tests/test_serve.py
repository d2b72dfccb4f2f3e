"""bin/serve over a real HTTP server: the logits of the in-process models, a ticket drawn per R2S request, HTTP 400
for malformed requests, and concurrent clients."""
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tensorflow as tf

import ticket_fixtures
from rst_tf.deployment import export, r2s

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINGLE, SWITCHING = "cifar10_ratio_0_1", "cifar10_r2s"


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _request(url, body=None, timeout=120):
    """(HTTP status, decoded JSON body) of a GET, or of a POST of `body` (bytes or a JSON-able object)."""
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def server(tiny_bank, tmp_path_factory):
    """(base URL, the bank) of bin/serve serving a single ticket and the R2S model of `tiny_bank`."""
    bank, _ = tiny_bank
    folder = tmp_path_factory.mktemp("export")
    export.save(str(folder / SINGLE / "1"), {"cifar10": r2s.MaskBank(bank.network, bank.tickets[:1])})
    export.save(str(folder / SWITCHING / "1"), {"cifar10": bank})
    port = _free_port()
    log = open(folder / "serve.log", "w")
    process = subprocess.Popen([os.path.join(ROOT, "bin", "serve"), f"--model_dir={folder}", f"--port={port}"],
                               stdout=log, stderr=subprocess.STDOUT, cwd=str(folder))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, (folder / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "bin/serve did not become ready in 300 s"
            try:
                if _request(f"{url}/v2/health/ready", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield url, bank
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _images(count, seed=3):
    return tf.random.stateless_uniform([count, *ticket_fixtures.IMAGE_SHAPE], [seed, 0]).numpy()


def _predict(url, model, body):
    return _request(f"{url}/v1/models/{model}:predict", body)


def test_health_and_readiness(server):
    url, _ = server
    assert _request(f"{url}/")[0] == 200
    assert _request(f"{url}/v2/health/live")[0] == 200
    for model in (SINGLE, SWITCHING):
        status, body = _request(f"{url}/v1/models/{model}")
        assert status == 200 and body["ready"] is True
    assert _request(f"{url}/v1/models/absent")[0] == 404


def test_served_logits_match_the_in_process_model(server):
    url, bank = server
    images = _images(3)
    expected = bank.logits(tf.constant(images), 0).numpy()
    status, body = _predict(url, SINGLE, {"instances": images.tolist()})
    assert status == 200, body
    logits = np.array([row["logits"] for row in body["predictions"]])
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    np.testing.assert_allclose([sum(row["probabilities"]) for row in body["predictions"]], 1.0, atol=1e-5)
    pixels = np.round(images * 255).astype(np.uint8)
    status, body = _predict(url, SINGLE, {"signature_name": "serving_uint8", "inputs": pixels.tolist()})
    assert status == 200, body
    np.testing.assert_allclose(body["outputs"]["logits"],
                               bank.logits(tf.constant(pixels / 255, tf.float32), 0).numpy(), atol=1e-4)
    status, body = _predict(url, SWITCHING, {"instances": []})
    assert (status, body) == (200, {"predictions": []})


def test_r2s_model_draws_a_ticket_per_request(server):
    url, bank = server
    images = _images(2, seed=4)
    every = bank.all_logits(tf.constant(images)).numpy()  # [tickets, batch, classes]
    seen = []
    for _ in range(30):
        status, body = _predict(url, SWITCHING, {"instances": images.tolist()})
        assert status == 200, body
        logits = np.array([row["logits"] for row in body["predictions"]])
        distances = np.abs(every - logits[None]).max(axis=(1, 2))
        assert distances.min() < 1e-4
        seen.append(int(distances.argmin()))
    assert len(set(seen)) >= 2, seen


@pytest.mark.parametrize("body, message", [
    (b"{not json", None),
    ({"images": [[0.5]]}, 'exactly one of "instances"'),
    ({"instances": [[[0.5] * 3] * 16] * 1}, "each image must have shape [32, 32, 3]"),
    ({"instances": [[[[0.5] * 3] * 32] * 16]}, "is not compatible with expected shape [?,32,32,3]"),
    ({"instances": [[[[2.0] * 3] * 32] * 32]}, "float images must lie in [0, 1]"),
    ({"signature_name": "serving_uint8", "instances": [[[[300] * 3] * 32] * 32]}, "integers in 0..255"),
    ({"signature_name": "other", "instances": []}, "signature_name 'other' is not one of"),
    ({"instances": [[["a"] * 3] * 32] * 32}, "numbers in equal-sized nested lists"),
])
def test_malformed_request_gets_400_and_the_server_keeps_serving(server, body, message):
    url, _ = server
    status, reply = _predict(url, SWITCHING, body)
    assert status == 400, reply
    if message is not None:
        assert message in reply["error"]
    status, reply = _predict(url, SWITCHING, {"instances": _images(1).tolist()})
    assert status == 200 and len(reply["predictions"]) == 1


def test_concurrent_clients_all_succeed(server):
    url, _ = server
    images = _images(1, seed=5).tolist()

    def client(index):
        model = SINGLE if index % 2 else SWITCHING
        return [_predict(url, model, {"instances": images}) for _ in range(50)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [reply for replies in pool.map(client, range(8)) for reply in replies]
    assert len(results) == 400
    assert all(status == 200 and len(body["predictions"][0]["logits"]) == 10 for status, body in results)
