"""Instruments that feed the window: the loop hook, the watchdog, executor hooks, annotations."""
