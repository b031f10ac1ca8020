"""A size-free policy for StageEnv: devices as a set with self-attention, blocks as a sequence.

`StageExtractor` (torch, SB3 features extractor):
- devices: a shared MLP per device row, then `layers` pre-norm self-attention blocks over
  the devices (padding masked), so each device is judged against the others;
- blocks: a shared MLP per candidate end block (the rows carry cumulative work, transfer
  time at the cut and memory, so the sequence's order is in the features);
- context: global features + masked mean/max of the devices + masked mean of the blocks;
- device and block embeddings refined with the context.
Its flat output is `[ctx | h_1..h_D | g_1..g_B | lrj_1..lrj_D | work_1..work_B]`.

`StagePointerHead`: the close logit of (device d, end j) is a bilinear score of h_d and
g_j plus a learned function of the exact log stage time `work_j - lrj_d` (K tanh bumps
whose weights come from h_d): the one interaction the cost is most sensitive to is computed,
not guessed from pooled features. The add logit of d is linear in h_d, plus, with
`add_lookahead=True` (a policy kwarg, off in agents trained before session 12 and in the
shipped one), bumps over `add_lookahead`: the lookahead of the close that would follow. With
`objective_term=True` (session 14) a close that ends the plan also gets a learned weight
times `end_objective`, its objective relative to the best such close, and that best close is
raised above the closes whose lookahead it dominates (session 32); with a pair of numbers
(latency, energy) the weights are fixed, not learned (session 24; the shipped W5 got
(32, 32) after training, session 31: `stage_agent.fix_objective_term`). The computed terms
are in stage_lookahead.py. No weight belongs to a device slot or a block position: the
same weights run on any (D, B); padding is masked. The value head reads the context only.

The actor in numpy that plans with these weights is `stage_actor.StageNumpyActor`."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.distributions import MaskableCategoricalDistribution
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from dora_rl.learning.stage_lookahead import (  # noqa: F401  (re-exported: the policy's terms)
    NBL,
    NBX,
    NDL,
    NDX,
    NGL,
    NGX,
    PAIR_BUMPS,
    add_lookahead,
    battery_risk,
    bump_sum,
    end_objective,
    head_columns,
    lookahead,
    lookahead_at,
    objective_column,
    with_group,
    with_objective_term,
    with_two_stage,
)

NEG = -1e4

class AttnBlock(nn.Module):
    """Pre-norm multi-head self-attention + feed-forward over a padded set."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ff1, self.ff2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        N, D, H = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).reshape(N, D, 3, h, H // h).permute(2, 0, 3, 1, 4)
        s = q @ k.transpose(-1, -2) / math.sqrt(H // h) + (1.0 - mask)[:, None, None, :] * NEG
        a = torch.softmax(s, -1) @ v
        x = x + self.out(a.transpose(1, 2).reshape(N, D, H))
        return x + self.ff2(torch.tanh(self.ff1(self.ln2(x))))


def _mlp(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(i, o), nn.Tanh(), nn.Linear(o, o), nn.Tanh())


class StageExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: spaces.Dict, hidden: int = 64, embed: int = 32, heads: int = 4,
                 layers: int = 2):
        D, FD = observation_space["devices"].shape
        Bm, FB = observation_space["blocks"].shape
        G = observation_space["global"].shape[0]
        super().__init__(observation_space, features_dim=hidden + (D + Bm) * embed + D * NDX + Bm * NBX + NGX)
        self.D, self.Bm, self.hidden, self.embed = D, Bm, hidden, embed
        self.denc, self.benc = _mlp(FD, hidden), _mlp(FB, hidden)
        self.attn = nn.ModuleList([AttnBlock(hidden, heads) for _ in range(layers)])
        self.genc = nn.Sequential(nn.Linear(G, hidden), nn.Tanh())
        self.ctx = nn.Sequential(nn.Linear(4 * hidden, hidden), nn.Tanh())
        self.dout = nn.Sequential(nn.Linear(2 * hidden, embed), nn.Tanh())
        self.bout = nn.Sequential(nn.Linear(2 * hidden, embed), nn.Tanh())

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        c, hd, gb, xd, xb, xg = self.parts(obs)
        return torch.cat([c, hd.flatten(1), gb.flatten(1), xd.flatten(1), xb.flatten(1), xg], -1)

    def parts(self, obs: dict[str, torch.Tensor]):
        """(context, device embeddings, block embeddings, and the lookahead columns of the
        devices, blocks and global vector) for any D, B."""
        xd, dm = obs["devices"], obs["device_mask"]
        xb, bm = obs["blocks"], obs["block_mask"]
        e = self.denc(xd)
        for blk in self.attn:
            e = blk(e, dm)
        b = self.benc(xb)
        dmu = dm.unsqueeze(-1)
        bmu = bm.unsqueeze(-1)
        mean = (e * dmu).sum(1) / dmu.sum(1).clamp(min=1.0)
        mx = (e + (dmu - 1.0) * -NEG).max(1).values
        bmean = (b * bmu).sum(1) / bmu.sum(1).clamp(min=1.0)
        c = self.ctx(torch.cat([self.genc(obs["global"]), mean, mx, bmean], -1))
        hd = self.dout(torch.cat([e, c.unsqueeze(1).expand(-1, e.shape[1], -1)], -1))
        gb = self.bout(torch.cat([b, c.unsqueeze(1).expand(-1, b.shape[1], -1)], -1))
        return (c, hd, gb, *head_columns(obs, torch))


class StagePointerHead(nn.Module):
    """flat features -> logits [close (d, j) row-major over (D, Bm) | add d]."""

    def __init__(self, hidden: int, embed: int, D: int, Bm: int, add_lookahead: bool = False,
                 objective_term: bool | tuple | list = False):
        super().__init__()
        self.hidden, self.embed, self.D, self.Bm = hidden, embed, D, Bm
        K = sum(PAIR_BUMPS)
        self.q = nn.Linear(embed, embed)
        self.kb = nn.Linear(embed, 1)
        self.amp = nn.Linear(embed, K)
        self.register_buffer("fidx", torch.tensor([i for i, k in enumerate(PAIR_BUMPS) for _ in range(k)]))
        self.scale = nn.Parameter(torch.cat([torch.linspace(0.5, 2.0, k) for k in PAIR_BUMPS]))
        self.shift = nn.Parameter(torch.cat([torch.linspace(-3.0, 3.0, k) for k in PAIR_BUMPS]))
        self.add = nn.Linear(embed, 1)
        # the add's lookahead term (`add_lookahead`), the same bumps as a close's; off in agents
        # trained before it (their policy_kwargs do not name it)
        self.add_look = add_lookahead
        if add_lookahead:
            self.amp_add = nn.Linear(embed, K)
            self.scale_add = nn.Parameter(self.scale.detach().clone())
            self.shift_add = nn.Parameter(self.shift.detach().clone())
        # the objective term (`objective_term`, session 14): the close that ends the plan on d
        # gets -w * end_objective(d), w per objective (latency, energy), learned from 0, or
        # fixed at the given pair (a buffer: saved with the model, never trained)
        self.obj_term = bool(objective_term)
        if isinstance(objective_term, (list, tuple)):
            if len(objective_term) != 2:
                raise ValueError(f"objective_term: a (latency, energy) pair of weights, got {objective_term!r}")
            self.register_buffer("obj_w", torch.tensor([float(w) for w in objective_term]))
        elif objective_term:
            self.obj_w = nn.Parameter(torch.zeros(2))

    def split(self, z: torch.Tensor):
        H, E, D, Bm = self.hidden, self.embed, self.D, self.Bm
        o = H
        hd = z[:, o:o + D * E].reshape(-1, D, E)
        o += D * E
        gb = z[:, o:o + Bm * E].reshape(-1, Bm, E)
        o += Bm * E
        xd = z[:, o:o + D * NDX].reshape(-1, D, NDX)
        o += D * NDX
        xb = z[:, o:o + Bm * NBX].reshape(-1, Bm, NBX)
        o += Bm * NBX
        return hd, gb, xd, xb, z[:, o:o + NGX]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(*self.split(z))

    def logits(self, hd, gb, xd, xb, xg, mask: torch.Tensor | None = None, sparse: bool = True,
               risky: torch.Tensor | None = None, two: torch.Tensor | None = None,
               promise: torch.Tensor | None = None, group: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the extractor's parts (any D and B): lookahead columns are re-indexed
        0.. (the extractor keeps only DEV_LOOKAHEAD / BLK_LOOKAHEAD / the global extras).
        With the action `mask` (N, D * Bm + D) the lookahead term is computed at the allowed
        closes only and is 0 at the others (unless `sparse` is False), as in the numpy actor:
        a fit masks those logits anyway, and at 64 devices x 200 blocks about 5 % of the
        closes are allowed, so the full (N, D, Bm, K) table was most of a large batch's time;
        the objective term measures the ending closes against the best allowed one that is
        not `risky` (`battery_risk`); with the observation's "two_stage" and "promise" keys
        (`two`, `promise`), the two-stage rule follows it (`with_two_stage`), and with
        "group" (`group`) the group rule (`with_group`)."""
        bil = self.q(hd) @ gb.transpose(1, 2) / math.sqrt(self.embed)          # (N, D, Bm)
        amp = self.amp(hd)                                                      # (N, D, K)
        if mask is None or not sparse:
            x = lookahead(xd, xb, xg, torch)                                    # (N, D, Bm, 5)
            pair = bump_sum(x, self.fidx, self.scale, self.shift, amp[:, :, None, :], torch)
            col = objective_column(x, xg) if self.obj_term else None
        else:
            N, D, Bm = bil.shape
            n, d, j = mask[:, :D * Bm].reshape(N, D, Bm).nonzero(as_tuple=True)
            x = lookahead_at(xd, xb, xg, (n, d, j), torch)                                  # (P, 5)
            val = bump_sum(x, self.fidx, self.scale, self.shift, amp[n, d], torch)
            pair = bil.new_zeros(N, D, Bm).index_put((n, d, j), val)
            col = bil.new_zeros(N, D, Bm).index_put((n, d, j), objective_column(x, xg[n])) if self.obj_term else None
        close = bil + pair + self.kb(gb).transpose(1, 2)
        if self.obj_term:
            close = with_objective_term(close, xd, xb, xg, self.obj_w, torch, mask, risky, col)
        add = self.add(hd)[..., 0]
        if self.add_look:
            xa = add_lookahead(xd, xb, xg, torch)                                 # (N, D, 5)
            add = add + bump_sum(xa, self.fidx, self.scale_add, self.shift_add, self.amp_add(hd), torch)
        out = torch.cat([close.flatten(1), add], -1)
        if self.obj_term and two is not None:
            out = with_two_stage(out, two, xb, xg, self.obj_w, torch, mask, promise)
            if group is not None:
                out = with_group(out, group, xg, self.obj_w, torch, mask)
        return out


class ValueHead(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(nn.Linear(hidden, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, : self.hidden])


class StagePolicy(MaskableActorCriticPolicy):
    """MaskableActorCriticPolicy with the stage extractor, pointer head and context value head."""

    def __init__(self, *args, add_lookahead: bool = False, objective_term: bool | tuple | list = False, **kwargs):
        kwargs.setdefault("features_extractor_class", StageExtractor)
        kwargs["net_arch"] = dict(pi=[], vf=[])
        self.add_lookahead = add_lookahead
        self.objective_term = objective_term
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict:
        return {**super()._get_constructor_parameters(), "add_lookahead": self.add_lookahead,
                "objective_term": self.objective_term}

    def _build(self, lr_schedule) -> None:
        """SB3's build without its flat action net (features x actions: at 64 x 200 a 9k x 13k
        matrix whose orthogonal init took ~35 s and ~0.5 GB, only to be replaced): the
        extractor gets SB3's orthogonal init, the pointer head a small one."""
        self._build_mlp_extractor()
        fe = self.features_extractor
        if self.ortho_init:
            fe.apply(partial(self.init_weights, gain=np.sqrt(2)))
        self.action_net = StagePointerHead(fe.hidden, fe.embed, fe.D, fe.Bm, self.add_lookahead,
                                           self.objective_term)
        for m in self.action_net.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=0.1)
                nn.init.zeros_(m.bias)
        self.value_net = ValueHead(fe.hidden)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def any_size(self, obs: dict[str, torch.Tensor], mask: torch.Tensor | None = None, sparse: bool = True):
        """(logits, values) for a batch of any (D, B): imitation trains on several sizes. With
        the action `mask`, the logits of masked closes lack their lookahead term (see
        `StagePointerHead.logits`): for a loss that masks them."""
        c, hd, gb, xd, xb, xg = self.features_extractor.parts(obs)
        risky = battery_risk(obs) if self.action_net.obj_term else None    # only the objective term reads it
        return (self.action_net.logits(hd, gb, xd, xb, xg, mask, sparse, risky, obs.get("two_stage"),
                                       obs.get("promise"), obs.get("group")),
                self.value_net.net(c).flatten())

    # SB3's entry points (rollouts, PPO's update, predict) go through `any_size` with the
    # action masks: any (D, B) per call - one policy object serves the PPO models of every
    # size family - and the lookahead only at the allowed closes (at 64 x 200 the full table
    # was most of an update's time); the logits at allowed actions are the flat path's.
    def _masked_dist(self, obs, action_masks):
        obs = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        mask = None
        if action_masks is not None:
            mask = torch.as_tensor(action_masks, device=self.device).reshape(obs["devices"].shape[0], -1).bool()
        logits, values = self.any_size(obs, mask)
        dist = MaskableCategoricalDistribution(logits.shape[-1]).proba_distribution(action_logits=logits)
        if mask is not None:
            dist.apply_masking(mask)
        return dist, values.unsqueeze(-1)

    def forward(self, obs, deterministic: bool = False, action_masks=None):
        dist, values = self._masked_dist(obs, action_masks)
        actions = dist.get_actions(deterministic=deterministic)
        return actions, values, dist.log_prob(actions)

    def evaluate_actions(self, obs, actions, action_masks=None):
        dist, values = self._masked_dist(obs, action_masks)
        return values, dist.log_prob(actions), dist.entropy()

    def get_distribution(self, obs, action_masks=None):
        return self._masked_dist(obs, action_masks)[0]

    def predict_values(self, obs):
        obs = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        return self.value_net.net(self.features_extractor.parts(obs)[0])
