"""Configuration loading: every broken fixture gives exactly its expected errors, valid ones load.

Broken configurations are data, Telegraf-style: ``tests/configs/broken/<case>.yaml`` with the
exact expected output in ``<case>.expected`` next to it (files it includes live in
``broken/includes/``). To add a case, add the two files.
"""

from __future__ import annotations

import io
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import drivers
from agent.config import (
    AgentConfig,
    ConfigError,
    ConfigIssue,
    DeviceConfig,
    check_config_command,
    load_config,
    resolved_code,
)
from agent.config.errors import format_path
from agent.config.models import PolledDeviceConfig
from drivers.simulated.config import SimulatedDevice

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).resolve().parent / "configs"
BROKEN = CONFIGS / "broken"
VALID = CONFIGS / "valid"
BROKEN_CASES = sorted(p.stem for p in BROKEN.glob("*.yaml"))
ISSUE_LINE = re.compile(r"^[^:]+:\d+:\d+: \S.*$")

GATEWAY = 'gateway:\n  id: gw-1\n  community: {code: "350102001001"}\n'


def errors_of(path: Path | str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [str(issue) for issue in caught.value.issues]


def write(directory: Path, text: str, name: str = "agent.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- broken configurations -----------------------------------------------------------------------


def test_there_are_enough_broken_cases() -> None:
    assert len(BROKEN_CASES) >= 20
    for case in BROKEN_CASES:
        assert (BROKEN / f"{case}.expected").is_file(), f"{case}.yaml has no .expected file"


@pytest.mark.parametrize("case", BROKEN_CASES)
def test_broken_config(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BROKEN)
    expected = (BROKEN / f"{case}.expected").read_text(encoding="utf-8").splitlines()
    got = errors_of(f"{case}.yaml")
    assert got == expected
    for line in got:
        assert ISSUE_LINE.match(line), line


@pytest.mark.parametrize("case", ["several_errors_sorted", "error_in_included_file"])
def test_issues_are_sorted_and_unique(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BROKEN)
    with pytest.raises(ConfigError) as caught:
        load_config(f"{case}.yaml")
    issues = caught.value.issues
    assert len(issues) > 1
    assert issues == sorted(set(issues))
    assert str(caught.value) == "\n".join(str(i) for i in issues)


def test_file_name_is_shown_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(CONFIGS)
    assert errors_of("broken/typo_key.yaml") == [
        (
            "broken/typo_key.yaml:7:5: devices[0].intervall_s: unknown key 'intervall_s' "
            "(typo? did you mean 'interval_s'?)"
        )
    ]
    assert errors_of("./broken/../broken/include_cycle.yaml") == [
        (
            "broken/includes/cycle-b.yaml:2:11: include[0]: include cycle: "
            "broken/includes/cycle-a.yaml -> broken/includes/cycle-b.yaml -> "
            "broken/includes/cycle-a.yaml"
        )
    ]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert errors_of(missing) == [f"{missing}:1:1: cannot read the file: No such file or directory"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(GATEWAY.encode() + b"  name: \xb6\xab\xbd\xd6\n")
    assert errors_of(path) == [f"{path}:4:9: the file is not UTF-8 text: save it as UTF-8"]


def test_included_file_may_only_add_buses_and_devices(tmp_path: Path) -> None:
    write(tmp_path, "devices: {id: x}\nbuses: []\n", "part.yaml")
    main = write(tmp_path, GATEWAY + "include: [part.yaml, part.yaml]\n")
    assert errors_of(main) == [
        f"{main}:4:22: include[1]: 'part.yaml' is included more than once",
        f"{tmp_path}/part.yaml:1:10: devices: must be a list",
    ]


def test_alias_loop_and_bad_keys(tmp_path: Path) -> None:
    main = write(tmp_path, GATEWAY + "devices: &d\n  - *d\n? [a, b]\n: 1\n")
    assert errors_of(main) == [
        # PyYAML hands back the anchored node for an alias, so the mark is the anchor's.
        f"{main}:4:10: devices[0]: a YAML alias refers to the value that contains it",
        f"{main}:6:3: a key must be plain text, not a list or mapping",
    ]


def test_yaml_one_one_keys_stay_text(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare 'on' or 'no' key as a boolean; a config key is always its text.
    main = write(tmp_path, GATEWAY + "on: 1\n")
    assert errors_of(main) == [
        (
            f"{main}:4:1: on: unknown key 'on' "
            "(allowed: gateway, buffer, uplink, buses, devices, logging, clock, control, web)"
        )
    ]


def test_merge_keys_may_be_overridden_but_own_keys_not_repeated(tmp_path: Path) -> None:
    text = (
        GATEWAY
        + "devices:\n"
        + "  - &m {id: a, driver: simulated, points: [{name: p, kind: counter}]}\n"
        + "  - <<: *m\n    id: b\n    id: c\n"
    )
    main = write(tmp_path, text)
    assert errors_of(main) == [
        (
            f"{main}:8:5: devices[1].id: duplicate key 'id' (first set on line 7; "
            "YAML would silently keep only the last one)"
        )
    ]


def test_garbage_never_raises_anything_but_config_error() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "garbage.yaml"

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            st.text(alphabet=st.sampled_from(list(":-[]{}&*!|>'\"#%@`, \n\tab01.")), max_size=60)
        )
        def check(text: str) -> None:
            path.write_text(GATEWAY + text, encoding="utf-8")
            issues: list[ConfigIssue] = []
            try:
                load_config(path)
            except ConfigError as exc:
                issues = exc.issues
                if not issues:
                    pytest.fail("ConfigError without issues")
            for issue in issues:
                assert ISSUE_LINE.match(str(issue)), issue

        check()


# --- valid configurations ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_repository_configs_validate(path: Path) -> None:
    config = load_config(path)
    assert config.devices


def test_repository_has_demo_and_sample() -> None:
    assert {p.name for p in (ROOT / "config").glob("*.yaml")} >= {"demo.yaml", "sample.yaml"}


def test_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    config = load_config("config/demo.yaml")
    assert config.gateway.id == "gw-demo"
    assert config.gateway.community.code == "350102001001"
    assert config.gateway.community.name == "东街社区"
    assert config.uplink.http is None
    assert config.buffer.path == ROOT / "config" / "demo-state" / "buffer.db"
    assert len(config.devices) == 6
    assert all(isinstance(d, SimulatedDevice) for d in config.devices)
    assert all(2 <= d.interval_s <= 10 for d in config.devices)
    flaky = [d for d in config.devices if isinstance(d, SimulatedDevice) and d.failure]
    assert [(f.failure.mode, f.failure.probability) for f in flaky if f.failure] == [
        ("timeout", 0.2)
    ]


def test_sample_shows_every_section() -> None:
    text = (ROOT / "config" / "sample.yaml").read_text(encoding="utf-8")
    for section in AgentConfig.model_fields:
        assert re.search(rf"^{section}:", text, re.MULTILINE), section
    config = load_config(ROOT / "config" / "sample.yaml")
    assert config.uplink.http is not None
    assert config.uplink.http.secret.file == Path("/etc/edge-agent/uplink.key")
    assert {b.id: (b.serial is not None, b.tcp is not None) for b in config.buses} == {
        "rs485-1": (True, False),
        "plant-room": (False, True),
    }
    assert all(d.location is not None for d in config.devices)


def test_includes_anchors_and_merge_keys() -> None:
    config = load_config(VALID / "site.yaml")
    assert [b.id for b in config.buses] == ["rs485-1", "b5-gateway"]
    assert [d.id for d in config.devices] == ["meter-a", "meter-b", "b5-temp", "b5-door"]
    meter_b = config.devices[1]
    assert (meter_b.bus, meter_b.interval_s, meter_b.serial_no) == ("rs485-1", 15, 7)
    assert config.devices[3].code == "11010500301340000001"


def test_codes_are_filled_in() -> None:
    config = load_config(VALID / "site.yaml")
    for device in config.devices:
        assert device.code is not None
        assert re.fullmatch(r"\d{20}", device.code)
        assert resolved_code(config, device) == device.code
    assert config.devices[1].code == "11010500001907000007"
    assert config.gateway.code is not None
    assert config.gateway.code.startswith("11010500" + "00" + "209" + "7")
    assert len({d.code for d in config.devices} | {config.gateway.code}) == 5


def test_minimal_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GATEWAY))
    assert config.devices == []
    assert config.buffer.path == Path("/var/lib/edge-agent/buffer.db")
    assert config.gateway.timezone == "Asia/Shanghai"


def test_relative_paths_follow_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (
        GATEWAY
        + "buffer: {path: ./state/buffer.db}\n"
        + "control: {socket: /run/edge-agent/control.sock}\n"
        + "uplink:\n  http:\n    url: https://p.example.gov.cn\n    key_id: k\n"
        + "    secret: {file: ../keys/uplink.key}\n    ca_file: ca.pem\n"
    )
    write(tmp_path / "etc", text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/agent.yaml")
    monkeypatch.chdir(elsewhere)
    assert config.buffer.path.is_absolute()
    assert config.buffer.path.resolve() == (tmp_path / "etc" / "state" / "buffer.db").resolve()
    assert config.control.socket == Path("/run/edge-agent/control.sock")
    assert config.uplink.http is not None
    assert config.uplink.http.secret.file is not None
    assert config.uplink.http.secret.file.resolve() == (tmp_path / "keys" / "uplink.key").resolve()
    assert config.uplink.http.ca_file is not None
    assert config.uplink.http.ca_file.resolve() == (tmp_path / "etc" / "ca.pem").resolve()


def test_simulated_device_may_sit_on_any_bus(tmp_path: Path) -> None:
    text = (
        GATEWAY
        + "buses:\n  - {id: line, serial: {port: /dev/ttyS0}}\n"
        + "  - {id: host, tcp: {host: 10.0.0.1}}\n"
        + "devices:\n"
        + "  - {id: a, driver: simulated, bus: line, points: [{name: p, kind: counter}]}\n"
        + "  - {id: b, driver: simulated, bus: host, points: [{name: p, kind: counter}]}\n"
        + "  - {id: c, driver: simulated, points: [{name: p, kind: counter}]}\n"
    )
    config = load_config(write(tmp_path, text))
    assert [d.bus for d in config.devices] == ["line", "host", None]


# --- drivers with buses and commands (registered for the test) -----------------------------------


class SerialMeter(PolledDeviceConfig):
    driver: Literal["fakeserial"]
    bus_kinds: ClassVar[frozenset[str]] = frozenset({"serial"})
    known_commands: ClassVar[frozenset[str]] = frozenset({"relay.open"})


class NoBusThing(PolledDeviceConfig):
    driver: Literal["fakenobus"]


class Misdeclared(DeviceConfig):
    driver: str


@pytest.fixture
def fake_drivers(monkeypatch: pytest.MonkeyPatch) -> None:
    models: dict[str, type[DeviceConfig]] = {"fakeserial": SerialMeter, "fakenobus": NoBusThing}
    real = drivers.config_model

    def config_model(name: str) -> type[DeviceConfig]:
        return models[name] if name in models else real(name)

    for name in models:
        spec = drivers.DriverSpec(name, f"tests:{name}", f"tests:{name}")
        monkeypatch.setitem(drivers.DRIVERS, name, spec)
    monkeypatch.setattr(drivers, "config_model", config_model)


@pytest.mark.usefixtures("fake_drivers")
def test_bus_and_command_checks(tmp_path: Path) -> None:
    text = (
        GATEWAY
        + "buses:\n  - {id: line, serial: {port: /dev/ttyS0}}\n"
        + "  - {id: host, tcp: {host: 10.0.0.1}}\n"
        + "devices:\n"
        + "  - {id: m1, driver: fakeserial}\n"
        + "  - {id: m2, driver: fakeserial, bus: host}\n"
        + "  - {id: m3, driver: fakeserial, bus: line, commands: [relay.open, relay.opne]}\n"
        + "  - {id: t1, driver: fakenobus, bus: line, commands: [reboot]}\n"
        + "  - {id: t2, driver: fakenobs, intervall_s: 3}\n"
        + "  - {id: t3, driver: fakenobus, intervall_s: 3}\n"
    )
    main = write(tmp_path, text)
    assert errors_of(main) == [
        (
            f"{main}:8:5: devices[0]: missing required key 'bus' "
            "(driver 'fakeserial' talks over a serial bus declared under buses:)"
        ),
        f"{main}:9:39: devices[1].bus: bus 'host' is a tcp bus; driver 'fakeserial' needs serial",
        (
            f"{main}:10:68: devices[2].commands[1]: 'relay.opne' is not a command of driver "
            "'fakeserial' (known: relay.open; did you mean 'relay.open'?)"
        ),
        f"{main}:11:38: devices[3].bus: driver 'fakenobus' does not use a bus: remove 'bus'",
        f"{main}:11:55: devices[3].commands[0]: driver 'fakenobus' accepts no commands",
        (
            f"{main}:12:22: devices[4].driver: unknown driver 'fakenobs' "
            "(known: ble, cjt188, dlt645, fakenobus, fakeserial, modbus, onvif, osdp, simulated; "
            "did you mean 'fakenobus'?)"
        ),
        (
            f"{main}:13:33: devices[5].intervall_s: unknown key 'intervall_s' "
            "(typo? did you mean 'interval_s'?)"
        ),
    ]


def test_driver_model_must_declare_its_literal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(drivers.DRIVERS, "bad", drivers.DriverSpec("bad", "tests:bad", "tests:bad"))
    real = drivers.config_model
    monkeypatch.setattr(
        drivers, "config_model", lambda name: Misdeclared if name == "bad" else real(name)
    )
    # Checked when a file names the driver: a driver no device names is not even imported.
    load_config(write(tmp_path, GATEWAY))
    with pytest.raises(TypeError, match=r"Misdeclared must declare driver: Literal\['bad'\]"):
        load_config(write(tmp_path, GATEWAY + "devices:\n  - {id: x, driver: bad}\n"))


def test_every_registered_driver_keeps_the_model_contract() -> None:
    from agent.config._validate import device_model

    for name in drivers.DRIVERS:
        model = device_model(name)
        assert model is not None
        assert issubclass(model, DeviceConfig)


# --- check-config --------------------------------------------------------------------------------


def test_check_config_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    out, err = io.StringIO(), io.StringIO()
    assert check_config_command("config/demo.yaml", out, err) == 0
    assert err.getvalue() == ""
    assert out.getvalue() == (
        "config/demo.yaml: OK - gateway gw-demo, community 350102001001 (东街社区), "
        "0 buses, 6 devices (simulated: 6)\n"
    )


def test_check_config_counts_buses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(VALID)
    out, err = io.StringIO(), io.StringIO()
    assert check_config_command("site.yaml", out, err) == 0
    assert out.getvalue() == (
        "site.yaml: OK - gateway gw-site, community 110105003002 (望京), "
        "2 buses, 4 devices (simulated: 4)\n"
    )


def test_check_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BROKEN)
    out, err = io.StringIO(), io.StringIO()
    assert check_config_command("several_errors_sorted.yaml", out, err) == 1
    assert out.getvalue() == ""
    expected = (BROKEN / "several_errors_sorted.expected").read_text(encoding="utf-8")
    assert err.getvalue() == expected + "several_errors_sorted.yaml: 8 errors\n"


def test_check_config_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BROKEN)
    out, err = io.StringIO(), io.StringIO()
    assert check_config_command("typo_key.yaml", out, err) == 1
    assert err.getvalue().endswith("\ntypo_key.yaml: 1 error\n")


_AUDIT: list[tuple[str, tuple[Any, ...]]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _AUDIT is not None and (event == "open" or event.startswith(("socket.", "subprocess."))):
        _AUDIT.append((event, args))


sys.addaudithook(_audit)


def test_check_config_reads_only_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    global _AUDIT  # noqa: PLW0603
    monkeypatch.chdir(ROOT)
    sink = io.StringIO()
    check_config_command("config/sample.yaml", sink, sink)  # warm up imports and caches
    _AUDIT = []
    try:
        assert check_config_command("config/sample.yaml", sink, sink) == 0
        events = list(_AUDIT)
    finally:
        _AUDIT = None
    assert not [e for e, _ in events if e != "open"]
    opened = {str(args[0]) for _, args in events}
    # The sample names a secret file, a CA and a socket that do not exist here: none is touched.
    assert opened == {"config/sample.yaml"}


# --- small pieces --------------------------------------------------------------------------------


def test_issue_format() -> None:
    issue = ConfigIssue("a.yaml", 3, 7, "devices[2].points[5].data_type", "bad")
    assert str(issue) == "a.yaml:3:7: devices[2].points[5].data_type: bad"
    assert str(ConfigIssue("a.yaml", 1, 1, "", "empty")) == "a.yaml:1:1: empty"
    assert format_path(("devices", 2, "points", 5, "data_type")) == "devices[2].points[5].data_type"
    assert format_path(()) == ""


def test_simulated_device_model_on_its_own() -> None:
    device = SimulatedDevice.model_validate(
        {"id": "s", "driver": "simulated", "points": [{"name": "p", "kind": "counter"}]}
    )
    assert (device.kind, device.seed, device.latency_ms, device.bus) == ("sensor", 0, 5, None)
    assert SimulatedDevice.bus_optional
    assert SimulatedDevice.known_commands == {"output.set", "simulate.fault"}
    point = device.points[0]
    assert (point.start, point.step, point.amplitude, point.period_s) == (0, 1, 1, 60)


# --- devices sharing a bus ------------------------------------------------------------------------


def test_two_devices_at_one_address_on_a_bus_are_refused_with_both_lines(tmp_path: Path) -> None:
    meter = "{{id: {id}, driver: modbus, bus: {bus}, unit: {unit}, profile: chint-ddsu666}}"
    text = (
        GATEWAY
        + "buses:\n"
        + "  - {id: line, serial: {port: /dev/ttyS0}}\n"
        + "  - {id: other, serial: {port: /dev/ttyS1}}\n"
        + "devices:\n"
        + f"  - {meter.format(id='m1', bus='line', unit=1)}\n"
        + f"  - {meter.format(id='m2', bus='line', unit=2)}\n"
        + f"  - {meter.format(id='m3', bus='other', unit=1)}\n"
        + f"  - {meter.format(id='m4', bus='line', unit=1)}\n"
    )
    main = write(tmp_path, text)
    assert errors_of(main) == [
        (
            f"{main}:11:47: devices[3].unit: unit 1 is already used on bus 'line' by "
            f"devices[0] ('m1') at {main}:8: two devices cannot answer to one address"
        ),
    ]


def test_a_protocol_the_line_settings_do_not_suit_is_refused_with_the_line(tmp_path: Path) -> None:
    text = (
        GATEWAY
        + "buses:\n"
        + "  - {id: line, serial: {port: /dev/ttyS0, data_bits: 7, parity: even}}\n"
        + "devices:\n"
        + "  - {id: m1, driver: modbus, bus: line, unit: 1, profile: chint-ddsu666}\n"
    )
    main = write(tmp_path, text)
    assert errors_of(main) == [
        (
            f"{main}:7:35: devices[0].bus: bus 'line' (buses[0].serial at {main}:5) does not "
            "suit driver 'modbus': Modbus RTU needs 8 data bits (7 is Modbus ASCII, which is "
            "not supported)"
        ),
    ]


def test_the_loaded_config_is_the_validated_one_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_config`` hands back a copy rebuilt from a pickle (to free the parser's memory): it
    must equal what validation made, keep the built class and its device models, and pickle
    again (SIGHUP compares old and new configs)."""
    import pickle

    from agent.config import loader
    from agent.config.loader import _load

    site = VALID / "site.yaml"
    monkeypatch.setattr(loader, "_COMPACT_FROM_VALUES", 0)
    loaded, (validated, _values) = load_config(site), _load(str(site))
    assert loaded == validated
    assert type(loaded) is type(validated)
    assert [type(d) for d in loaded.devices] == [type(d) for d in validated.devices]
    assert {d.driver for d in loaded.devices} >= {"simulated"}
    assert pickle.loads(pickle.dumps(loaded)) == loaded  # noqa: S301
    assert loaded.model_copy(update={"devices": []}).devices == []
