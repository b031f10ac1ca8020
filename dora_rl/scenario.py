"""Scenario = model profile + cluster + workload + QoE (+ optional dynamics).

One YAML file (format in DESIGN.md §4 and docs/formats.md) describes it; presets ship
in the repository's `envs/` folder (found through dora_rl/resources.py) and are named by their file stem. Everywhere a
scenario is asked for, a preset name or a YAML path is accepted (`load_scenario`)."""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dora_rl.cluster.model import Cluster
from dora_rl.errors import ClusterError, DoraError, PlanError, ProfileError, ScenarioError
from dora_rl.profile.measured import DeviceProfile
from dora_rl.profile.model_profile import ModelProfile
from dora_rl.resources import presets_dir

PRESET_DIR = presets_dir()
OPTIMIZER_STATE = {"sgd": 0, "momentum": 1, "adam": 2}   # optimizer-state copies of the parameters


@dataclass(frozen=True)
class Workload:
    """What runs. Inference: requests of `batch` samples at `request_rate`/s, born and
    answered on `source`. Training: a global batch of `batch` samples per iteration,
    split into `microbatches`, 1F1B, with `optimizer` (sets the optimizer-state memory)."""

    kind: str = "inference"
    batch: int = 1
    microbatches: int = 1
    request_rate: float | None = None
    source: str | None = None
    optimizer: str = "adam"

    @property
    def training(self) -> bool:
        return self.kind == "training"


@dataclass(frozen=True)
class QoE:
    """What the user needs. Any target may be None (not required)."""

    latency_slo_ms: float | None = None
    min_throughput: float | None = None
    min_battery_hours: float | None = None
    objective: str = "latency"


@dataclass
class Scenario:
    name: str
    model: str | dict
    profile: ModelProfile
    cluster: Cluster
    workload: Workload
    qoe: QoE
    dynamics: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)   # device name -> DeviceProfile (measured block times)
    # run seconds per second of device time (`dilated`; 1 for a scenario as written): what
    # the adapter converts its device-time constants with (not part of the YAML format)
    dilation: float = 1.0

    @property
    def source(self) -> str:
        return self.workload.source  # always filled in by from_dict

    # ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, *, base_dir: Path | None = None, profile: ModelProfile | None = None) -> "Scenario":
        if not isinstance(d, dict):
            raise ScenarioError("scenario: expected a YAML mapping with name, model, workload, qoe, devices, links")
        known = {"name", "model", "workload", "qoe", "devices", "links", "media", "dynamics", "description"}
        unknown = set(d) - known
        if unknown:
            raise ScenarioError(f"scenario: unknown top-level field(s) {', '.join(sorted(map(str, unknown)))}; "
                                f"allowed: {', '.join(sorted(known))}")
        name = str(d.get("name", "scenario"))
        if "model" not in d:
            raise ScenarioError(f"scenario {name!r}: missing 'model' (a zoo name such as resnet18, "
                                "or {profile: path/to/profile.json})")
        model = d["model"]
        if profile is None:
            profile = _resolve_profile(model, base_dir, name)
        devices = _absolute_profiles(d.get("devices"), base_dir)
        try:
            cluster = Cluster.from_dict({"devices": devices, "links": d.get("links"), "media": d.get("media")})
        except ClusterError as e:
            raise ScenarioError(f"scenario {name!r}: {e}") from None
        workload = _parse_workload(d.get("workload") or {}, cluster, name)
        qoe = _parse_qoe(d.get("qoe") or {}, name)
        dyn = d.get("dynamics") or {}
        if not isinstance(dyn, dict):
            raise ScenarioError(f"scenario {name!r}: 'dynamics' must be a mapping "
                                "(e.g. bandwidth: {medium: wifi, trace: ...})")
        bw = dyn.get("bandwidth")
        if bw is not None:
            if not isinstance(bw, dict):
                raise ScenarioError(f"scenario {name!r}: dynamics.bandwidth must be a mapping with 'medium'")
            if bw.get("medium") not in cluster.media:
                raise ScenarioError(f"scenario {name!r}: dynamics.bandwidth.medium {bw.get('medium')!r} is not a "
                                    f"declared medium (known: {', '.join(cluster.media) or 'none'})")
        measured = _load_measured(cluster, profile, workload, name)
        return cls(name, model, profile, cluster, workload, qoe, copy.deepcopy(dyn), measured)

    def to_dict(self) -> dict:
        w, q = self.workload, self.qoe
        wd = {"kind": w.kind, "batch": w.batch, "microbatches": w.microbatches, "source": w.source}
        if w.request_rate is not None:
            wd["request_rate"] = w.request_rate
        if w.training:
            wd["optimizer"] = w.optimizer
        qd = {k: v for k, v in (("latency_slo_ms", q.latency_slo_ms), ("min_throughput", q.min_throughput),
                                ("min_battery_hours", q.min_battery_hours)) if v is not None}
        qd["objective"] = q.objective
        out = {"name": self.name, "model": self.model, "workload": wd, "qoe": qd, **self.cluster.to_dict()}
        if self.dynamics:
            out["dynamics"] = copy.deepcopy(self.dynamics)
        return out

    def dynamic_medium(self) -> str | None:
        """The medium whose bandwidth moves at run time: dynamics.bandwidth.medium, else
        the first declared medium, else None (an Ethernet-only cluster)."""
        bw = (self.dynamics or {}).get("bandwidth") or {}
        if bw.get("medium") in self.cluster.media:
            return bw["medium"]
        return next(iter(self.cluster.media), None)

    def replace(self, **kw) -> "Scenario":
        """A shallow copy with some fields replaced (cluster, workload, qoe, ...)."""
        d = dict(self.__dict__)
        d.update(kw)
        return Scenario(**d)

    # ------------------------------------------------------------------ transforms
    def without_devices(self, dead) -> "Scenario":
        """The scenario with devices `dead` (and their links) removed (the survivors of a fault)."""
        d = self.cluster.to_dict()
        d["devices"] = [x for x in d["devices"] if x["name"] not in dead]
        d["links"] = [ln for ln in d["links"] if ln["a"] not in dead and ln["b"] not in dead]
        return self.replace(cluster=Cluster.from_dict(d),
                            measured={k: v for k, v in self.measured.items() if k not in dead})

    def slowed(self, slowdown: float) -> "Scenario":
        """The scenario with every device's compute rate divided by `slowdown` (emulation
        on a CPU slower than the modelled devices: the modelled time must dominate)."""
        if slowdown == 1.0:
            return self
        if not slowdown > 0:
            raise PlanError(f"--slowdown must be a positive number, got {slowdown!r}")
        d = self.cluster.to_dict()
        for dev in d["devices"]:
            dev["gflops"] = dev["gflops"] / slowdown
        return self.replace(cluster=Cluster.from_dict(d),
                            measured={k: v.scaled(slowdown) for k, v in self.measured.items()})

    def dilated(self, slowdown: float) -> "Scenario":
        """The scenario `slowdown` times slower in every respect: compute, link and medium
        rates divided by it; latencies, the SLO and the request period multiplied by it
        (the live adapter loop: every plan's compliance stays what it is at real speed)."""
        if slowdown == 1.0:
            return self
        from dataclasses import replace as dc_replace

        d = self.slowed(slowdown).cluster.to_dict()   # compute (and the argument check)
        for ln in d["links"]:
            ln["mbps"] = ln["mbps"] / slowdown
            ln["latency_ms"] = ln.get("latency_ms", 0.0) * slowdown
        for m in d["media"].values():
            m["mbps"] = m["mbps"] / slowdown
        w, q = self.workload, self.qoe
        wl = dc_replace(w, request_rate=w.request_rate / slowdown if w.request_rate else w.request_rate)
        qoe = dc_replace(q, latency_slo_ms=q.latency_slo_ms * slowdown if q.latency_slo_ms else q.latency_slo_ms,
                         min_throughput=q.min_throughput / slowdown if q.min_throughput else q.min_throughput)
        return self.replace(cluster=Cluster.from_dict(d), workload=wl, qoe=qoe, dilation=self.dilation * slowdown)


def _num(v, field_name: str, scen: str, *, positive=True, allow_none=True, integer=False):
    if v is None and allow_none:
        return None
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    if ok and integer:
        ok = float(v).is_integer()
    if ok and positive:
        ok = v > 0
    if not ok:
        kind = "a positive whole number" if integer else ("a positive number" if positive else "a number")
        raise ScenarioError(f"scenario {scen!r}: {field_name} must be {kind}, got {v!r}")
    return int(v) if integer else float(v)


def _section(d, section: str, cls, name: str) -> dict:
    """Check that a section is a mapping whose keys are fields of `cls`."""
    if not isinstance(d, dict):
        raise ScenarioError(f"scenario {name!r}: {section!r} must be a mapping")
    allowed = set(cls.__dataclass_fields__)
    unknown = set(map(str, d)) - allowed
    if unknown:
        raise ScenarioError(f"scenario {name!r}: {section} has unknown field(s) {', '.join(sorted(unknown))}; "
                            f"allowed: {', '.join(sorted(allowed))}")
    return d


def _parse_workload(w: dict, cluster: Cluster, name: str) -> Workload:
    _section(w, "workload", Workload, name)
    kind = w.get("kind", "inference")
    if kind not in ("inference", "training"):
        raise ScenarioError(f"scenario {name!r}: workload.kind must be 'inference' or 'training', got {kind!r}")
    batch = _num(w.get("batch", 1), "workload.batch", name, integer=True, allow_none=False)
    mb = _num(w.get("microbatches", 1), "workload.microbatches", name, integer=True, allow_none=False)
    if batch % mb:
        raise ScenarioError(f"scenario {name!r}: workload.microbatches ({mb}) must divide workload.batch ({batch})")
    rate = _num(w.get("request_rate"), "workload.request_rate", name)
    source = w.get("source", cluster.devices[0].name)
    if str(source) not in cluster.index:
        raise ScenarioError(f"scenario {name!r}: workload.source {source!r} is not a device; "
                            f"known devices: {', '.join(cluster.names)}")
    opt = w.get("optimizer", "adam")
    if opt not in OPTIMIZER_STATE:
        raise ScenarioError(f"scenario {name!r}: workload.optimizer must be one of "
                            f"{', '.join(OPTIMIZER_STATE)}, got {opt!r}")
    return Workload(kind, batch, mb, rate, str(source), opt)


def _parse_qoe(q: dict, name: str) -> QoE:
    _section(q, "qoe", QoE, name)
    obj = q.get("objective", "latency")
    if obj not in ("latency", "energy"):
        raise ScenarioError(f"scenario {name!r}: qoe.objective must be 'latency' or 'energy', got {obj!r}")
    return QoE(_num(q.get("latency_slo_ms"), "qoe.latency_slo_ms", name),
               _num(q.get("min_throughput"), "qoe.min_throughput", name),
               _num(q.get("min_battery_hours"), "qoe.min_battery_hours", name), obj)


def _absolute_profiles(devices, base_dir: Path | None):
    """Device rows with `profile:` paths made absolute (relative to the scenario file),
    so that the scenario's dict round-trips (transforms, to_dict) keep finding them."""
    if not isinstance(devices, list) or base_dir is None:
        return devices
    out = []
    for row in devices:
        if isinstance(row, dict) and isinstance(row.get("profile"), str) and not Path(row["profile"]).is_absolute():
            row = {**row, "profile": str((base_dir / row["profile"]).resolve())}
        out.append(row)
    return out


def _load_measured(cluster: Cluster, profile: ModelProfile, workload: Workload, scen: str) -> dict:
    """Each device's measured block times (`profile:`), checked against the model."""
    out = {}
    for dev in cluster.devices:
        if dev.profile is None:
            continue
        try:
            dp = DeviceProfile.load(dev.profile)
            dp.check_model(profile.name, profile.n_blocks, f"device {dev.name!r}")
        except ProfileError as e:
            raise ScenarioError(f"scenario {scen!r}: {e}") from None
        if workload.training and not dp.training:
            raise ScenarioError(f"scenario {scen!r}: device {dev.name!r}: profile {dp.source} has no backward "
                                f"times but the workload trains; measure it with `dora profile {dp.model} "
                                "--measure --training`")
        out[dev.name] = dp
    return out


def _resolve_profile(model, base_dir: Path | None, scen: str) -> ModelProfile:
    from dora_rl.profile import get_profile  # the zoo imports torch: only when a zoo model is named

    try:
        if isinstance(model, str):
            return get_profile(model)
        if isinstance(model, dict) and "profile" in model:
            p = Path(model["profile"])
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            return ModelProfile.load(p)
    except ProfileError as e:
        raise ScenarioError(f"scenario {scen!r}: model: {e}") from None
    raise ScenarioError(f"scenario {scen!r}: 'model' must be a zoo name or {{profile: path.json}}, got {model!r}")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def scenario_path(name_or_path: str | Path) -> Path:
    """Resolve a preset name or a YAML path to a file, or raise ScenarioError."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ScenarioError(f"scenario file {str(p)!r} does not exist")
        return p
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    raise ScenarioError(f"unknown scenario {str(name_or_path)!r}: not a file and not a preset "
                        f"(presets: {', '.join(preset_names()) or 'none'})")


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a scenario by preset name (a file stem in envs/) or by YAML path."""
    if isinstance(name_or_path, Scenario):
        return name_or_path
    p = scenario_path(name_or_path)
    try:
        d = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ScenarioError(f"scenario file {str(p)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if isinstance(d, dict) and "name" not in d:
        d["name"] = p.stem
    try:
        return Scenario.from_dict(d, base_dir=p.parent)
    except ScenarioError:
        raise
    except DoraError as e:
        raise ScenarioError(f"{p}: {e}") from None
