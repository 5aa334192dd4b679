"""The HTTP and WebSocket edge (aiohttp): the I/O layer over sockway.sockjs and
sockway.ws, and the owner of every client connection."""
