"""`dora train ENV` and `dora evaluate AGENT` (docs/learning.md)."""

from __future__ import annotations

from pathlib import Path

from dora_rl.errors import AgentError, DoraError
from dora_rl.learning import SEARCHES


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train a MaskablePPO agent on an environment (e.g. dora_rl/Partition-v0)",
                       description="Train MaskablePPO on a registered environment with the hyperparameters of "
                                   "policies/ppo.yml and policies/dora_train.yml; writes TensorBoard logs "
                                   "and an agent folder.")
    p.add_argument("env", help="environment id (dora_rl/PartitionStage-v0: the size-free stage policy; "
                               "dora_rl/Partition-v0 ...) or a scenario (preset name or YAML path: a stage "
                               "policy specialised on that deployment)")
    p.add_argument("--env-kwargs", default=None, metavar="JSON|k=v,...",
                   help="environment keyword arguments, as JSON ('{\"max_devices\": 16}') or k=v pairs "
                        "('max_devices=16,max_blocks=64')")
    p.add_argument("--recipe", default=None, metavar="JSON|k=v,...",
                   help="stage policy only: overrides of the training recipe's keys (dora_rl/learning/"
                        "stage_run.py RECIPE), e.g. '{\"ppo_families\": {\"small\": 2, \"large\": 1}}' or "
                        "'dagger_rounds=0,ppo_checkpoints=3'")
    p.add_argument("--init", default=None, metavar="AGENT",
                   help="stage policy only: start from this trained stage agent's network (folder, model.zip or "
                        "shipped name, e.g. dora_rl__Partition-v0) and fine-tune it with PPO (the recipe's shares "
                        "default to PPO only), e.g. the generalist on one scenario")
    p.add_argument("--timesteps", type=int, default=None, help="environment steps (default: from policies/ppo.yml)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs", help="output folder (agent in OUT/<env-id>/, logs in OUT/tb/)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-time budget of the whole run, every phase included (stage policy default: 42, "
                        "the shipped agent's); at its end, or on Ctrl-C, a loadable agent is saved")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--bc-episodes", type=int, default=None, metavar="N",
                   help="imitation warm-start: replay the `dora` planner's plans on N training instances and "
                        "behaviour-clone them before PPO (Partition envs; default: the `bc` block of "
                        "policies/dora_train.yml, 2500 for dora_rl/Partition-v0; 0 = pure PPO)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="compare a trained agent with the oracle, dora and the baselines",
                       description="Plan each scenario with the agent and with every reference planner; "
                                   "report objective, QoE compliance and ratios.")
    e.add_argument("agent", nargs="?", default=None,
                   help="agent folder, model.zip, env id or trained_agents/ name (default: the shipped generalist)")
    e.add_argument("--scenarios", nargs="*", default=None,
                   help="preset names or YAML paths; 'heldout' = N seeded synthetic instances "
                        "(default: the presets and the held-out set)")
    e.add_argument("--n", type=int, default=20, help="number of held-out synthetic instances (default 20)")
    e.add_argument("--samples", type=int, default=1, help="agent plans per scenario, best kept (default 1: greedy)")
    e.add_argument("--search", choices=SEARCHES, default="polish",
                   help="how the agent decodes a plan: polish (default, as the ppo planner), greedy, rollout; "
                        "stage agents also sample, beam, restart (dora_rl/learning/stage_search.py)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--planners", default=None, help="comma-separated reference planners (default: all)")
    e.add_argument("--timeout", type=float, default=120.0, help="seconds per reference planner and scenario")
    e.add_argument("--write-results", action="store_true", help="also write the agent folder's results.json")
    e.add_argument("--json", action="store_true", help="print JSON instead of tables")
    e.set_defaults(func=cmd_evaluate)


def parse_env_kwargs(text: str | None, flag: str = "--env-kwargs") -> dict:
    """`--env-kwargs` (or `flag`, e.g. `--recipe`): JSON object or comma-separated k=v pairs
    (values read as YAML scalars)."""
    import json

    import yaml

    if not text:
        return {}
    t = text.strip()
    if t.startswith(("{", "[")):
        try:
            out = json.loads(t)
        except json.JSONDecodeError as e:
            raise AgentError(f"{flag}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(out, dict):
            raise AgentError(f"{flag}: a JSON object is needed, got {type(out).__name__}")
        return out
    out = {}
    for part in filter(None, (x.strip() for x in t.replace(";", ",").split(","))):
        if "=" not in part:
            raise AgentError(f"{flag}: {part!r} is not k=v (use JSON or k=v,k2=v2)")
        k, v = part.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def _train_stage(args, env_kwargs: dict, recipe: dict) -> int:
    import json

    from dora_rl.commands.common import console, print_json
    from dora_rl.learning.stage_run import MINUTES, STAGE_ENV_ID, train_stage

    scenario = None
    if args.env != STAGE_ENV_ID:
        from dora_rl.scenario import load_scenario
        scenario = load_scenario(args.env)
    env_id = STAGE_ENV_ID if scenario is None else f"dora_rl/PartitionStage-{scenario.name}-v0"
    folder = train_stage(args.out, max_minutes=args.max_minutes or MINUTES, seed=args.seed,
                         progress=not args.no_progress and not args.json, scenario=scenario, env_kwargs=env_kwargs,
                         env_id=env_id, recipe=recipe, init=args.init)
    res = json.loads((folder / "results.json").read_text())
    if args.json:
        print_json({"agent": str(folder), **res})
    else:
        console.print(f"trained {env_id} in {res['train_seconds']:.0f} s; agent in {folder} "
                      f"(kept: {res['selection']['kept']})")
    return 0


def _show_progress_logs() -> None:
    """Training reports its phases (imitation epochs, expert-iteration rounds) through
    logging; `dora train` shows them on stderr."""
    import logging

    lg = logging.getLogger("dora_rl.learning")
    if not lg.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(message)s"))
        lg.addHandler(h)
    lg.setLevel(logging.INFO)


def cmd_train(args) -> int:
    import gymnasium as gym

    from dora_rl.commands.common import console, print_json
    from dora_rl.learning.training import train

    if args.max_minutes is not None and not args.max_minutes > 0:
        raise AgentError(f"--max-minutes must be > 0, got {args.max_minutes:g}")
    _show_progress_logs()
    env_kwargs = parse_env_kwargs(args.env_kwargs)
    recipe = parse_env_kwargs(args.recipe, "--recipe")
    from dora_rl.envs import register_all

    register_all()
    if args.env.startswith("dora_rl/") and args.env not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("dora_rl/"))
        raise AgentError(f"unknown environment {args.env!r}; registered: {', '.join(known)}")
    if args.env == "dora_rl/PartitionStage-v0" or args.env not in gym.registry:
        return _train_stage(args, env_kwargs, recipe)
    for flag, given in (("--recipe", recipe), ("--init", args.init)):
        if given:
            raise AgentError(f"{flag} applies to the stage policy (dora_rl/PartitionStage-v0 or a scenario), not "
                             f"{args.env}; its hyperparameters are in policies/ppo.yml and policies/dora_train.yml")
    if args.timesteps is not None and args.timesteps <= 0:
        raise AgentError(f"--timesteps must be a positive number of steps, got {args.timesteps}")
    if args.bc_episodes is not None and args.bc_episodes < 0:
        raise AgentError(f"--bc-episodes must be >= 0, got {args.bc_episodes}")
    hp = None
    if env_kwargs:
        from dora_rl.learning.hyperparams import load_hyperparams
        hp = load_hyperparams(args.env)
        hp["env_kwargs"] = {**(hp.get("env_kwargs") or {}), **env_kwargs}
    folder = train(args.env, timesteps=args.timesteps, seed=args.seed, out=args.out, max_minutes=args.max_minutes,
                   progress=not args.no_progress and not args.json, n_threads=args.threads,
                   bc_episodes=args.bc_episodes, hyperparams=hp)
    import json
    res = json.loads((folder / "results.json").read_text())
    if args.json:
        print_json({"agent": str(folder), **res})
    else:
        console.print(f"trained {args.env}: {res['timesteps']} steps in {res['train_seconds']:.0f} s; "
                      f"best eval reward {res.get('best_eval_mean_reward')}; agent in {folder}; "
                      f"TensorBoard: tensorboard --logdir {Path(args.out) / 'tb'}")
    return 0


def _scenarios(names, n: int, max_devices: int):
    from dora_rl.learning.evaluation import held_out_scenarios
    from dora_rl.scenario import load_scenario, preset_names

    if names is None:
        names = preset_names() + ["heldout"]
    out = []
    for s in names:
        if s in ("heldout", "synthetic"):
            if n <= 0:
                raise DoraError(f"--n must be >= 1, got {n}")
            out += held_out_scenarios(n, max_devices=min(6, max_devices))
        else:
            out.append(load_scenario(s))
    return out


def cmd_evaluate(args) -> int:
    from dora_rl.commands.common import console, print_json, table
    from dora_rl.learning.agents import load_agent
    from dora_rl.learning.evaluation import REFERENCES, evaluate_agent

    agent = load_agent(args.agent)
    planners = REFERENCES if not args.planners else tuple(p.strip() for p in args.planners.split(",") if p.strip())
    from dora_rl.planners import planner_names
    bad = [p for p in planners if p not in planner_names()]
    if bad:
        raise DoraError(f"unknown planner(s) {', '.join(bad)}; available: {', '.join(planner_names())}")
    scs = _scenarios(args.scenarios, args.n, agent.max_devices)
    for sc in scs:
        agent.check_scenario(sc)
    res = evaluate_agent(agent, scs, planners, samples=args.samples, seed=args.seed, timeout=args.timeout,
                         progress=not args.json, search=args.search)
    res["agent"] = str(agent.path)
    if args.write_results:
        from dora_rl.learning.agents import update_results
        update_results(agent.path, {"evaluation": {"summary": res["summary"], "rows": res["rows"]}})
    if args.json:
        print_json(res)
        return 0
    rows = []
    for r in res["rows"]:
        a = r["agent"]
        cells = [r["scenario"], r["devices"], a["objective"], a["qoe_ok"]]
        for p in ("oracle", "dora"):
            v = r["vs"].get(p)
            cells.append(v["ratio"] if v else "-")
        # the best baseline: the lowest objective among the QoE-compliant baselines
        base = [(r["planners"][p]["objective"], p) for p in planners if p not in ("oracle", "dora", "ppo")
                and p in r["vs"] and r["planners"][p].get("qoe_ok")]
        cells.append(r["vs"][min(base)[1]]["ratio"] if base else "-")
        rows.append(cells)
    console.print(table(f"agent {agent.name}: objective ratio agent / planner (< 1: agent better)",
                        ["scenario", "devices", "objective", "QoE ok", "/oracle", "/dora", "/best baseline"], rows))
    s = res["summary"]
    srows = [[p, v["median_ratio"] if v["median_ratio"] is not None else "-", v["n_both"],
              v["win_or_tie"] if v["win_or_tie"] is not None else "-"] for p, v in s["vs"].items()]
    console.print(table("summary (median ratio over scenarios where both plans meet QoE)",
                        ["planner", "median ratio", "n both ok", "agent wins/ties"], srows))
    comp = s["qoe_compliance"]
    console.print(f"QoE compliance where a compliant plan exists: "
                  f"{'-' if comp is None else f'{100 * comp:.1f}%'} of {s['n_compliant_exists']}; "
                  f"median planning time {s['median_plan_ms']:.1f} ms")
    return 0
