"""The load generator: many streams over HTTP or WebSocket (picows under uvloop), every reply checked."""
