"""The run's two channels, stdlib only: commands in (``control.CommandInbox``, applied at step
boundaries; signals and the parent watch) and events out (``events.EventBus`` and its sinks: queue,
events.jsonl, stdout JSON, callbacks). The lowest engine layer: training and preprocessing use it,
the process entry and the CLI wire it up."""
