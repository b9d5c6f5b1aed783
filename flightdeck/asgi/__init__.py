"""The ASGI layer: the ``FlightDeck`` middleware, triggers, the debug endpoint, redaction."""
