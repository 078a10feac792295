"""Pre-flight's findings and its report: what each check found (level, message, evidence, the settings that
fix it, the data its readers use instead of the wording), and the report a run logs as preflight.json.

Their own module, below the checks (preflight.py) and the bundle's (bundle.py), which both write findings.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass
class Finding:
    check: str
    level: str        # error / warn / info
    message: str
    evidence: str = ""
    fixes: list = field(default_factory=list)   # settings that resolve it, e.g. [{"chat_template": "model"}]
    data: dict = field(default_factory=dict)    # what readers use instead of the message, e.g. {"tokens": […]}


@dataclass
class PreflightReport:
    findings: list[Finding] = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    rendered: str = ""           # example 0 through the template that will train
    rendered_model: str = ""     # example 0 through the model's own template

    @property
    def status(self) -> str:
        levels = {f.level for f in self.findings}
        return "fail" if "error" in levels else ("warn" if "warn" in levels else "pass")

    def add(self, check, level, message, evidence="", fixes=(), data=None):
        self.findings.append(Finding(check, level, message, evidence, list(fixes), dict(data or {})))

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "numbers": self.numbers,
                           "findings": [asdict(f) for f in self.findings],
                           "rendered_example": self.rendered, "rendered_example_model_template": self.rendered_model},
                          ensure_ascii=False, indent=1)

    def to_text(self) -> str:
        lines = [f"pre-flight: {self.status.upper()}"]
        for f in self.findings:
            lines.append(f"  [{f.level}] {f.check}: {f.message}")
            if f.evidence and f.level != "info":
                lines.append(f"          evidence: {f.evidence}")
        return "\n".join(lines)
