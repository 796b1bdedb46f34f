"""Settings of the provisioning request log (``KMSBRIDGE_REQUEST_LOG__*``), a section of
:class:`kmsbridge.settings.Settings`."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["RequestLogSettings"]


class RequestLogSettings(BaseModel):
    retention_days: float = Field(default=90.0, gt=0, description="rows older than this are deleted")
    purge_interval_seconds: float = Field(default=3600.0, gt=0, description="how often the retention runs")
    batch_size: int = Field(default=2000, ge=1, le=100_000, description="records per database transaction at most")
    batch_seconds: float = Field(default=0.2, gt=0, le=10, description="longest wait to fill a batch")
