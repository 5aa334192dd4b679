"""The debugging tools of the command line: ``cat`` (a WebSocket/SockJS shell),
``publish`` and ``tail`` (the bridge from the command line), ``trace`` (live frames)."""
