"""The soak is run by ``make soak`` (tests/soak/run.py), never collected by pytest."""

collect_ignore_glob = ["*.py"]
