"""The engine process: its entry point (handshake, signals, parent watch) and the resource monitor.
Wires the channels (``engine.channel``) to training or preprocessing; nothing below imports it."""
