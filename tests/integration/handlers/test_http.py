"""HTTPHandler: GET and POST with Basic credentials to a real http.server."""

from __future__ import annotations

import pytest
from handler_peers import run_workers, snippet_file
from helpers import check_lines

import mplog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_every_record_arrives_over_http_with_its_fields_and_credentials(tmp_path, http_sink, method):
    workers, per_worker = 2, 50
    config = snippet_file("http", tmp_path, port=http_sink.port, method=method)
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, workers, per_worker)
    assert http_sink.rejected == 0  # every request carried the right Basic credentials
    requests = http_sink.requests
    assert len(requests) == workers * per_worker
    assert {(r["method"], r["path"]) for r in requests} == {(method, "/log")}
    fields = [{key: values[0] for key, values in r["fields"].items()} for r in requests]
    check_lines([f["msg"] for f in fields], dict.fromkeys(range(workers), per_worker)).assert_exact()
    for f in fields:
        assert (f["name"], f["levelname"], f["levelno"], f["module"], f["funcName"]) == (
            "app",
            "INFO",
            "20",
            "handler_peers",
            "log_worker",
        )
        assert float(f["created"]) > 0 and f["hostname"]
    pids = {int(f["process"]) for f in fields}
    assert len(pids) == workers and listener.pid not in pids  # the workers' own process ids
    assert listener.stats()["handler_errors"] == {}


def test_records_the_server_refuses_count_as_errors_of_the_handler(tmp_path, http_sink):
    # The stdlib handler never looks at the answer: a 503 counted as delivered (an outsider
    # lost 514 of 900 records to 500/503 answers, none counted). Every third record refused.
    workers, per_worker = 2, 60
    http_sink.refuse = lambda fields: int(fields["msg"][0].split(":")[1]) % 3 == 0
    config = snippet_file("http", tmp_path, port=http_sink.port, method="POST")
    with mplog.start_listener(config, route_parent=False) as listener:
        run_workers(listener.endpoint, workers, per_worker)
    stats = listener.stop()
    refused = workers * per_worker // 3
    assert http_sink.refused == refused
    assert len(http_sink.requests) == workers * per_worker - refused
    assert stats["handler_errors"] == {"http": refused}  # every refused record counted, nothing else
    assert stats["received"] == workers * per_worker


def test_the_stdlib_http_handler_is_named_at_start_with_what_it_cannot_do(tmp_path, http_sink, capfd):
    stdlib = {"class": "logging.handlers.HTTPHandler", "host": f"127.0.0.1:{http_sink.port}", "url": "/log"}
    ours = {**stdlib, "class": "mplog.handlers.HTTPHandler", "timeout": 5.0}
    config = {"version": 1, "handlers": {"plain": stdlib, "ours": ours}, "root": {"handlers": ["plain", "ours"]}}
    with mplog.start_listener(config, route_parent=False):
        pass
    err = capfd.readouterr().err
    assert err.count("is the stdlib logging.handlers.HTTPHandler") == 1, err
    assert "mplog: handler 'plain' is the stdlib logging.handlers.HTTPHandler, which counts a record the server " in err
