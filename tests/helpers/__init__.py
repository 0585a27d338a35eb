"""Shared test helpers (plain functions and constants, no fixtures): imported as ``helpers.<module>``, because
pytest puts tests/ on ``sys.path`` (pyproject: ``pythonpath``). Fixtures live in the conftest.py files."""
