"""The comparison benchmark's Django project: one settings module that
configures, per ``BENCH_SYSTEM``, the task system under test."""
