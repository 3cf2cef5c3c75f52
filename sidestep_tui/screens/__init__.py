"""The app's screens (one module + sibling .tcss each), imported lazily by ``app.MODES``.

models: ModelsScreen · dataset: DatasetScreen · setup: SetupScreen · first_run: FirstRunScreen (H5)
monitor: MonitorScreen · runs: RunsScreen
"""
