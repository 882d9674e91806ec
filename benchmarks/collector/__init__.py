"""The collector benchmark: ``mplog listen`` against rsyslogd, fed by remote-style senders over tcp.

``python -m benchmarks.collector`` (see docs/benchmarks.md). The package's parts:

- :mod:`.payload`: the line every record becomes, the pre-built payloads (RFC 5424
  octet-counted for rsyslog, mplog frames from :mod:`mplog.wire`'s encoder) and the
  output check (every ``(connection, seq)`` exactly once);
- :mod:`.senders`: the body of a sender process (connect, wait for "go", send, stay
  connected until the file is complete);
- :mod:`.collectors`: a private rsyslogd and ``mplog listen`` (plaintext or CURVE), started
  and stopped by the benchmark;
- :mod:`.run`: the command: one measurement, repeats interleaved, medians, tables, JSON.
"""
