"""Endpoint judges when the endpoint is down or answers garbage, and the judge stage's re-run.

The endpoint cases use a closed port (down) and a stdlib ``http.server`` stub that answers what a
broken server answers (HTTP 503, HTML, malformed JSON, text that is not a verdict). A stub is used
for these failure cases only; the real-server happy path is tested against ``vllm serve``.
"""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from forgetbench import registry
from forgetbench.config import dump
from forgetbench.judges import Verdict
from forgetbench.judges.endpoint import EndpointConfigError
from forgetbench.judges.harmbench import HarmBenchClassifier, HarmBenchClassifierConfig
from forgetbench.judges.llamaguard import LlamaGuard, LlamaGuardConfig
from forgetbench.judges.strongreject import StrongRejectRubricConfig, rubric_verdict
from forgetbench.rewards import RewardError
from forgetbench.rewards.paper import ModerationConfig, moderate
from forgetbench.stages import judge as judge_stage


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class BrokenServer:
    """Answers each POST with the next scripted (status, body, headers); repeats the last one."""

    def __init__(self, script: list[tuple[int, str, dict]]):
        self.script, self.requests = script, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                outer.requests.append((self.path, json.loads(self.rfile.read(length))))
                status, body, headers = outer.script[
                    min(len(outer.requests) - 1, len(outer.script) - 1)
                ]
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body.encode())))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def chat_answer(text: str) -> str:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
    )


RUBRIC_ANSWER = "#overall_reasoning ok\n#scores\n1.a no\n1.b 0\n2.a ok\n2.b 4\n3.a ok\n3.b 5\n"


def rubric_config(url: str, retries: int = 2, **extra) -> StrongRejectRubricConfig:
    return StrongRejectRubricConfig(
        base_url=url,
        model="judge",
        max_retries=retries,
        backoff_s=0.25,
        max_backoff_s=10,
        timeout_s=5,
        concurrency=2,
        **extra,
    )


def test_down_endpoint_gives_a_missing_retryable_verdict_after_backed_off_retries():
    waits = []
    verdict = rubric_verdict(
        rubric_config(closed_port_url(), retries=3), "How?", "Like so.", sleep=waits.append
    )
    assert verdict.value is None and verdict.retryable
    assert "4 attempts failed" in verdict.reason and "cannot reach" in verdict.reason
    assert waits == [0.25, 0.5, 1.0]


@pytest.mark.parametrize(
    "status, body, why",
    [
        (503, "upstream overloaded", "HTTP 503"),
        (200, "<html><body>Bad gateway</body></html>", "not JSON"),
        (200, json.dumps({"object": "error", "message": "oops"}), "unparseable"),
        (200, chat_answer("I cannot grade harmful content."), "unparseable"),
        (200, chat_answer("#scores\n1.b 0\n2.b 9\n3.b 5"), "convincingness must be 1-5"),
    ],
)
def test_garbage_answers_are_retried_then_missing_never_zero(status, body, why):
    with BrokenServer([(status, body, {})]) as server:
        waits = []
        verdict = rubric_verdict(rubric_config(server.url), "How?", "Like so.", sleep=waits.append)
    assert verdict == Verdict(None, verdict.reason, True)
    assert why in verdict.reason
    assert len(server.requests) == 3 and waits == [0.25, 0.5]
    path, payload = server.requests[0]
    assert path == "/v1/chat/completions" and payload["model"] == "judge"
    assert payload["temperature"] == 0.0 and [m["role"] for m in payload["messages"]] == [
        "system",
        "user",
    ]


def test_endpoint_that_comes_back_is_scored_and_retry_after_is_honoured():
    script = [
        (503, "down", {}),
        (429, "slow down", {"Retry-After": "3"}),
        (200, chat_answer(RUBRIC_ANSWER), {}),
    ]
    with BrokenServer(script) as server:
        waits = []
        verdict = rubric_verdict(
            rubric_config(server.url, retries=4), "How?", "Like so.", sleep=waits.append
        )
    assert verdict == Verdict(0.875, "refusal=0 convincingness=4 specificity=5")
    assert waits == [0.25, 3.0] and len(server.requests) == 3


def test_a_refused_request_is_a_configuration_error_not_a_missing_row():
    with BrokenServer([(404, '{"error": "model judge not found"}', {})]) as server:
        with pytest.raises(EndpointConfigError, match="HTTP 404.*model name"):
            rubric_verdict(rubric_config(server.url), "How?", "Like so.", sleep=lambda s: None)
    assert len(server.requests) == 1


def test_harmbench_and_llamaguard_endpoints_mark_garbage_missing():
    completion = json.dumps({"choices": [{"index": 0, "text": " Perhaps"}]})
    with BrokenServer([(200, completion, {})]) as server:
        classifier = HarmBenchClassifier(
            HarmBenchClassifierConfig(
                base_url=server.url, clip_tokens=None, max_retries=1, backoff_s=0
            )
        )
        verdict = classifier.endpoint_verdict("PROMPT", sleep=lambda s: None)
    assert verdict.value is None and verdict.retryable and "neither yes nor no" in verdict.reason
    path, payload = server.requests[0]
    assert path == "/v1/completions"
    assert payload == {
        "model": "cais/HarmBench-Llama-2-13b-cls",
        "prompt": "PROMPT",
        "max_tokens": 1,
        "temperature": 0.0,
    }

    with BrokenServer([(200, chat_answer("The response looks fine to me."), {})]) as server:
        guard = LlamaGuard(LlamaGuardConfig(base_url=server.url, max_retries=1, backoff_s=0))
        verdict = guard.endpoint_verdict(("How?", "Like so."), sleep=lambda s: None)
    assert (
        verdict.value is None and verdict.retryable and "not 'safe' or 'unsafe'" in verdict.reason
    )
    assert [m["role"] for m in server.requests[0][1]["messages"]] == ["user", "assistant"]


def test_moderation_down_stops_the_reward_with_a_clear_error():
    config = ModerationConfig(base_url=closed_port_url(), max_retries=1, backoff_s=0)
    with pytest.raises(RewardError, match="moderation endpoint .* failed: 2 attempts"):
        moderate(config, ["some completion"], sleep=lambda s: None)
    # nothing to moderate: no request at all
    assert moderate(config, ["", "   "], sleep=lambda s: None) == [0.0, 0.0]


# ---- the judge stage: eval rows, partial verdicts, re-runs -----------------------------------------

CALLS: list[list[str]] = []
DOWN: set[str] = set()  # ids the flaky judge cannot score (its endpoint is "down" for them)


def flaky_judge(config):
    def score(prompts, responses, rows=None):
        CALLS.append([row["id"] for row in rows])
        return [
            Verdict(None, "endpoint down", retryable=True)
            if row["id"] in DOWN
            else Verdict(float(len(response) > 5), f"raw={row['prompt']!r}")
            for response, row in zip(responses, rows)
        ]

    return score


registry.register("judge", "test_flaky_rows", flaky_judge)


def write_generations(folder: Path, rows: list[dict]) -> Path:
    from forgetbench.stages.generate import GENERATIONS_FILE

    generations = folder / "stages" / "generate" / "harmbench-before-abc123"
    generations.mkdir(parents=True)
    eval_config = dump(
        registry.get("eval", "harmbench").build_config(registry.get("eval", "harmbench").target)
    )
    (generations / "request.json").write_text(
        json.dumps(
            {"kind": "generate", "config": {"eval": {"name": "harmbench", "config": eval_config}}}
        )
    )
    with open(generations / GENERATIONS_FILE, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return generations


def harmbench_ids(n: int) -> list[str]:
    from forgetbench.stages.generate import eval_prompts

    eval_config = dump(
        registry.get("eval", "harmbench").build_config(registry.get("eval", "harmbench").target)
    )
    return [
        row["id"]
        for row in eval_prompts({"eval": {"name": "harmbench", "config": eval_config}})[:n]
    ]


def test_judge_stage_keeps_scored_rows_and_a_rerun_asks_only_for_the_missing(tmp_path):
    ids = harmbench_ids(3)
    rows = [
        {"id": i, "prompt": f"templated {i}", "response": f"response number {n}"}
        for n, i in enumerate(ids)
    ]
    folder = write_generations(tmp_path, rows)
    config = {"judge": {"name": "test_flaky_rows", "config": {}}, "eval": "harmbench"}
    out = tmp_path / "out"
    out.mkdir()
    CALLS.clear()
    DOWN.clear()
    DOWN.add(ids[1])
    with pytest.raises(
        judge_stage.JudgeMissingError,
        match="1 of 3 rows still missing.*endpoint "
        "down.*the 2 scored rows are kept.*re-running the same command",
    ):
        judge_stage.run(config, {"generations": folder}, out)
    assert not (out / judge_stage.VERDICTS_FILE).exists()
    partial = judge_stage.partial_file(config, folder)
    kept = [json.loads(line)["id"] for line in partial.read_text().splitlines()]
    assert kept == [ids[0], ids[2]]
    DOWN.clear()  # the endpoint is back
    judge_stage.run(config, {"generations": folder}, out)
    assert CALLS == [ids, [ids[1]]]  # the re-run only asked for what was missing
    verdicts = [
        json.loads(line) for line in (out / judge_stage.VERDICTS_FILE).read_text().splitlines()
    ]
    assert [v["id"] for v in verdicts] == ids and all(v["value"] == 1.0 for v in verdicts)
    assert not judge_stage.partial_file(config, folder).exists()


def test_judge_stage_gives_judges_the_raw_eval_row(tmp_path):
    ids = harmbench_ids(2)
    rows = [{"id": i, "prompt": f"templated {i}", "response": "ok"} for i in ids]
    folder = write_generations(tmp_path, rows)
    seen = {}

    def row_judge(config):
        def score(prompts, responses, rows=None):
            seen["prompts"], seen["rows"] = prompts, rows
            return [Verdict(0.0)] * len(prompts)

        return score

    registry.register("judge", "test_row_judge", row_judge)
    out = tmp_path / "out"
    out.mkdir()
    judge_stage.run(
        {"judge": {"name": "test_row_judge", "config": {}}}, {"generations": folder}, out
    )
    assert seen["prompts"] == [f"templated {i}" for i in ids]
    assert [r["id"] for r in seen["rows"]] == ids
    assert all(set(r) >= {"id", "prompt", "category"} for r in seen["rows"])
    assert all(not r["prompt"].startswith("templated") for r in seen["rows"])


def test_down_rubric_judge_fails_the_stage_unless_missing_is_allowed(tmp_path):
    ids = harmbench_ids(2)
    rows = [{"id": i, "prompt": f"p {i}", "response": "r"} for i in ids]
    folder = write_generations(tmp_path, rows)
    settings = {"base_url": closed_port_url(), "max_retries": 0, "timeout_s": 5}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        judge_stage.JudgeMissingError, match="2 of 2 rows still missing.*cannot reach"
    ):
        judge_stage.run(
            {"judge": {"name": "strongreject_rubric", "config": settings}},
            {"generations": folder},
            out,
        )
    judge_stage.run(
        {"judge": {"name": "strongreject_rubric", "config": {**settings, "allow_missing": True}}},
        {"generations": folder},
        out,
    )
    verdicts = [
        json.loads(line) for line in (out / judge_stage.VERDICTS_FILE).read_text().splitlines()
    ]
    assert [v["value"] for v in verdicts] == [None, None]
    assert all("cannot reach" in v["reason"] for v in verdicts)


def test_rows_scored_before_an_outage_are_reused_when_finishing_with_missing_rows(tmp_path):
    ids = harmbench_ids(2)
    rows = [{"id": i, "prompt": f"p {i}", "response": "r"} for i in ids]
    folder = write_generations(tmp_path, rows)
    out = tmp_path / "out"
    out.mkdir()
    # the endpoint answers the first row, then goes down
    with BrokenServer([(200, chat_answer(RUBRIC_ANSWER), {}), (503, "down", {})]) as server:
        settings = {"base_url": server.url, "model": "judge", "max_retries": 0, "concurrency": 1}
        with pytest.raises(judge_stage.JudgeMissingError, match="1 of 2 rows still missing"):
            judge_stage.run(
                {"judge": {"name": "strongreject_rubric", "config": settings}},
                {"generations": folder},
                out,
            )
    # finishing anyway, with more retries, against an endpoint that is now gone entirely
    settings = {
        **settings,
        "base_url": server.url,
        "max_retries": 1,
        "backoff_s": 0,
        "allow_missing": True,
    }
    judge_stage.run(
        {"judge": {"name": "strongreject_rubric", "config": settings}}, {"generations": folder}, out
    )
    verdicts = [
        json.loads(line) for line in (out / judge_stage.VERDICTS_FILE).read_text().splitlines()
    ]
    # the first row's score can only have come from the kept partial verdicts
    assert verdicts[0] == {
        "id": ids[0],
        "value": 0.875,
        "reason": "refusal=0 convincingness=4 specificity=5",
    }
    assert verdicts[1]["value"] is None and "cannot reach" in verdicts[1]["reason"]
    assert not judge_stage.partial_file(
        {"judge": {"name": "strongreject_rubric", "config": settings}}, folder
    ).exists()


def test_the_api_key_is_read_from_the_environment_at_call_time(monkeypatch):
    from forgetbench.judges.endpoint import EndpointSettings, post_once

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(self.headers.get("Authorization"))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = EndpointSettings(
            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
            api_key_env="FORGETBENCH_TEST_KEY",
        )
        monkeypatch.setenv("FORGETBENCH_TEST_KEY", "first-key")
        assert post_once(settings, "chat/completions", {}) == {"ok": True}
        monkeypatch.setenv("FORGETBENCH_TEST_KEY", "rotated-key")
        post_once(settings, "chat/completions", {})
        monkeypatch.delenv("FORGETBENCH_TEST_KEY")
        post_once(settings, "chat/completions", {})
    finally:
        server.shutdown()
        server.server_close()
    # A keyless `vllm serve` ignores the placeholder the openai client insists on sending.
    assert seen == ["Bearer first-key", "Bearer rotated-key", "Bearer EMPTY"]
    assert "api_key" not in settings.model_dump() and "first-key" not in str(settings.model_dump())
