"""Progress reporting: a tqdm bar on a terminal, silence otherwise (scripts, CI, logs)."""
from __future__ import annotations

import sys

from tqdm import tqdm


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class Progress:
    def __init__(self, enabled: bool | None = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled

    def bar(self, total: int, desc: str, unit: str = "filters"):
        if not self.enabled:
            return _NoBar()
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
                    file=self.stream, leave=False)

    def note(self, message: str) -> None:
        print(message, file=self.stream)
