"""The test suite's toolbox: plain helpers the test modules import (fixtures live in tests/conftest.py).

    processes  this run's environment for child processes: manage.py, workers, free ports
    users      users with permissions, logged-in and token clients, the API's roles
    world      the checkout workflow's stages, tasks in every state, database snapshots
    api        JSON requests and the checks the REST API tests share
    pages      the one HTML parser (Page): rendered pages read like a browser; page URLs and messages
"""
