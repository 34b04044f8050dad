"""The one answer path: every error becomes the same answer whatever carries it, and is counted once."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry, Counter

from progress_stream.contract.errors import MethodNotAllowed, Overloaded, SeqConflict
from progress_stream.server.answers import Answers


def answers() -> tuple[Answers, CollectorRegistry]:
    registry = CollectorRegistry()
    return Answers(Counter("progress_errors", "errors", ["code"], registry=registry)), registry


def test_an_error_answers_its_status_headers_body_and_close_code_and_is_counted():
    ans, registry = answers()
    answer = ans.error(Overloaded("retry shortly"))
    assert (answer.status, answer.close, answer.headers) == (503, 1013, {"Retry-After": "1"})
    assert orjson.loads(answer.body) == {"error": {"code": "overloaded", "message": "retry shortly"}}
    assert dict(answer.raw_headers())[b"content-type"] == b"application/json"
    assert orjson.loads(answer.socket_message(5)) == {"seq": 5, **orjson.loads(answer.body)}
    response = answer.response()
    assert (response.status_code, response.headers["retry-after"], response.body) == (503, "1", answer.body)
    ans.error(SeqConflict("resume", 3))
    assert registry.get_sample_value("progress_errors_total", {"code": "overloaded"}) == 1
    assert registry.get_sample_value("progress_errors_total", {"code": "seq_conflict"}) == 1


def test_a_bug_answers_internal_error_without_its_text(caplog):
    ans, registry = answers()
    answer = ans.error(KeyError("secret detail"))
    assert (answer.status, answer.close) == (500, 1011)
    assert b"secret" not in answer.body and orjson.loads(answer.body)["error"]["code"] == "internal_error"
    assert "secret detail" in caplog.text  # the server's log keeps it
    assert registry.get_sample_value("progress_errors_total", {"code": "internal_error"}) == 1


def test_a_wrong_method_names_the_allowed_ones():
    ans, _ = answers()
    answer = ans.error(MethodNotAllowed("not this method", "GET, DELETE"))
    assert (answer.status, answer.headers) == (405, {"Allow": "GET, DELETE"})
