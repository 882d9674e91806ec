"""A listener bound to port 0 gets a port whose PORT+1 is free for its status channel.

Inside a namespace whose ephemeral range is 40000-40003 with 40002 held by another program,
the system hands bind(0) 40001 (then PORT+1 is taken) or 40003; every listener must end up on
a port whose status channel answers.
"""

from __future__ import annotations

import pytest

from tests.netns.conftest import Network

pytestmark = pytest.mark.timeout(120)


def test_a_listener_on_port_zero_always_has_its_status_channel(network: Network) -> None:
    host = network.host("a")
    proc = host.python("any_port_listeners.py", "8")
    done = proc.read("done", timeout=100)
    proc.finish()
    listeners = done["listeners"]
    assert len(listeners) == 8
    assert all(entry["endpoint"].rsplit(":", 1)[1] != "40001" for entry in listeners), listeners
    assert all(entry["status_rc"] == 0 for entry in listeners), listeners
