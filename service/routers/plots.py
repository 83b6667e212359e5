"""GET /v1/plots/{figure}.{png|svg|pdf}: the paper's figures (cnnfilterdb/figures.py) over HTTP."""
from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["plots"])
