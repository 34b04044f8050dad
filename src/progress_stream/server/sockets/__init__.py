"""The WebSocket data planes: one session protocol, carried by picows (native) or by the FastAPI route (asgi)."""
