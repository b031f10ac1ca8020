"""Round trips of every interchange format, and bad input that must come out as a
typed `DoraError` naming the field (hypothesis feeds random and broken documents)."""

import copy
import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dora_rl.cost import CostModel
from dora_rl.errors import ClusterError, DoraError, PlanError, ProfileError, ScenarioError
from dora_rl.plan import Plan
from dora_rl.profile.model_profile import ModelProfile
from dora_rl.scenario import Scenario, load_scenario, preset_names
from tests.toy import HOME, scenario, toy_profile


def test_presets_exist_and_load():
    assert {"smart_home", "traffic_analytics", "edge_cluster"} <= set(preset_names())
    for name in preset_names():
        s = load_scenario(name)
        assert s.name == name and s.profile.n_blocks > 1


@pytest.mark.parametrize("name", ["smart_home", "traffic_analytics", "edge_cluster"])
def test_scenario_yaml_round_trip(name, tmp_path):
    s = load_scenario(name)
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(s.to_dict(), sort_keys=False))
    s2 = load_scenario(p)
    assert s2.to_dict() == s.to_dict()
    assert s2.profile.to_dict() == s.profile.to_dict()


def test_scenario_with_profile_path(tmp_path):
    toy_profile().save(tmp_path / "toy.json")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(HOME))
    s = load_scenario(tmp_path / "s.yaml")
    assert s.profile.to_dict() == toy_profile().to_dict()


def test_plan_and_profile_json_round_trip(tmp_path):
    plan = Plan.make([(0, 1, ["phone"]), (1, 4, ["laptop", "tv"], [0.7, 0.3])], 2)
    plan.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json") == plan
    assert Plan.from_dict(json.loads(plan.to_json())) == plan
    prof = toy_profile()
    prof.save(tmp_path / "prof.json")
    assert ModelProfile.load(tmp_path / "prof.json").to_dict() == prof.to_dict()


def test_metrics_json_has_documented_fields():
    m = CostModel(scenario(HOME)).evaluate(Plan.make([(0, 4, ["laptop"])], 1)).to_dict()
    for key in ("feasible", "qoe_ok", "violations", "latency_ms", "throughput", "energy_j", "avg_power_w",
                "memory_bytes", "busy_frac", "battery_hours"):
        assert key in m
    json.dumps(m)


@pytest.mark.parametrize("mutate, err, words", [
    (lambda d: d["devices"].append(dict(d["devices"][0])), ScenarioError, "appears twice"),
    (lambda d: d["links"].__setitem__(0, {**d["links"][0], "mbps": 0}), ScenarioError, "'mbps' must be a positive"),
    (lambda d: d["links"].__setitem__(0, {**d["links"][0], "mbps": -5}), ScenarioError, "'mbps' must be a positive"),
    (lambda d: d["links"].__setitem__(0, {**d["links"][0], "medium": "lte"}), ScenarioError, "unknown medium 'lte'"),
    (lambda d: d["links"].__setitem__(0, {**d["links"][0], "b": "fridge"}), ScenarioError, "unknown device 'fridge'"),
    (lambda d: d.__setitem__("links", d["links"][:1]), ScenarioError, "disconnected"),
    (lambda d: d["workload"].__setitem__("source", "fridge"), ScenarioError, "workload.source"),
    (lambda d: d["workload"].__setitem__("kind", "serving"), ScenarioError, "workload.kind"),
    (lambda d: d["workload"].__setitem__("microbatches", 3), ScenarioError, "must divide"),
    (lambda d: d["qoe"].__setitem__("objective", "cost"), ScenarioError, "qoe.objective"),
    (lambda d: d["qoe"].__setitem__("latency_slo_ms", -1), ScenarioError, "qoe.latency_slo_ms"),
    (lambda d: d["devices"][0].__setitem__("gflops", "fast"), ScenarioError, "'gflops'"),
    (lambda d: d["devices"][0].__setitem__("turbo", True), ScenarioError, "unknown field(s) turbo"),
    (lambda d: d.__setitem__("model", "alexnet"), ScenarioError, "unknown model 'alexnet'"),
    (lambda d: d.__setitem__("colour", "red"), ScenarioError, "unknown top-level"),
])
def test_bad_scenarios_name_the_field(mutate, err, words, tmp_path):
    d = copy.deepcopy(HOME)
    mutate(d)
    toy_profile().save(tmp_path / "toy.json")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(err) as e:
        load_scenario(tmp_path / "s.yaml")
    assert words in str(e.value)


@pytest.mark.parametrize("plan, words", [
    ({"stages": [{"blocks": [0, 2], "devices": ["phone"]}]}, "end at block 2 but the model has 4"),
    ({"stages": [{"blocks": [0, 2], "devices": ["phone"]}, {"blocks": [3, 4], "devices": ["tv"]}]}, "a gap"),
    ({"stages": [{"blocks": [0, 5], "devices": ["phone"]}]}, "beyond the model's 4 blocks"),
    ({"stages": [{"blocks": [0, 4], "devices": ["fridge"]}]}, "unknown device 'fridge'"),
    ({"stages": [{"blocks": [0, 4], "devices": ["phone", "tv"], "shares": [0.5, 0.6]}]}, "sum to 1.1"),
    ({"stages": [{"blocks": [0, 4], "devices": ["phone", "tv"], "shares": [1.0]}]}, "2 devices but 1 shares"),
    ({"stages": [{"blocks": [0, 2], "devices": ["tv"]}, {"blocks": [2, 4], "devices": ["tv"]}]}, "stage 0 and stage 1"),
    ({"stages": [{"blocks": [0, 4], "devices": ["tv"]}], "microbatches": 3}, "must divide"),
    ({"stages": [{"blocks": "all", "devices": ["tv"]}]}, "'blocks' must be [start, end)"),
    ({"steps": []}, "expected a JSON object with 'stages'"),
])
def test_bad_plans_are_typed(plan, words):
    cm = CostModel(scenario(HOME))
    with pytest.raises(PlanError) as e:
        cm.evaluate(Plan.from_dict(plan))
    assert words in str(e.value)


def test_bad_files_are_typed(tmp_path):
    with pytest.raises(ScenarioError, match="unknown scenario"):
        load_scenario("no_such_preset")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(tmp_path / "bad.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(tmp_path / "bad.json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        ModelProfile.load(tmp_path / "bad.json")
    with pytest.raises(ProfileError, match="missing field 'blocks'"):
        ModelProfile.from_dict({"name": "x", "input_bytes": 3})


# --- property tests: random and broken documents raise only DoraError ----------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=6))


def _perturb(d, path_choice, value):
    """Replace one leaf (or drop one key) somewhere in a nested dict/list."""
    paths = []

    def walk(x, p):
        if isinstance(x, dict):
            for k, v in x.items():
                paths.append(p + [k])
                walk(v, p + [k])
        elif isinstance(x, list):
            for i, v in enumerate(x):
                paths.append(p + [i])
                walk(v, p + [i])

    walk(d, [])
    p = paths[path_choice % len(paths)]
    parent = d
    for k in p[:-1]:
        parent = parent[k]
    if value == "__drop__" and isinstance(parent, dict):
        del parent[p[-1]]
    else:
        parent[p[-1]] = value
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10**6), st.one_of(scalars, st.just("__drop__"), st.lists(scalars, max_size=3),
                                        st.dictionaries(st.text(max_size=4), scalars, max_size=2)))
def test_broken_scenarios_raise_only_dora_errors(choice, value):
    d = _perturb(copy.deepcopy(HOME), choice, value)
    try:
        s = Scenario.from_dict(d, profile=toy_profile())
    except DoraError:
        return
    # what loads must be scoreable
    CostModel(s).evaluate(Plan.make([(0, s.profile.n_blocks, [s.workload.source])], s.workload.microbatches))


plan_docs = st.fixed_dictionaries({
    "microbatches": st.one_of(st.integers(-1, 4), scalars),
    "stages": st.lists(st.fixed_dictionaries({
        "blocks": st.one_of(st.lists(st.integers(-1, 6), min_size=0, max_size=3), scalars),
        "devices": st.one_of(st.lists(st.sampled_from(["phone", "laptop", "tv", "fridge"]), max_size=3), scalars),
        "shares": st.one_of(st.lists(st.one_of(st.floats(-1, 2), st.just(float("nan"))), max_size=3), scalars),
    }), max_size=4),
})


@settings(max_examples=300, deadline=None)
@given(plan_docs)
def test_random_plans_raise_only_plan_errors(doc):
    cm = CostModel(scenario(HOME))
    try:
        m = cm.evaluate(Plan.from_dict(doc))
    except PlanError:
        return
    assert m.latency_ms > 0 and m.energy_j > 0


def test_cluster_errors_are_cluster_errors():
    from dora_rl.cluster.model import Cluster

    with pytest.raises(ClusterError, match="'devices' must be a non-empty list"):
        Cluster.from_dict({"devices": []})
