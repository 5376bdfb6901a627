"""Shared fixtures: a cache folder with cachy enabled, and a fake upstream that counts its calls."""

from __future__ import annotations

import os

import pytest
from helpers import Upstream, json_reply

from cachy import disable_cachy, enable_cachy

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm would fetch its cost map over the network


@pytest.fixture
def upstream() -> Upstream:
    """Answers `{"n": call number, "echo": request body}` as JSON."""
    return Upstream(json_reply(lambda request, n: {"n": n, "echo": request.content.decode(errors="replace")}))


@pytest.fixture
def cache_dir(tmp_path):
    """cachy enabled on a fresh folder, disabled again after the test."""
    enable_cachy(tmp_path)
    yield tmp_path
    disable_cachy()


@pytest.fixture(autouse=True)
def _cachy_off_after_each_test(monkeypatch):
    """Each test starts with cachy off, and as a single process would: run under pytest-xdist, this suite's
    workers would otherwise make `prune_cachy` refuse, as it must in a user's worker."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    yield
    disable_cachy()
