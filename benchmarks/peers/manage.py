#!/usr/bin/env python
"""The benchmark project's manage.py (settings: ``benchmarks.peers.settings``)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.peers.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
