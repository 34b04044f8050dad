"""The server: settings, the one wiring point, the edge, HTTP routes, WebSocket sockets, the board and the page."""
