"""A real server (subprocess, torch unimportable) and a real HTTP client: answers, bad requests,
fuzz, metrics and dynamic batching."""

from __future__ import annotations

import asyncio
import io
import json
import random
import re
import socket

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from lightning_accel.data.digits import load_digits_tensors

SAMPLE = (1, 8, 8)


@pytest.fixture(scope="module")
def digits_images() -> np.ndarray:
    images, _ = load_digits_tensors()
    return images[:64].numpy()


@pytest.fixture(scope="module")
def bare(digits_export):
    """The bare ONNX Runtime session: the reference the server must reproduce."""
    session = ort.InferenceSession(str(digits_export / "model.onnx"))
    name = session.get_inputs()[0].name

    def probabilities(x: np.ndarray) -> np.ndarray:
        logits = session.run(None, {name: x.astype(np.float32)})[0].astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    return probabilities


def post_json(server, value, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json=value, timeout=30, **kwargs)


def assert_matches(prediction: list[dict], expected: np.ndarray, k: int = 5) -> None:
    classes = [p["class"] for p in prediction]
    probabilities = [p["probability"] for p in prediction]
    assert len(prediction) == k
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) <= 1 + 1e-9
    assert classes == list(np.argsort(-expected, kind="stable")[:k])
    np.testing.assert_allclose(probabilities, np.sort(expected)[::-1][:k], atol=1e-5)


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8), mode=mode if mode != "L" else None).save(buffer, "PNG")
    return buffer.getvalue()


def test_one_sample_gets_the_top_5_classes_of_the_bare_runtime(server, digits_images, bare) -> None:
    answer = post_json(server, digits_images[0].tolist())
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"  # encoded in the worker
    (prediction,) = answer.json()["predictions"]
    assert_matches(prediction, bare(digits_images[:1])[0])
    assert prediction[0]["label"] == str(prediction[0]["class"])  # the digits' class names


def test_a_batch_in_one_request_is_answered_in_order(server, digits_images, bare) -> None:
    batch = digits_images[:5]
    answer = post_json(server, {"inputs": batch.tolist()})
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert len(predictions) == 5
    for prediction, expected in zip(predictions, bare(batch), strict=True):
        assert_matches(prediction, expected)


def test_a_png_is_preprocessed_like_the_training_data(server, digits_images, bare) -> None:
    # The digits are 0..16 intensities scaled to x / 8 - 1; the same image as 8-bit pixels:
    intensities = (digits_images[3][0] + 1) * 8  # 0..16
    pixels = np.round(intensities * 255 / 16)
    answer = httpx.post(
        f"{server.url}/predict",
        content=png(pixels),
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    (prediction,) = answer.json()["predictions"]
    x = ((pixels / 255 - 0.5) / 0.5)[np.newaxis, np.newaxis]
    np.testing.assert_allclose(x[0], digits_images[3], atol=1.01 / 255)  # same as training
    assert_matches(prediction, bare(x)[0])


def _bad_requests(digits_images: np.ndarray) -> dict[str, tuple[dict, int, str]]:
    """kind -> (httpx.post keyword arguments, status, message fragment)."""
    sample = digits_images[0].tolist()
    rgb = np.zeros((8, 8, 3), np.uint8)
    return {
        "wrong shape": ({"json": [[1.0, 2.0]]}, 422, r"wrong shape \[1, 2\]"),
        "ragged arrays": ({"json": [[1.0], [1.0, 2.0]]}, 422, "uneven lengths"),
        "wrong dtype (strings)": ({"json": [["a"] * 8] * 8}, 422, "wrong dtype: got strings"),
        "wrong dtype (booleans)": ({"json": [[[True] * 8] * 8]}, 422, "got booleans"),
        "NaN": ({"content": json.dumps([[[float("nan")] * 8] * 8])}, 422, "NaN or infinite"),
        "infinity": (
            {"content": json.dumps([[[1.0] * 8] * 8]).replace("1.0", "1e999")},
            422,
            "NaN or infinite",
        ),
        "overflowing numbers": (
            {"content": json.dumps([[[1e300] * 8] * 8])},
            422,
            "overflow float32",
        ),
        "empty body": ({"content": b""}, 400, "empty body"),
        "malformed JSON": ({"content": b"[1, 2"}, 400, "malformed JSON"),
        "JSON object with other keys": ({"json": {"x": sample}}, 422, "only the key 'inputs'"),
        "not an image": (
            {"content": b"\x89PNG\r\n\x1a\n garbage", "headers": {"content-type": "image/png"}},
            415,
            "not a readable PNG or JPEG",
        ),
        "unsupported image type": (
            {"content": b"GIF89a", "headers": {"content-type": "image/gif"}},
            415,
            "unsupported image type",
        ),
        "image of the wrong size": (
            {"content": png(np.zeros((28, 28))), "headers": {"content-type": "image/png"}},
            422,
            r"got 28x28 mode L, this model takes 8x8 mode L \(refused, not resized",
        ),
        "image of the wrong channels": (
            {"content": png(rgb, "RGB"), "headers": {"content-type": "image/png"}},
            422,
            "got 8x8 mode RGB, this model takes 8x8 mode L",
        ),
        "body over the limit": ({"content": b"[" + b"0," * 40000 + b"0]"}, 413, "body too large"),
        "too many samples": ({"json": [sample] * 33}, 413, "too many samples: 33"),
    }


BAD_KINDS = list(_bad_requests(np.zeros((1, *SAMPLE), np.float32)))


@pytest.mark.bad_input("request")
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_request_gets_one_4xx_message_then_the_server_still_serves(
    server, digits_images, kind
) -> None:
    kwargs, status, message = _bad_requests(digits_images)[kind]
    answer = httpx.post(f"{server.url}/predict", timeout=30, **kwargs)
    assert answer.status_code == status, answer.text
    assert re.search(message, answer.json()["detail"]), answer.json()["detail"]
    assert post_json(server, digits_images[0].tolist()).status_code == 200


def _raw_answer(server, head: bytes, body: bytes) -> bytes:
    """Send a request head and part of a body that never ends; read what the server answers."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head + body)  # ... and nothing more: the body is never complete
        answer = b""
        while b"}" not in answer:  # the JSON error body closes with a brace
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


@pytest.mark.bad_input("request")
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(server, declared) -> None:
    if declared:  # 10 MB announced, none sent: refused from the header alone
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
        body = b""
    else:  # chunked, no length: refused at the chunk that crosses 64 KiB
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"".join(b"4000\r\n" + b" " * 0x4000 + b"\r\n" for _ in range(5))
    answer = _raw_answer(server, head, body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"body too large" in answer
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


@pytest.mark.bad_input("request")
def test_a_fuzz_of_200_bad_requests_leaves_the_server_healthy(server, digits_images, bare) -> None:
    rng = random.Random(0)
    bad = list(_bad_requests(digits_images).values())
    valid = json.dumps(digits_images[0].tolist()).encode()

    def mutated() -> dict:
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return {"content": bytes(data)}

    requests = [rng.choice(bad)[0] if i % 2 else mutated() for i in range(200)]

    async def fire() -> list[int]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            answers = await asyncio.gather(*(client.post("/predict", **r) for r in requests))
        return [a.status_code for a in answers]

    statuses = asyncio.run(fire())
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    assert sum(400 <= s < 500 for s in statuses) >= 150  # a mutation may still be valid JSON
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
    answer = post_json(server, digits_images[:1].tolist())
    assert_matches(answer.json()["predictions"][0], bare(digits_images[:1])[0])


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_count_requests_errors_latency_and_batch_sizes(server, digits_images) -> None:
    before = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert post_json(server, digits_images[0].tolist()).status_code == 200
    assert post_json(server, [[1.0, 2.0]]).status_code == 422
    after = httpx.get(f"{server.url}/metrics", timeout=5).text
    ok, unprocessable = (
        'lightning_accel_requests_total{code="200"}',
        'lightning_accel_request_errors_total{code="422"}',
    )
    assert _metric(after, ok) == _metric(before, ok) + 1
    assert _metric(after, unprocessable) == _metric(before, unprocessable) + 1
    latency = "lightning_accel_request_latency_seconds_count"
    assert _metric(after, latency) == _metric(before, latency) + 2
    calls = "lightning_accel_batch_size_count"  # the 422 never reached the runtime
    assert _metric(after, calls) == _metric(before, calls) + 1


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    server, digits_images, bare
) -> None:
    before = httpx.get(f"{server.url}/metrics", timeout=5).text
    samples = digits_images[:48]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/predict", json=s.tolist()) for s in samples)
            )

    answers = asyncio.run(fire())
    expected = bare(samples)
    for answer, reference in zip(answers, expected, strict=True):
        assert answer.status_code == 200, answer.text
        assert_matches(answer.json()["predictions"][0], reference)
    after = httpx.get(f"{server.url}/metrics", timeout=5).text
    requests = _metric(after, "lightning_accel_batch_requests_sum") - _metric(
        before, "lightning_accel_batch_requests_sum"
    )
    calls = _metric(after, "lightning_accel_batch_requests_count") - _metric(
        before, "lightning_accel_batch_requests_count"
    )
    assert requests == 48
    assert calls < 48  # at least one runtime call served several requests


def test_health_info_and_liveness(server) -> None:
    assert httpx.get(f"{server.url}/health", timeout=5).text == "ok"
    assert httpx.get(f"{server.url}/", timeout=5).status_code == 200
    info = httpx.get(f"{server.url}/info", timeout=5).json()["model"]
    assert info["backend"] == "onnxruntime"
    assert info["input"]["sample_shape"] == list(SAMPLE)
    assert info["max_batch_size"] == 8
