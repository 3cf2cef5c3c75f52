"""The engine process: its entry point (handshake, signals, parent watch), the command inbox, event sinks
and the resource monitor. Imports the training and audio layers; nothing below imports it."""
