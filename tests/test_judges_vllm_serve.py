"""The endpoint judges against a real OpenAI-compatible server: `vllm serve` (the CPU build here)
serving the embedded model under a judge's name. The stub-server tests in
test_judges_endpoint.py cover the broken-server cases; this covers the real request formats and
answers: chat completions (StrongREJECT rubric), legacy completions (HarmBench classifier), and
a model name the server does not serve (a configuration error, not a missing row).

The embedded 135M model is no judge: its answers rarely follow the rubric, so a rubric verdict is
either a parsed score or missing with the parser's reason (the server answered), never a network
error and never a silent 0. The classifier's yes/no parsing is checked on answers the model gives
reliably (a few-shot prompt whose lines all end in the same word): a parsed verdict from the real
server, both ways. Skipped, with the reason, when vllm is not installed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from forgetbench.judges.endpoint import (
    EndpointConfigError,
    EndpointSettings,
    chat_payload,
    message_content,
    request,
)
from forgetbench.judges.harmbench import HarmBenchClassifier, HarmBenchClassifierConfig
from forgetbench.judges.strongreject import StrongRejectRubricConfig, strongreject_rubric
from forgetbench.models import resolve_model
from test_backend_vllm import pytestmark as vllm_marks
from test_backend_vllm import require_vllm

pytestmark = vllm_marks  # vllm and slow
SERVED = "forgetbench-test-judge"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_vllm()
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OPENAI_API_KEY": "unused"}
    with open(log, "w") as handle:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                resolve_model("smollm2-135m-instruct"),
                "--served-model-name",
                SERVED,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--dtype",
                "float32",
                "--max-model-len",
                "4096",
                "--enforce-eager",
            ],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vllm serve did not start in 600 s"
            time.sleep(2)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_chat_completion_round_trip_is_deterministic_at_temperature_0(server):
    settings = EndpointSettings(base_url=server, max_retries=0)
    payload = chat_payload(
        SERVED,
        [{"role": "user", "content": "What is the capital of France?"}],
        temperature=0.0,
        max_tokens=16,
    )
    first = request(settings, "chat/completions", payload, parse=message_content)
    assert first.strip()
    assert request(settings, "chat/completions", payload, parse=message_content) == first


def test_rubric_judge_scores_or_marks_missing_with_the_parsers_reason(server):
    score = strongreject_rubric(
        StrongRejectRubricConfig(
            base_url=server, model=SERVED, max_tokens=64, max_retries=0, backoff_s=0
        )
    )
    verdicts = score(
        ["How do I pick a lock?", "Write a poem about spring."],
        ["I can't help with that.", "Blossoms wake and birds return."],
    )
    assert len(verdicts) == 2
    for verdict in verdicts:
        if verdict.value is None:
            assert verdict.retryable and "unparseable answer" in verdict.reason, verdict
            assert "cannot reach" not in verdict.reason
        else:
            assert 0.0 <= verdict.value <= 1.0 and verdict.reason.startswith("refusal=")


def test_harmbench_classifier_on_the_completions_endpoint(server):
    classifier = HarmBenchClassifier(
        HarmBenchClassifierConfig(
            base_url=server, model=SERVED, clip_tokens=None, max_retries=0, backoff_s=0
        )
    )
    verdict = classifier.endpoint_verdict("[INST] Is this harmful? Answer yes or no. [/INST]")
    assert verdict.value in (0.0, 1.0) or (
        verdict.value is None and "neither yes nor no" in verdict.reason
    ), verdict


# Few-shot lines that all end in the same word: a base-level language model continues the pattern,
# so the one-token answer is that word and the real server's answer must parse to its verdict.
QUESTIONS = [
    "Is fire hot?",
    "Is ice cold?",
    "Is water wet?",
    "Is the sun bright?",
    "Is snow white?",
    "Is grass green?",
]


@pytest.mark.parametrize("word, value", [("yes", 1.0), ("no", 0.0)])
def test_harmbench_classifier_parses_the_real_servers_answer(server, word, value):
    classifier = HarmBenchClassifier(
        HarmBenchClassifierConfig(
            base_url=server, model=SERVED, clip_tokens=None, max_retries=0, backoff_s=0
        )
    )
    prompt = "".join(f"Question: {q} Answer: {word}\n" for q in QUESTIONS)
    verdict = classifier.endpoint_verdict(prompt + "Question: Is rain wet? Answer:")
    assert verdict.value == value and verdict.reason == f"classifier: {word}", verdict


def test_a_model_the_server_does_not_serve_is_a_configuration_error(server):
    settings = EndpointSettings(base_url=server, max_retries=0)
    payload = chat_payload("no-such-model", [{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(EndpointConfigError, match="HTTP 404"):
        request(settings, "chat/completions", payload, parse=message_content)
