"""The reducer's contract with the protocol: every phase it shows is an engine ``Phase`` or one of the
UI's own (``UiPhase``), and a change to a field ``RunState`` does not have is an error, not a no-op."""

from __future__ import annotations

import typing

import pytest
from fake_engine import recorded, scripted_run

from engine import protocol as p
from sidestep_tui import state as st
from sidestep_tui.state import RunState, apply, engine_lost

SHOWN = set(p.PHASES) | set(typing.get_args(st.UiPhase))


def test_ui_phases_are_not_engine_phases() -> None:
    assert not set(typing.get_args(st.UiPhase)) & set(p.PHASES)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(scripted_run(steps=9, finish="stopped"), id="stopped"),
        pytest.param(scripted_run(steps=9, finish="completed"), id="completed"),
        pytest.param(scripted_run(steps=9, finish="failed"), id="failed"),
        pytest.param(recorded(), id="recorded"),
    ],
)
def test_every_phase_the_reducer_shows_is_declared(events: list[p.Event]) -> None:
    state = RunState(phase="starting_engine")
    seen = {state.phase}
    for event in events:
        state = apply(state, event)
        seen.add(state.phase)
    seen.add(engine_lost(apply(RunState(), events[1]), "killed").phase)
    assert seen <= SHOWN, seen - SHOWN


def test_preprocessing_phases_are_declared() -> None:
    def progress(stage: p.PreprocessStage, status: p.FileStatus) -> p.PreprocessProgress:
        return p.PreprocessProgress(run_id="pre", seq=1, ts=1.0, stage=stage, index=1, total=1, file="a.wav", status=status)

    state = RunState()
    for stage in typing.get_args(p.PreprocessStage):
        state = apply(state, progress(stage, "ok"))
        assert state.phase in SHOWN


def test_evolve_refuses_a_field_runstate_does_not_have() -> None:
    """A misspelt key in the reducer would otherwise vanish silently (the state keeps the old value)."""
    base = RunState()
    with pytest.raises(KeyError, match="RunState has no field phsae"):
        st._evolve(base, {"phsae": "training"})
    assert st._evolve(base, {"phase": "training"}).phase == "training"
