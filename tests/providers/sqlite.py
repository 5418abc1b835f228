from __future__ import annotations

import itertools
from pathlib import Path


class SQLiteProvider:
    name = "sqlite"

    def start(self, workdir: Path) -> None:
        self.dir = workdir
        self.counter = itertools.count()

    def new_url(self) -> str:
        return f"sqlite:///{self.dir}/store-{next(self.counter)}.db"

    def stop(self) -> None:
        pass


def provider() -> SQLiteProvider:
    return SQLiteProvider()
