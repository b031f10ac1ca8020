"""The model card (README.md) of the schedule agent (`trained_agents/dora_rl__Schedule-v0/`).

Why a module: the card is written from the agent's config.yml and the evaluation in its
results.json (dora_rl/learning/schedule_training.py), so every figure on it is one that
a run measured; the headline is the network alone, and the FIFO rule's effect is shown
beside it, not folded in."""

from __future__ import annotations

USAGE = '''```python
import gymnasium as gym
import dora_rl  # registers the environments
from sb3_contrib import MaskablePPO

model = MaskablePPO.load("trained_agents/dora_rl__Schedule-v0/model.zip", device="cpu")
env = gym.make("dora_rl/Schedule-v0", n_instances=16, seed=100)   # held-out contention instances
obs, _ = env.reset(seed=0)
done = False
while not done:
    action, _ = model.predict(obs, deterministic=True, action_masks=env.unwrapped.action_masks())
    obs, reward, terminated, truncated, info = env.step(action)
    done = terminated or truncated
print(info["microbatches"], info["schedule"], reward)   # reward = ln(FIFO / scheduled objective)
```'''


def _table(rows: list[dict]) -> list[str]:
    out = ["| instance | kind | network | kept (rule) | uniform | scheduler | agent ms | scheduler ms | "
           "network's choice |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["schedule"]
        pr = "; ".join(f"{m}: {' > '.join(c)}" for m, c in (s.get("priorities") or {}).items()) or "none"
        ar = s.get("allreduce") or {}
        choice = (f"M {s.get('microbatches')}, priorities {pr}, all-reduce {ar.get('start')}/{ar.get('buckets')}, "
                  f"warm-up +{s.get('extra_warmup')}")
        out.append(f"| {r['instance']} | {'train' if r['training'] else 'infer'} | ×{r['network_gain']:.3f} | "
                   f"×{r['gain']:.3f}{' (rule: FIFO)' if r['rule'] else ''} | ×{r['uniform_gain']:.3f} | "
                   f"×{r['scheduler_gain']:.3f} | {r['agent_ms']:.1f} | {r['scheduler_ms']:.1f} | {choice} |")
    return out


def _line(name: str, s: dict) -> str:
    return (f"{name} ({s['n']}): network ×{s['network_gain']:.3f} (never slower than FIFO on "
            f"{s['network_never_slower']}/{s['n']}), after the FIFO rule ×{s['gain']:.3f} (the rule fired on "
            f"{s['rule_fired']}/{s['n']}), uniform masked policy ×{s['uniform_gain']:.3f}, coordinate-search "
            f"scheduler ×{s['scheduler_gain']:.3f}; decision time median {s['agent_ms_median']:.1f} ms (agent, "
            f"with its two simulations) vs {s['scheduler_ms_median']:.1f} ms (scheduler)")


def card(cfg: dict, ev: dict) -> str:
    h, p = ev["heldout"]["summary"], ev["presets"]["summary"]
    lo, hi = ev["heldout"]["seeds"]
    hp = cfg.get("hyperparams") or {}
    s0 = cfg["env_kwargs"].get("seed", 0)
    s1 = s0 + cfg["env_kwargs"].get("n_instances", 16) - 1
    lines = [
        "---", "library_name: stable-baselines3", "environment: dora_rl/Schedule-v0", "tags:",
        "  - reinforcement-learning", "  - maskable-ppo", "  - sb3-contrib", "  - gymnasium", "  - dora_rl",
        "  - dora_rl/Schedule-v0", "  - network-scheduling", "model-index:", "- name: MaskablePPO-dora_rl-Schedule-v0",
        "  results:", "  - task:", "      type: reinforcement-learning", "    dataset:",
        "      name: dora_rl/Schedule-v0", "      type: dora_rl/Schedule-v0", "    metrics:",
        f"      - name: gain over FIFO, network alone (geometric mean, {h['n']} held-out contention instances)",
        "        type: gain_over_fifo", f"        value: {h['network_gain']:.4f}", "---", "",
        "# `dora_rl/Schedule-v0` (MaskablePPO, MLP): the `ppo` planner's network scheduler", "",
        "Given a plan on a scenario, the agent chooses how the plan uses the network (Dora's mechanism (ii), "
        "docs/simulator.md): the number of micro-batches, the per-medium priority rule, the all-reduce start and "
        "buckets (training with a data-parallel stage) and the extra 1F1B warm-up (training), one decision per "
        "step with masks (docs/learning.md, \"ScheduleEnv\"). The `ppo` planner (`dora plan SCENARIO --planner "
        "ppo`) builds the plan with the partition agent (`dora_rl/Partition-v0`) and then asks this agent for the "
        "plan's `schedule` section. **The FIFO rule**: where the simulator rates the agent's schedule slower than "
        "FIFO, or worse by the scenario's QoE and objective, the planner keeps FIFO; the tables below give the "
        "network's own gain and the kept one separately, so a figure that comes from the rule says so.", "",
        "## Usage", "", USAGE, "",
        "In the planner: `dora plan edge_cluster --planner ppo --out plan.json` (the plan JSON carries the "
        "schedule), then `dora simulate edge_cluster plan.json` (or `dora compare edge_cluster`).", "",
        "## Training", "",
        f"MaskablePPO `{cfg.get('policy')}` on contention instances (`envs/schedule.py:contention_instance`, seeds "
        f"{s0}-{s1}: "
        "six devices on one WiFi channel, a 4-stage plan with a data-parallel stage, half inference, half "
        f"training); {cfg['timesteps']} steps in {cfg['train_seconds']} s on one thread of a shared 2-core "
        f"machine; n_steps {hp.get('n_steps')}, batch {hp.get('batch_size')}, {hp.get('n_epochs')} epochs, "
        f"learning rate {hp.get('learning_rate')}, gamma {hp.get('gamma')}. Reward (at the episode's end): "
        "ln(FIFO's objective / the chosen schedule's) on the simulator, minus QoE targets missed beyond FIFO's.", "",
        f"## Evaluation (`python -m dora_rl.learning.schedule_training --evaluate FOLDER`, {ev.get('when', '')})", "",
        "Gains are FIFO's objective / the schedule's, on the simulator (> 1: faster or cheaper); means are "
        "geometric. Controls: the uniform masked policy (mean of 8 episodes per instance), the coordinate-search "
        "scheduler (`dora_rl.sim.schedule_plan`: the `dora` planner's `schedule=True`, `dora simulate --schedule "
        "auto`).", "",
        f"- Held-out {_line(f'contention instances {lo}-{hi - 1}', h)}.",
        f"- On the `ppo` planner's plans (partition agent, polished) of the {_line('presets', p)}.", "",
        "### Held-out contention instances", "", *_table(ev["heldout"]["rows"]), "",
        "### Presets (the `ppo` planner's plans)", "", *_table(ev["presets"]["rows"]), "",
        "## Limits", "",
        "- Trained only on the 6-device single-WiFi contention family; other clusters, models and plans (the "
        "presets) are outside it, which is why the FIFO rule exists.",
        "- The observation has seven plan features; it does not see the medium layout, so it cannot choose "
        "per-medium rules (one rule for every shared medium, like the scheduler).",
        "- `results.json` \"check\" records the network's greedy schedule on contention seeds "
        f"{', '.join(str(c['seed']) for c in ev['check'])}; `tests/learning/test_schedule_agent.py` re-plays them "
        "in plain SB3.", ""]
    return "\n".join(lines)


__all__ = ["card", "USAGE"]
