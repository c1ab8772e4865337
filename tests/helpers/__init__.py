"""Helpers shared by the tests (plain modules, no fixtures: those live in the conftest.py files).

images       generated images: noise JPEGs, class folders, a PNG claiming any size
shared_data  ../shared/data: its path, skip-when-absent, the defect table of the full-size sample
ports        free ports and the TS_* environment that gives a server its own addresses
serving      small servable exports, the handler with a fake context, state folders, the session's
             TorchServe and the states tests ask of it
deployment   docker-compose.yml as docker compose resolves it, its services run natively
load         a bounded load generator for 127.0.0.1
"""
