"""corrald's streaming server: CRI Exec, Attach and PortForward over SPDY/3.1 and WebSocket."""
