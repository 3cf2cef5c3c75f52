"""The wire protocol: every message pickles and JSON-round-trips unchanged, carries primitives only,
and nothing outside the protocol gets through."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import pickletools
import typing

import pytest

from engine import protocol

ALL_TYPES = protocol.COMMAND_TYPES + protocol.EVENT_TYPES

_SAMPLES = {
    "str": "sample",
    "int": 7,
    "float": 0.25,
    "bool": True,
    "str | None": "maybe",
    "int | None": 3,
    "float | None": 1.5,
    "tuple[str, ...]": ("a", "b"),
    "tuple[int, ...]": (1, 2, 3),
    "tuple[float, ...]": (0.0, 0.5, 1.0),
}


def sample(cls: type) -> typing.Any:
    """An instance with a non-default value in every field (a vocabulary field: its last value)."""
    kwargs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if typing.get_origin(hint) is typing.Literal:
            kwargs[f.name] = typing.get_args(hint)[-1]
            continue
        annotation = str(f.type)
        assert annotation in _SAMPLES, f"{cls.__name__}.{f.name}: no sample for type {annotation}"
        kwargs[f.name] = _SAMPLES[annotation]
    return cls(**kwargs)


VOCABULARY_FIELDS = [
    pytest.param(cls, f.name, id=f"{cls.__name__}.{f.name}")
    for cls in ALL_TYPES
    for f in dataclasses.fields(cls)
    if typing.get_origin(typing.get_type_hints(cls)[f.name]) is typing.Literal
]


def test_protocol_version_is_an_int() -> None:
    assert isinstance(protocol.PROTOCOL_VERSION, int) and protocol.PROTOCOL_VERSION >= 1
    assert "protocol_version" in {f.name for f in dataclasses.fields(protocol.EngineReady)}


def test_unions_match_the_type_tuples() -> None:
    assert set(typing.get_args(protocol.Command)) == set(protocol.COMMAND_TYPES)
    assert set(typing.get_args(protocol.Event)) == set(protocol.EVENT_TYPES)
    names = [cls.__name__ for cls in ALL_TYPES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_frozen_slotted_kw_only(cls: type) -> None:
    params = cls.__dataclass_params__
    assert params.frozen
    assert hasattr(cls, "__slots__")
    if dataclasses.fields(cls):
        with pytest.raises(TypeError):
            cls(*[None] * len(dataclasses.fields(cls)))  # positional construction is refused (kw_only)


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_fields_are_primitive_only(cls: type) -> None:
    message = sample(cls)
    for f in dataclasses.fields(message):
        value = getattr(message, f.name)
        assert protocol.is_primitive(value), f"{cls.__name__}.{f.name} = {value!r} is not primitive"
    # Defaults too (an empty tuple, NaN, "" are all primitives).
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    assert all(protocol.is_primitive(v) for v in defaults.values())


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type) -> None:
    message = sample(cls)
    assert pickle.loads(pickle.dumps(message)) == message


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
def test_json_round_trip(cls: type) -> None:
    message = sample(cls)
    line = protocol.dumps(message)
    assert "\n" not in line
    assert json.loads(line)["type"] == cls.__name__
    assert protocol.loads(line) == message
    assert protocol.from_dict(protocol.to_dict(message)) == message


@pytest.mark.parametrize("cls", protocol.EVENT_TYPES, ids=lambda c: c.__name__)
def test_events_carry_the_envelope(cls: type) -> None:
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[:3] == ["run_id", "seq", "ts"]
    stamped = protocol.stamp(sample(cls), run_id="r1", seq=42, ts=123.0)
    assert (stamped.run_id, stamped.seq, stamped.ts) == ("r1", 42, 123.0)


def test_the_closed_vocabularies_are_declared_as_literals() -> None:
    """Phase, run status, checkpoint kind, log level, preprocessing stage and file status: each field
    that holds one is typed with its ``Literal`` (so mypy checks every constructor call)."""
    declared = {(p.values[0].__name__, p.values[1]) for p in VOCABULARY_FIELDS}
    assert declared == {
        ("Heartbeat", "phase"),
        ("PhaseChanged", "phase"),
        ("CheckpointSaved", "kind"),
        ("LogRecord", "level"),
        ("PreprocessProgress", "stage"),
        ("PreprocessProgress", "status"),
        ("RunFinished", "status"),
        ("AnalysisDone", "status"),
        ("EstimateDone", "status"),
    }
    assert typing.get_args(protocol.Phase) == protocol.PHASES and "training" in protocol.PHASES
    assert protocol.RUN_STATUSES == ("completed", "stopped")


@pytest.mark.parametrize(("cls", "name"), VOCABULARY_FIELDS)
def test_a_value_outside_the_vocabulary_is_refused(cls: type, name: str) -> None:
    """Reading (``from_dict``) and writing (``stamp``) both refuse it, naming the field and the choices."""
    data = protocol.to_dict(sample(cls))
    data[name] = "bogus"
    with pytest.raises(protocol.ProtocolError, match=rf"{cls.__name__}\.{name} = 'bogus' is not one of "):
        protocol.from_dict(data)
    unchecked = dataclasses.replace(sample(cls), **{name: "bogus"})  # the dataclass itself does not check
    with pytest.raises(protocol.ProtocolError, match=rf"{cls.__name__}\.{name}"):
        protocol.stamp(unchecked, run_id="r", seq=1)


def test_vocabulary_values_stay_plain_strings_on_the_wire() -> None:
    """Literal, not StrEnum: a pickled event names no vocabulary class, and JSON gives back equal values."""
    event = protocol.stamp(protocol.PhaseChanged(phase="training", detail="x"), run_id="r", seq=1, ts=1.0)
    assert type(event.phase) is str
    strings = {arg for op, arg, _pos in pickletools.genops(pickle.dumps(event)) if isinstance(arg, str)}
    assert "PhaseChanged" in strings and "Phase" not in strings  # the event's class only, no vocabulary class
    assert protocol.loads(protocol.dumps(event)) == event


def test_nan_and_inf_survive_json() -> None:
    event = protocol.RunFinished(
        status="completed", steps=1, epochs=1, final_loss=float("nan"), best_loss=float("inf"), adapter_path="", wall_s=1.0
    )
    back = protocol.loads(protocol.dumps(event))
    assert math.isnan(back.final_loss) and back.best_loss == float("inf")


def test_unknown_type_is_rejected() -> None:
    with pytest.raises(protocol.ProtocolError, match="unknown message type 'Nope'"):
        protocol.from_dict({"type": "Nope"})
    with pytest.raises(protocol.ProtocolError):
        protocol.from_dict({"step": 1})
    with pytest.raises(protocol.ProtocolError, match="not a protocol message"):
        protocol.to_dict(object())


def test_unknown_field_is_rejected() -> None:
    data = protocol.to_dict(sample(protocol.StepMetrics))
    data["surprise"] = 1
    with pytest.raises(protocol.ProtocolError, match="unknown field 'surprise'"):
        protocol.from_dict(data)


def test_missing_required_field_is_rejected() -> None:
    data = protocol.to_dict(sample(protocol.StepMetrics))
    del data["loss"]
    with pytest.raises(protocol.ProtocolError, match="StepMetrics"):
        protocol.from_dict(data)


def _write(tmp_path, lines: list[str]) -> str:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    return str(path)


def test_read_events_in_order(tmp_path) -> None:
    events = [protocol.stamp(sample(cls), run_id="r", seq=i, ts=float(i)) for i, cls in enumerate(protocol.EVENT_TYPES)]
    path = _write(tmp_path, [protocol.dumps(e) for e in events] + [""])
    assert protocol.read_events(path) == events


def test_read_events_tolerates_a_torn_last_line(tmp_path) -> None:
    good = [protocol.dumps(sample(protocol.Heartbeat)), protocol.dumps(sample(protocol.StepMetrics))]
    torn = protocol.dumps(sample(protocol.RunFinished))[:25]
    path = _write(tmp_path, [*good, torn, "", "  "])
    assert len(protocol.read_events(path)) == 2
    with pytest.raises(protocol.ProtocolError, match=":3:"):
        protocol.read_events(path, strict=True)


def test_read_events_names_a_bad_middle_line(tmp_path) -> None:
    lines = [protocol.dumps(sample(protocol.Heartbeat)), "{not json", protocol.dumps(sample(protocol.Heartbeat))]
    path = _write(tmp_path, lines)
    with pytest.raises(protocol.ProtocolError, match=r"events\.jsonl:2:"):
        protocol.read_events(path)
    unknown = [protocol.dumps(sample(protocol.Heartbeat)), '{"type":"Alien"}', protocol.dumps(sample(protocol.Heartbeat))]
    with pytest.raises(protocol.ProtocolError, match=r":2: unknown message type 'Alien'"):
        protocol.read_events(_write(tmp_path, unknown))


def test_stamp_makes_every_field_a_plain_builtin():
    """A str/float subclass (torch.__version__, numpy.float64) would be pickled by reference and make
    the UI import its library to read the event; stamping turns it into the builtin."""

    class Version(str):
        pass

    class Number(float):
        pass

    event = protocol.EngineReady(
        pid=1,
        protocol_version=1,
        torch_version=Version("2.13"),
        python_version="3.11",
        cuda_available=False,
        device_names=(Version("gpu"),),
    )
    stamped = protocol.stamp(event, run_id="r", seq=1)
    assert type(stamped.torch_version) is str and type(stamped.device_names[0]) is str
    metrics = protocol.stamp(
        protocol.StepMetrics(
            step=1,
            epoch=0,
            total_steps=2,
            loss=Number(0.5),
            loss_min=0.5,
            loss_max=0.5,
            steps_covered=1,
            lr=1e-3,
            grad_norm=1.0,
            samples_per_s=1.0,
            eta_s=1.0,
        ),
        run_id="r",
        seq=2,
    )
    assert type(metrics.loss) is float and metrics.loss == 0.5
