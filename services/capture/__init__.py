"""Capture: publish frontier calls as CapturedCall records, even while Kafka is away (see README.md)."""
from services.capture.client import CaptureClient, CaptureSettings, CaptureStats

__all__ = ["CaptureClient", "CaptureSettings", "CaptureStats"]
