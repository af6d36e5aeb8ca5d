"""The built-in inference server on CPU with tiny models, through real HTTP requests.

Runs are built here in the published layout (finetune.json + adapter/ or merged/ + tokenizer):
a tiny Llama with a real (non-zero) LoRA adapter for causal-lm, a LoRA sequence classifier, and a
merged token classifier. Answers are checked against the same models run directly with
transformers/peft in the test.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from finetune_trainer.serve import InferenceServer, ServerSettings
from finetune_trainer.serve_model import group_entities, load_run
from finetune_trainer.storage import open_store
from prometheus_client.parser import text_string_to_metric_families

SEQ_LABELS = ["negative", "positive"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def write_descriptor(run: Path, **fields: Any) -> None:
    doc = {
        "task": "causal-lm",
        "baseModelUri": "",
        "method": "lora",
        "adapter": None,
        "merged": None,
        "labels": None,
        "runId": run.name,
    }
    doc.update(fields)
    (run / "finetune.json").write_text(json.dumps(doc))


def lora(task_type: str) -> Any:
    from peft import LoraConfig

    # init_lora_weights=False: random A and B, so the adapter really changes the outputs
    return LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", task_type=task_type, init_lora_weights=False
    )


@pytest.fixture(scope="module")
def causal_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("runs") / "chat-run-1234abcd"
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), lora("CAUSAL_LM"))
    model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(run)
    write_descriptor(run, baseModelUri=str(tiny_llama_dir), adapter="adapter/")
    return run


@pytest.fixture(scope="module")
def seq_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = tmp_path_factory.mktemp("runs") / "sst-run-1"
    torch.manual_seed(2)
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_llama_dir,
        num_labels=2,
        id2label=dict(enumerate(SEQ_LABELS)),
        label2id={k: i for i, k in enumerate(SEQ_LABELS)},
    )
    model = get_peft_model(base, lora("SEQ_CLS"))  # the head is saved with the adapter
    model.save_pretrained(run / "adapter")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(run)
    write_descriptor(
        run,
        task="sequence-classification",
        baseModelUri=str(tiny_llama_dir),
        adapter="adapter/",
        labels=SEQ_LABELS,
    )
    return run


@pytest.fixture(scope="module")
def ner_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    run = tmp_path_factory.mktemp("runs") / "ner-run-1"
    torch.manual_seed(3)
    model = AutoModelForTokenClassification.from_pretrained(
        tiny_llama_dir, num_labels=len(NER_LABELS), id2label=dict(enumerate(NER_LABELS))
    )
    model.save_pretrained(run / "merged")
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(run)
    write_descriptor(
        run, task="token-classification", method="full", merged="merged/", labels=NER_LABELS
    )
    return run


def start(run: Path | str, **kw: Any) -> InferenceServer:
    settings = ServerSettings(model_uri=str(run), host="127.0.0.1", port=0, grace_seconds=5, **kw)
    server = InferenceServer(settings)
    server.start()
    return server


@pytest.fixture(scope="module")
def causal_server(causal_run: Path) -> Iterator[InferenceServer]:
    server = start(causal_run, max_concurrency=2, max_body_bytes=4096, max_tokens_limit=64)
    server.wait_ready()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def seq_server(seq_run: Path) -> Iterator[InferenceServer]:
    server = start(seq_run)
    server.wait_ready()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def ner_server(ner_run: Path) -> Iterator[InferenceServer]:
    server = start(ner_run)
    server.wait_ready()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def reference(causal_run: Path, tiny_llama_dir: Path) -> Any:
    """The adapter model run directly with peft (not merged), for expected greedy outputs."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(causal_run)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = PeftModel.from_pretrained(base, causal_run / "adapter").eval()

    # the server also stops at the chat end-of-turn token <|end|>
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]

    def greedy(ids: torch.Tensor, n: int, *, adapter: bool = True) -> str:
        with torch.inference_mode():
            if adapter:
                out = model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=eos,
                )
            else:
                with model.disable_adapter():
                    out = model.generate(
                        input_ids=ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=n,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                        eos_token_id=eos,
                    )
        return str(tok.decode(out[0, ids.shape[-1] :], skip_special_tokens=True))

    return tok, greedy


def sse(lines: Iterator[str]) -> list[Any]:
    events: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# ------------------------------------------------------------------------------ causal-lm


def test_completion_matches_the_adapter_model(
    causal_server: InferenceServer, reference: Any
) -> None:
    tok, greedy = reference
    prompt = "The weather today is"
    r = httpx.post(
        causal_server.url + "/v1/completions",
        json={"model": "x", "prompt": prompt, "max_tokens": 12, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    expected = greedy(ids, 12)
    assert expected != greedy(ids, 12, adapter=False)  # the adapter matters for this prompt
    assert doc["object"] == "text_completion"
    assert doc["model"] == "chat-run-1234abcd"
    [choice] = doc["choices"]
    assert choice["text"] == expected
    assert doc["usage"]["prompt_tokens"] == ids.shape[-1]
    assert doc["usage"]["completion_tokens"] <= 12
    assert doc["usage"]["total_tokens"] == ids.shape[-1] + doc["usage"]["completion_tokens"]
    assert choice["finish_reason"] in ("length", "stop")

    # a batch of prompts gives one choice each, in order
    r = httpx.post(
        causal_server.url + "/v1/completions",
        json={"prompt": [prompt, "Paris is the"], "max_tokens": 5, "temperature": 0},
    )
    assert [c["index"] for c in r.json()["choices"]] == [0, 1]
    assert r.json()["choices"][0]["text"] == greedy(ids, 5)


def test_chat_completion(causal_server: InferenceServer, reference: Any) -> None:
    tok, greedy = reference
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    r = httpx.post(
        causal_server.url + "/v1/chat/completions",
        json={"model": "x", "messages": messages, "max_tokens": 10, "temperature": 0},
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert doc["object"] == "chat.completion"
    assert causal_server.model is not None
    assert tok.convert_tokens_to_ids("<|end|>") in causal_server.model.eos_token_ids
    assert doc["choices"][0]["message"] == {"role": "assistant", "content": greedy(ids, 10)}
    assert doc["usage"]["prompt_tokens"] == ids.shape[-1]


def test_streaming_equals_non_streaming(causal_server: InferenceServer) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}
    full = httpx.post(causal_server.url + "/v1/completions", json=body).json()
    with httpx.stream(
        "POST",
        causal_server.url + "/v1/completions",
        json={**body, "stream": True, "stream_options": {"include_usage": True}},
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if e["choices"]]
    assert len(chunks) > 2  # really incremental
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert events[-2]["usage"] == full["usage"]

    chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "temperature": 0}
    whole = httpx.post(causal_server.url + "/v1/chat/completions", json=chat).json()
    with httpx.stream(
        "POST", causal_server.url + "/v1/chat/completions", json={**chat, "stream": True}
    ) as r:
        events = sse(r.iter_lines())
    assert events[0]["object"] == "chat.completion.chunk"
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-1] == "[DONE]"


def test_stop_sequence_and_sampling(causal_server: InferenceServer) -> None:
    body = {"prompt": "The quick brown fox", "max_tokens": 16, "temperature": 0}
    full = httpx.post(causal_server.url + "/v1/completions", json=body).json()["choices"][0]["text"]
    assert len(full) > 4
    stop = full[2:4]
    cut = httpx.post(causal_server.url + "/v1/completions", json={**body, "stop": [stop]}).json()
    assert cut["choices"][0]["text"] == full[: full.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    # sampling with a seed is reproducible
    sampled = {**body, "temperature": 1.0, "top_p": 0.9, "seed": 7}
    a = httpx.post(causal_server.url + "/v1/completions", json=sampled).json()
    b = httpx.post(causal_server.url + "/v1/completions", json=sampled).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


# ---------------------------------------------------------------------------- classification


def test_classify_sequences(
    seq_server: InferenceServer, seq_run: Path, tiny_llama_dir: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["this film is great", "boring and far too long", "ok"]
    r = httpx.post(seq_server.url + "/v1/classify", json={"input": texts})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    tok = AutoTokenizer.from_pretrained(seq_run)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_llama_dir, num_labels=2)
    model = PeftModel.from_pretrained(base, seq_run / "adapter").eval()
    for i, text in enumerate(texts):
        with torch.inference_mode():
            probs = torch.softmax(model(**tok(text, return_tensors="pt")).logits, -1)[0]
        assert data[i]["index"] == i
        assert data[i]["label"] == SEQ_LABELS[int(probs.argmax())]
        assert data[i]["scores"] == pytest.approx(
            {SEQ_LABELS[j]: float(p) for j, p in enumerate(probs)}, abs=1e-4
        )
        assert data[i]["score"] == pytest.approx(float(probs.max()), abs=1e-4)


def test_classify_tokens(ner_server: InferenceServer, ner_run: Path) -> None:
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    text = "John Smith lives in New York"
    r = httpx.post(ner_server.url + "/v1/classify", json={"input": [text, ["Alice", "London"]]})
    assert r.status_code == 200, r.text
    first, second = r.json()["data"]
    assert [t["word"] for t in first["tokens"]] == text.split()
    assert all(text[t["start"] : t["end"]] == t["word"] for t in first["tokens"])
    assert [t["word"] for t in second["tokens"]] == ["Alice", "London"]
    # the tag of each word is the model's argmax at the word's first sub-token
    tok = AutoTokenizer.from_pretrained(ner_run)
    model = AutoModelForTokenClassification.from_pretrained(ner_run / "merged").eval()
    enc = tok(text.split(), is_split_into_words=True, return_tensors="pt")
    with torch.inference_mode():
        pred = model(**enc).logits[0].argmax(-1)
    firsts = {}
    for pos, wid in enumerate(enc.word_ids(0)):
        if wid is not None and wid not in firsts:
            firsts[wid] = NER_LABELS[int(pred[pos])]
    assert [t["label"] for t in first["tokens"]] == [firsts[i] for i in range(len(firsts))]
    assert first["entities"] == group_entities(first["tokens"], text)


def test_group_entities_bio() -> None:
    text = "John Smith lives in New York"
    words = text.split()
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC"]
    pos, tokens = 0, []
    for w, tag in zip(words, tags, strict=True):
        start = text.index(w, pos)
        pos = start + len(w)
        tokens.append({"word": w, "start": start, "end": pos, "label": tag, "score": 0.5})
    ents = group_entities(tokens, text)
    assert [(e["entity"], e["text"]) for e in ents] == [("PER", "John Smith"), ("LOC", "New York")]
    tokens[1]["label"] = "I-LOC"  # an I- that does not continue the open entity starts a new one
    assert [e["text"] for e in group_entities(tokens, text)][:2] == ["John", "Smith"]


# ------------------------------------------------------------------------------ errors


def post_raw(
    server: InferenceServer, path: str, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return httpx.post(server.url + path, content=body, headers=headers)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"[" * 2000 + b"]" * 2000, None),
        (b"{}", "prompt"),
        (b'{"prompt": 5}', "prompt"),
        (b'{"prompt": ""}', "prompt"),
        (b'{"prompt": []}', "prompt"),
        (b'{"prompt": "a", "max_tokens": 0}', "max_tokens"),
        (b'{"prompt": "a", "max_tokens": 100000}', "max_tokens"),
        (b'{"prompt": "a", "max_tokens": "3"}', "max_tokens"),
        (b'{"prompt": "a", "temperature": 3}', "temperature"),
        (b'{"prompt": "a", "n": 2}', "n"),
        (b'{"prompt": "a", "stop": 5}', "stop"),
        (b'{"prompt": "a", "logprobs": 3}', "logprobs"),
    ],
)
def test_malformed_completion_requests(
    causal_server: InferenceServer, body: bytes, param: str | None
) -> None:
    r = post_raw(causal_server, "/v1/completions", body, {"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param


def test_http_errors(causal_server: InferenceServer) -> None:
    url = causal_server.url
    r = httpx.get(url + "/v2/nothing")
    assert r.status_code == 404 and "/v1/completions" in r.json()["error"]["message"]
    assert httpx.get(url + "/v1/completions").status_code == 405
    r = httpx.post(
        url + "/v1/chat/completions", json={"messages": [{"role": "robot", "content": "x"}]}
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].role"
    r = httpx.post(url + "/v1/classify", json={"input": ["x"]})
    assert r.status_code == 400 and "causal-lm" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/completions", json={"prompt": "x" * 5000})  # over 4096 bytes
    assert r.status_code == 413 and "4096" in r.json()["error"]["message"]
    # a prompt longer than the model's context (512 positions): a clear 400, not a crash
    r = httpx.post(url + "/v1/completions", json={"prompt": "hello " * 600, "max_tokens": 4})
    assert r.status_code in (400, 413)
    with socket.create_connection(("127.0.0.1", causal_server.port)) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(200).startswith(b"HTTP/1.1 411")


def test_classify_input_errors(seq_server: InferenceServer) -> None:
    for body, param in (({}, "input"), ({"input": []}, "input"), ({"input": ["a", 3]}, "input[1]")):
        r = httpx.post(seq_server.url + "/v1/classify", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    r = httpx.post(seq_server.url + "/v1/completions", json={"prompt": "x"})
    assert r.status_code == 400 and "/v1/classify" in r.json()["error"]["message"]


def hold_slot(server: InferenceServer) -> tuple[socket.socket, bytes]:
    """A client that sends headers and only half its body: it holds a slot until it finishes."""
    s = socket.create_connection(("127.0.0.1", server.port))
    body = json.dumps({"prompt": "hi", "max_tokens": 2, "temperature": 0}).encode()
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:5]
    )
    return s, body[5:]


def wait_for(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_429_when_saturated(causal_server: InferenceServer) -> None:
    held = [hold_slot(causal_server) for _ in range(2)]  # max_concurrency=2
    wait_for(lambda: causal_server.active_requests() == 2)
    r = httpx.post(causal_server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    for s, rest in held:
        s.sendall(rest)
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.close()
    wait_for(lambda: causal_server.active_requests() == 0)
    r = httpx.post(causal_server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 200


# ------------------------------------------------------------------- readiness and metrics


def test_readiness_follows_loading(causal_run: Path) -> None:
    gate = threading.Event()

    def slow_loader(settings: ServerSettings) -> Any:
        gate.wait(30)
        return load_run(settings.model_uri, open_store(), "/tmp/unused-cache")

    server = InferenceServer(
        ServerSettings(model_uri=str(causal_run), host="127.0.0.1", port=0), loader=slow_loader
    )
    server.start()
    try:
        assert httpx.get(server.url + "/healthz").status_code == 200
        r = httpx.get(server.url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_ready"
        gate.set()
        server.wait_ready()
        assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    finally:
        gate.set()
        server.shutdown()


def test_load_failure_is_reported(tmp_path: Path) -> None:
    (tmp_path / "finetune.json").write_text('{"task": "causal-lm"}')
    server = start(tmp_path)
    try:
        wait_for(lambda: server.state == "failed")
        r = httpx.get(server.url + "/readyz")
        assert r.status_code == 503
        assert "neither an adapter nor a merged model" in r.json()["error"]
    finally:
        server.shutdown()


def scrape(server: InferenceServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(server.url + "/metrics").text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics(causal_run: Path) -> None:
    server = start(causal_run)
    server.wait_ready()
    try:
        tokens = 0
        for n in (3, 5):
            r = httpx.post(
                server.url + "/v1/completions",
                json={"prompt": "hello", "max_tokens": n, "temperature": 0},
            )
            tokens += r.json()["usage"]["completion_tokens"]
        with httpx.stream(
            "POST",
            server.url + "/v1/completions",
            json={
                "prompt": "hi",
                "max_tokens": 4,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        ) as r:
            tokens += sse(r.iter_lines())[-2]["usage"]["completion_tokens"]
        httpx.post(server.url + "/v1/completions", json={"prompt": 1})
        httpx.get(server.url + "/nope")
        m = scrape(server)
        assert tokens > 0
        assert m[("finetune_inference_tokens_generated_total", ())] == tokens
        count = (
            "finetune_inference_request_duration_seconds_count",
            (("route", "/v1/completions"),),
        )
        assert m[count] == 4
        assert (
            m[("finetune_inference_errors_total", (("code", "400"), ("route", "/v1/completions")))]
            == 1
        )
        assert m[("finetune_inference_errors_total", (("code", "404"), ("route", "other")))] == 1
        info = (
            "finetune_inference_model_info",
            (("run_id", "chat-run-1234abcd"), ("task", "causal-lm")),
        )
        assert m[info] == 1
        assert m[("finetune_inference_requests_in_flight", ())] == 0
        assert m[("finetune_inference_model_load_seconds", ())] > 0
    finally:
        server.shutdown()


# ------------------------------------------------------- the CLI, from S3, with SIGTERM drain


def test_cli_serves_a_run_from_s3_and_drains_on_sigterm(
    causal_run: Path, tiny_llama_dir: Path, s3_server: Any, s3_store: Any, s3_bucket: str
) -> None:
    import os
    import signal
    import subprocess
    import sys

    base_uri = f"s3://{s3_bucket}/models/tiny-llama/"
    run_uri = f"s3://{s3_bucket}/artifacts/runs/{causal_run.name}/"
    s3_store.upload(tiny_llama_dir, base_uri)
    staged = causal_run.parent / "staged-for-s3"
    import shutil

    shutil.copytree(causal_run, staged, dirs_exist_ok=True)
    write_descriptor(staged, baseModelUri=base_uri, adapter="adapter/", runId=causal_run.name)
    s3_store.push_run(staged, run_uri)

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "finetune_trainer",
            "serve",
            "--model",
            run_uri,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--s3-endpoint",
            s3_server.endpoint_url,
            "--grace-seconds",
            "20",
            "--cache-dir",
            str(causal_run.parent / "cli-cache"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "FINETUNE_LOG_LEVEL": "WARNING"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        url = line.rsplit(" ", 1)[1].strip()
        port = int(url.rsplit(":", 1)[1])
        assert httpx.get(url + "/healthz").status_code == 200
        deadline = time.monotonic() + 180
        while httpx.get(url + "/readyz").status_code != 200:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "model did not load in time"
            time.sleep(0.25)
        r = httpx.post(url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 4})
        assert r.status_code == 200 and r.json()["model"] == causal_run.name

        # a request in flight (half its body sent) when SIGTERM arrives still gets its answer
        s = socket.create_connection(("127.0.0.1", port))
        body = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:5]
        )
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 503)
        assert httpx.get(url + "/readyz").json()["status"] == "draining"
        r = httpx.post(url + "/v1/completions", json={"prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        s.sendall(body[5:])
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_parallel_requests_match_sequential(causal_server: InferenceServer) -> None:
    prompts = ["The weather today is", "Alice went to London"]
    bodies = [{"prompt": p, "max_tokens": 10, "temperature": 0} for p in prompts]
    url = causal_server.url + "/v1/completions"
    alone = [httpx.post(url, json=b).json()["choices"][0]["text"] for b in bodies]
    together: list[str] = ["", ""]

    def call(i: int) -> None:
        together[i] = httpx.post(url, json=bodies[i]).json()["choices"][0]["text"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
