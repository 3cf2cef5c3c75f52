"""The app's themes, as data. Stylesheets refer to ``$primary``, ``$error``, ``$chart-raw`` ... only.

Colours are chosen to stay distinct when Rich downsamples them to 256 colours inside tmux, and state is
never shown by colour alone (every badge also has a word).
"""

from __future__ import annotations

from textual.theme import Theme

# Extra variables the monitor's stylesheets and chart widgets read (``$chart-raw`` in .tcss,
# ``app.theme_variables["chart-raw"]`` in Python).
_CHART_DARK = {
    "chart-raw": "#5f7f9f",
    "chart-smooth": "#ffb454",
    "chart-expected": "#d2a6ff",
    "chart-recent": "#59c2ff",
    "chart-grid": "#3d4752",
}

SIDESTEP_DARK = Theme(
    name="sidestep",
    primary="#59c2ff",
    secondary="#39bae6",
    accent="#ffb454",
    warning="#e6b450",
    error="#f07178",
    success="#aad94c",
    foreground="#d9dce1",
    background="#0d1017",
    surface="#131721",
    panel="#1b2330",
    dark=True,
    variables=_CHART_DARK,
)

SIDESTEP_LIGHT = Theme(
    name="sidestep-light",
    primary="#0b6fb8",
    secondary="#2a7da8",
    accent="#b86500",
    warning="#9a6700",
    error="#c4283c",
    success="#3f7d1f",
    foreground="#1f2328",
    background="#f6f7f9",
    surface="#eceef2",
    panel="#dfe3ea",
    dark=False,
    variables={
        "chart-raw": "#8fa6bd",
        "chart-smooth": "#b86500",
        "chart-expected": "#7c3aed",
        "chart-recent": "#0b6fb8",
        "chart-grid": "#c9ced6",
    },
)

THEMES = (SIDESTEP_DARK, SIDESTEP_LIGHT)
