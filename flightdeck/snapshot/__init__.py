"""Snapshots: building the document, the ``Snapshot`` class, the store, ``FlightRecorder``."""
