"""The worker side: the handler put on the root logger, its batching, options, fork/exit hooks."""
