"""`fastblt serve`: the OpenAI-compatible server on the loopback address, driven by the official
openai client (streaming and not), concurrency, disconnects, bad requests."""
import json
import socket
import threading
import time

import pytest

import fastblt

from helpers import tiny_model

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from fastblt.server import create_app  # noqa: E402

MODEL_ID = "tiny"


@pytest.fixture(scope="module")
def served():
    model = tiny_model(diffusion_block_size=4)
    app = create_app(model, model_id=MODEL_ID, max_body_bytes=4096)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    yield model, url, client
    server.should_exit = True
    thread.join(timeout=10)


def health(url):
    r = httpx.get(f"{url}/health", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    return r.json()


def expected(model, prompt, n, method="blt", stop=(), **kw):
    r = fastblt.generate(model, prompt, method=method, max_new_bytes=n, stop=[s.encode() for s in stop], **kw)
    data = r.bytes
    if r.stop_reason == "stop":  # OpenAI: the stop string is not returned
        data = data[: len(data) - max((len(s.encode()) for s in stop if data.endswith(s.encode())))]
    return data.decode("utf-8", errors="replace"), r


CASES = [("blt", {}), ("blt-s", {"draft_length": 4}), ("blt-dv", {"block_size": 4}), ("blt-d", {"unmask": "one-step"})]


@pytest.mark.parametrize("method,extra", CASES)
def test_streamed_equals_non_streamed_equals_generate(served, method, extra):
    model, url, client = served
    prompt = "def add(a, b):"
    want, ref = expected(model, prompt, 48, method, **extra)
    body = dict(model=MODEL_ID, prompt=prompt, max_tokens=48, temperature=0, extra_body={"method": method, **extra})
    r = client.completions.create(**body)
    assert r.choices[0].text == want
    assert r.choices[0].finish_reason == ("length" if ref.stop_reason == "length" else "stop")
    u = r.usage.model_dump()
    assert u["completion_tokens"] == ref.stats["new_bytes"] and u["prompt_tokens"] == len(prompt)
    for key in ("decoder_nfe", "global_nfe", "acceptance_rate", "est_bandwidth_gb", "est_bandwidth_gb_3b"):
        assert u[key] == ref.stats[key]
    chunks = list(client.completions.create(stream=True, **body))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].usage.model_dump()["decoder_nfe"] == ref.stats["decoder_nfe"]


def test_stop_strings_are_not_returned(served):
    model, _, client = served
    ref = fastblt.generate(model, "x = ", max_new_bytes=40).bytes
    i = next(i for i in range(8, len(ref) - 1) if ref[i] < 128 and ref[i + 1] < 128)  # an ASCII pair in the output
    stop = ref[i : i + 2].decode()
    want, r = expected(model, "x = ", 40, stop=[stop, "\x01never"])
    assert r.stop_reason == "stop"
    body = dict(model=MODEL_ID, prompt="x = ", max_tokens=40, temperature=0, stop=[stop, "\x01never"])
    got = client.completions.create(**body)
    assert got.choices[0].text == want and got.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**body, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == want


def test_stop_filter_holds_back_possible_stop_prefixes():
    from fastblt.generation.api import GenerationResult
    from fastblt.server import StopFilter

    f = StopFilter([b"END"])
    parts = [f.feed(b"abcE"), f.feed(b"N"), f.feed(b"xyzEN"), f.feed(b"D")]
    assert parts == ["ab", "c", "ENxyz", ""]
    assert f.finish(GenerationResult(b"abcENxyzEND", {}, "stop")) == ""
    f = StopFilter([])
    assert f.feed("é".encode()[:1]) == "" and f.finish(GenerationResult("é".encode(), {}, "length")) == "é"


def test_two_concurrent_clients_get_their_own_outputs(served):
    model, url, client = served
    jobs = [("The quick brown fox", "blt-s", {"draft_length": 8}, True), ("import numpy as np", "blt", {}, False),
            ("Hello, world", "blt-dv", {}, True)]
    wants = [expected(model, p, 64, m, **kw)[0] for p, m, kw, _ in jobs]
    got = [None] * len(jobs)

    def run(i):
        p, m, kw, stream = jobs[i]
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        r = c.completions.create(model=MODEL_ID, prompt=p, max_tokens=64, temperature=0, stream=stream,
                                 extra_body={"method": m, **kw})
        got[i] = "".join(x.choices[0].text for x in r if x.choices) if stream else r.choices[0].text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert got == wants


def test_client_disconnecting_mid_stream_leaves_server_healthy(served):
    model, url, client = served
    before = health(url)["requests"]["cancelled"]
    stream = client.completions.create(model=MODEL_ID, prompt="a", max_tokens=20000, temperature=0, stream=True,
                                       extra_body={"method": "blt", "ignore_eos": True})
    first = next(iter(stream))
    assert first.choices[0].finish_reason is None
    stream.close()
    for _ in range(1200):  # the generation is cancelled at its next verified chunk
        if health(url)["requests"]["cancelled"] > before:
            break
        time.sleep(0.05)
    assert health(url)["requests"]["cancelled"] == before + 1
    want, _ = expected(model, "b", 16)
    assert client.completions.create(model=MODEL_ID, prompt="b", max_tokens=16, temperature=0).choices[0].text == want


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(served):
    model, url, client = served
    base = dict(model=MODEL_ID, prompt="hi", max_tokens=4, temperature=0)
    with pytest.raises(openai.BadRequestError, match="unknown method"):
        client.completions.create(**base, extra_body={"method": "beam"})
    with pytest.raises(openai.BadRequestError, match="does not take"):
        client.completions.create(**base, extra_body={"method": "blt", "draft_length": 4})
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(**{**base, "max_tokens": model.cfg.max_seq_len})
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(**{**base, "max_tokens": model.cfg.max_seq_len}, stream=True)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(**{**base, "temperature": -1})
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.completions.create(**{**base, "model": "gpt-4"})
    with pytest.raises(openai.BadRequestError, match="unknown field"):
        client.completions.create(**base, extra_body={"__class__": "os.system"})
    post = lambda data: httpx.post(f"{url}/v1/completions", content=data, timeout=30,  # noqa: E731
                                   headers={"content-type": "application/json"})
    r = post(b"{not json")
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = post(json.dumps({**base, "prompt": "x" * 5000}).encode())
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    r = post(b'"just a string"')
    assert r.status_code == 400
    assert health(url)["status"] == "ok"
    assert client.completions.create(**base).choices[0].text == expected(model, "hi", 4)[0]


def test_models_endpoint(served):
    _, url, client = served
    assert [m.id for m in client.models.list()] == [MODEL_ID]
    assert health(url)["model"] == MODEL_ID


def test_serve_binds_loopback_by_default():
    from fastblt.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.model == "default"
