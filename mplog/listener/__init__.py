"""The listener process: receive loop, dispatch into ``logging``, stats, status channel, supervision."""
