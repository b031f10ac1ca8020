"""`AdaptEnv`: the runtime adapter's decision as an environment, on the dynamics the adapter sees.

Why: bandwidth moves every second and batteries run down, so the plan that was best at
deploy time stops being best. A step is one control interval of the runtime simulator
(dora_rl/envs/adapt_sim.py: IntervalSim replays simulate()'s loop), decided by the `ppo`
runtime adapter itself (dora_rl/adapter/learned.py) with the agent's action as its
policy's answer: the same candidates (the DP's Pareto sets at 0.25x..2x nominal, the
composition ingredients, the partition agent's plans), the same band scoring, the same
observation (dora_rl/adapter/observation.py), the same QoE veto, the same switch cost (weights
moved at the true bandwidth + drain, the old plan serving meanwhile), the Monitor's
estimation lag and noise, batteries draining by the power model.

Episodes: a test bed (`beds`: default the bench's, `smart_home` and
`traffic_analytics@uplink1.5`; or the one `scenario`), a bandwidth trace - a file of the
TRAINING split of the real traces ($DORA_TRACES; adapt_sim.trace_split) or, with
probability `synthetic_frac` (always when no traces are found), a seeded Gilbert-Elliott
Markov trace - with its mean at U(`mean_frac`) x nominal, started at a random offset,
`horizon` intervals of `interval_s` seconds. Action: a row (keep / the LP's time-share /
a candidate), `Discrete(SLOTS)` with `action_masks()`; a masked action keeps what runs (the
LP's choice before the first deployment) and sets `info["masked_action"]`. Reward: the
interval's QoE utility (adapter.observation.qoe_utility: 1 if QoE held, battery judged on the 60 s
trailing-average draw, minus W_ENERGY x power / the initial plan's power), the bench's figure, with a
QoE miss counted `miss_weight` times (`shaped_reward`: utility - (miss_weight - 1) x 1[missed]; 1, the
default, is the bench's utility as is; `info["utility"]` is always the unshaped one). `row_utilities()`
gives, before a step, what EVERY row would be paid (IntervalSim.what_if: the training targets of
adapt_training), `replay(adapter)` what a rule adapter gets on the same episode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dora_rl.adapter.observation import CLIP, NC, NGA, SLOTS, qoe_utility
from dora_rl.envs.adapt_sim import IntervalSim, scaled_trace, test_bed, trace_split
from dora_rl.errors import AgentError, TraceError

DEFAULT_BEDS = ("smart_home", "traffic_analytics@uplink1.5")


def shaped_reward(utility, ok, miss_weight: float = 1.0):
    """The training reward: the bench's QoE utility with a QoE miss counted `miss_weight` times
    (utility - (miss_weight - 1) x (1 - ok)); scalars or arrays (`ok` 1/0)."""
    return utility - (float(miss_weight) - 1.0) * (1.0 - np.asarray(ok, dtype=float))


class _Pending:
    """The adapter's policy inside the environment: answers the action step() was given."""

    a = 0

    def act(self, obs: dict) -> int:
        return self.a


class AdaptEnv(gym.Env):
    """Keep or switch plans on the runtime's dynamics (module docstring).

    Args:
        scenario: one Scenario / preset name / test bed spec ("preset@uplinkX"), else `beds`.
        split: "train" or "validation" (the trace files used); horizon: intervals per episode.
        synthetic_frac: share of episodes on a Markov trace; mean_frac: (lo, hi) of the trace mean / nominal.
        partition_agent: passed to the `ppo` adapter (False: the DP's candidates only).
        miss_weight: a QoE miss counts this many times in the reward (>= 1; 1: the bench's utility).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, scenario=None, beds=DEFAULT_BEDS, split: str = "train", horizon: int = 120,
                 interval_s: float = 1.0, synthetic_frac: float = 0.25, mean_frac=(0.85, 1.15), noise: float = 0.05,
                 seed: int = 0, partition_agent=None, render_mode: str | None = None, miss_weight: float = 1.0):
        super().__init__()
        if split not in ("train", "validation"):
            raise TraceError(f"AdaptEnv: split must be 'train' or 'validation', got {split!r}")
        if not (isinstance(miss_weight, (int, float)) and miss_weight >= 1.0):
            raise AgentError(f"AdaptEnv: miss_weight must be a number >= 1 (1: the bench's utility), "
                             f"got {miss_weight!r}")
        self.miss_weight = float(miss_weight)
        self.beds = [scenario] if scenario is not None else list(beds)
        self.horizon, self.interval_s = int(horizon), float(interval_s)
        self.synthetic_frac, self.mean_frac, self.noise = float(synthetic_frac), tuple(mean_frac), float(noise)
        self.seed_, self.partition_agent, self.render_mode = int(seed), partition_agent, render_mode
        train, val = trace_split()
        self.traces = train if split == "train" else val
        self._adapters: dict[int, tuple] = {}
        self._trace_cache: dict = {}
        self.action_space = spaces.Discrete(SLOTS)
        self.observation_space = spaces.Dict({
            "candidates": spaces.Box(-CLIP, CLIP, (SLOTS, NC), np.float32),
            "global": spaces.Box(-CLIP, CLIP, (NGA,), np.float32),
            "action_mask": spaces.Box(0.0, 1.0, (SLOTS,), np.float32),
        })
        self.sim = None
        self.obs = None

    def _adapter(self, i: int):
        if i not in self._adapters:
            from dora_rl.adapter.learned import PPOAdapter
            from dora_rl.scenario import Scenario

            bed = self.beds[i]
            scen = bed if isinstance(bed, Scenario) else test_bed(bed)
            pol = _Pending()
            self._adapters[i] = (scen, PPOAdapter(scen, policy=pol, partition_agent=self.partition_agent), pol)
        return self._adapters[i]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self.scen, self.ad, self.pol = self._adapter(int(rng.integers(len(self.beds))))
        self.ad.reset_run()
        synthetic = not self.traces or rng.random() < self.synthetic_frac
        rel = None if synthetic else self.traces[int(rng.integers(len(self.traces)))]
        frac = float(rng.uniform(*self.mean_frac))
        tr, medium = scaled_trace(self.scen, rel, frac, int(rng.integers(2**31)), self._trace_cache)
        span = max(tr.duration - self.horizon * self.interval_s, 0.0)
        t0 = float(rng.uniform(0, span)) if span > 0 else 0.0
        self.trace_name = rel or "markov"
        self.sim_seed = int(rng.integers(2**31))
        self.sim = IntervalSim(self.scen, self.ad, tr, medium, self.interval_s, seed=self.sim_seed, t0=t0,
                               noise=self.noise)
        self._observe()
        return self.obs, {}

    def _observe(self):
        self.state = self.sim.state()
        self.obs = self.ad.context(self.state, self.ad.evaluate_state(self.state)).obs

    def replay(self, adapter) -> dict:
        """What another adapter (e.g. `pareto`) gets on the episode the last reset() drew (same test
        bed, trace, start and Monitor noise): mean QoE utility, share of intervals meeting QoE."""
        from dora_rl.adapter.observation import qoe_utility

        sim = IntervalSim(self.scen, adapter, self.sim.trace, self.sim.medium, self.interval_s, seed=self.sim_seed,
                          t0=self.sim.t0, noise=self.noise)
        rows = [sim.step(adapter.decide(sim.state())) for _ in range(self.horizon)]
        return {"utility": float(np.mean([qoe_utility(r["ok"], r["energy_j"], self.interval_s, self.ad.p_ref)
                                          for r in rows])),
                "qoe": float(np.mean([r["ok"] for r in rows])), "agent": 0.0}

    def row_utilities(self, with_ok: bool = False):
        """Per row of the current observation, the QoE utility the coming interval would have if
        that row were deployed (NaN for absent rows; IntervalSim.what_if): every row's reward,
        not only the chosen one's (the counterfactual targets adapt_training regresses on).
        `with_ok`: (utilities, 1/0 whether the row would meet QoE)."""
        ev = self.ad.evaluate_state(self.state)
        rows = self.ad.context(self.state, ev).rows
        deployed = []
        for o in rows:          # a vetoed row deploys the veto's choice
            safe = self.ad.veto_choice(rows, o, ev.cost) if o is not None and self.ad.veto else None
            deployed.append(None if o is None else (safe if safe is not None else o.band))
        out, ok = np.full(SLOTS, np.nan), np.full(SLOTS, np.nan)
        out[:len(rows)], ok[:len(rows)] = self.sim.what_if(deployed, self.ad.p_ref)
        return (out, ok) if with_ok else out

    def action_masks(self) -> np.ndarray:
        return self.obs["action_mask"] > 0.5

    def step(self, action):
        a = int(action)
        mask = self.action_masks()
        masked = not (0 <= a < SLOTS and mask[a])
        if masked:
            a = 0 if mask[0] else 1
        self.pol.a = a
        dec = self.ad.decide(self.state)
        row = self.sim.step(dec)
        utility = qoe_utility(row["ok"], row["energy_j"], self.interval_s, self.ad.p_ref)
        reward = float(shaped_reward(utility, row["ok"], self.miss_weight))
        info = {"qoe_ok": row["ok"], "energy_j": row["energy_j"], "switched": row["switch"], "reason": dec.reason,
                "agent": dec.reason == "agent", "masked_action": masked, "mbps": row["bw_true_mbps"],
                "utility": utility}
        truncated = self.sim.k >= self.horizon
        self._observe()
        return self.obs, float(reward), False, truncated, info

    def render(self):
        if self.render_mode != "ansi" or self.sim is None:
            return None
        cur = self.ad.current
        return f"t={self.sim.t} trace={self.trace_name} plan={cur.label() if cur else None}"
