"""Root test configuration: shared fixtures live in tests/support/ and are registered here.

Tiers: unit/, trainer/, cluster/, helm/, monitoring/, gpu/ (device only, never in CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATASETS = Path(
    os.environ.get("FINETUNE_SHARED_DATASETS", REPO.parent / "shared" / "datasets")
)

pytest_plugins = [
    "tests.support.s3",
    "tests.support.controlplane",
    "tests.support.operator",
]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real public datasets beside the checkout (../shared/datasets); skip where absent."""
    if not (SHARED_DATASETS / "README.md").is_file():
        pytest.skip(
            f"shared datasets not found at {SHARED_DATASETS} (they live beside the "
            "checkout in the development workplace; set FINETUNE_SHARED_DATASETS)"
        )
    return SHARED_DATASETS
