"""The agent's persisted state: one JSON file in stateDir, written atomically (temp + rename), so a
restarted agent adopts its endpoints, IP allocations and identities instead of recreating them."""
from __future__ import annotations

import json
import os
from pathlib import Path

from datapath.errors import StateError

VERSION = 1


def empty() -> dict:
    return {"version": VERSION, "identities": {}, "ipam": {}, "endpoints": {},
            "next_endpoint_id": 1}


class StateFile:
    def __init__(self, state_dir: str):
        self.dir = Path(state_dir)
        self.path = self.dir / "state.json"

    def load(self) -> dict:
        if not self.path.exists():
            return empty()
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise StateError(f"{self.path}: unreadable state: {e}") from e
        if data.get("version") != VERSION:
            raise StateError(f"{self.path}: state version {data.get('version')!r}, "
                             f"this agent reads {VERSION}")
        base = empty()
        base.update(data)
        return base

    def save(self, data: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
