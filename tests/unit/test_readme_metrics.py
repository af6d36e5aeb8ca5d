"""The README's metrics reference lists every series the operator, trainer and server export."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry


def _exported() -> set[str]:
    from finetune_operator.metrics import OperatorMetrics
    from finetune_trainer.config import JobRef
    from finetune_trainer.report import _Metrics
    from finetune_trainer.serve import Metrics

    registries = [CollectorRegistry(), _Metrics(JobRef("j")).registry, Metrics().registry]
    OperatorMetrics(registries[0])
    names = set()
    for reg in registries:
        for family in reg.collect():
            # counters are collected without their _total suffix
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def _documented(readme: str) -> set[str]:
    section = readme.split("## Metrics reference", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for row in section.splitlines():
        if not row.startswith("| `finetune_"):
            continue
        cells = re.findall(r"`([a-z_]+)`", row.split("|")[1])
        full = cells[0]
        prefix = re.match(r"finetune_[a-z]+_", full).group(0)  # type: ignore[union-attr]
        names.add(full)
        names.update(prefix + c.lstrip("_") for c in cells[1:])  # `_suffix` shorthand
    return names


def test_every_exported_metric_is_documented(repo_root: Path) -> None:
    exported = _exported()
    documented = _documented((repo_root / "README.md").read_text())
    assert len(exported) >= 25
    assert exported <= documented, f"undocumented: {sorted(exported - documented)}"
    assert documented <= exported, f"documented but not exported: {sorted(documented - exported)}"
