"""progress-stream: online, causal action progress from streamed per-frame video embeddings.

The rooms: ``contract`` (what client, server and exporter share), ``engine`` (streams, batching, the ONNX
runtime, durability), ``server`` (HTTP, WebSocket, the web page), ``client``, ``loadtest``, ``training``,
``export`` and ``cli``. Importing this package loads none of them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("progress-stream")
except PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0+unknown"
