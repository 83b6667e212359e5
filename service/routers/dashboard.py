"""The dashboard: GET / and its static assets (service/static/), shipped in the package."""
from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(include_in_schema=False)
