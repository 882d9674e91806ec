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
