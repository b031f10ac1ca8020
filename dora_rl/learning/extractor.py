"""A policy that treats devices as a set, so one network serves any cluster size up to
its maximum.

`DeviceSetExtractor`: a shared per-device MLP encodes each (padded) device row; masked
mean and max pooling plus the global features give a context vector; each device's
embedding is then refined with that context. The output is `[context | h_1 .. h_D]`.

`SetPointerPolicy` (MaskablePPO): the action logits come from a *pointer* head - the
"continue" logit from the context, the "add d" and "cut on d" logits from device d's
own embedding through one shared linear layer - so nothing in the network is tied to a
device slot: permuting devices permutes the logits, and a padded slot is only masked.
The value head is an MLP on the whole feature vector."""

from __future__ import annotations

import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class DeviceSetExtractor(BaseFeaturesExtractor):
    """Dict obs {devices (D, F), device_mask (D,), global (G,), ...} -> [ctx | h_1..h_D]."""

    def __init__(self, observation_space: spaces.Dict, hidden: int = 64, device_dim: int = 32):
        D, F = observation_space["devices"].shape
        G = observation_space["global"].shape[0]
        super().__init__(observation_space, features_dim=hidden + D * device_dim)
        self.max_devices, self.hidden, self.device_dim = D, hidden, device_dim
        self.enc = nn.Sequential(nn.Linear(F, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.genc = nn.Sequential(nn.Linear(G, hidden), nn.Tanh())
        self.ctx = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.Tanh())
        self.dev_out = nn.Sequential(nn.Linear(2 * hidden, device_dim), nn.Tanh())

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = obs["devices"]
        mask = obs["device_mask"].unsqueeze(-1)
        e = self.enc(x)
        n = mask.sum(1).clamp(min=1.0)
        mean = (e * mask).sum(1) / n
        mx = (e + (mask - 1.0) * 1e4).max(1).values
        c = self.ctx(torch.cat([self.genc(obs["global"]), mean, mx], -1))
        h = self.dev_out(torch.cat([e, c.unsqueeze(1).expand(-1, x.shape[1], -1)], -1))
        return torch.cat([c, h.flatten(1)], -1)


class PointerHead(nn.Module):
    """[ctx | h_1..h_D] -> logits [continue, add_1..add_D, cut_1..cut_D]."""

    def __init__(self, hidden: int, device_dim: int, max_devices: int):
        super().__init__()
        self.hidden, self.device_dim, self.max_devices = hidden, device_dim, max_devices
        self.cont = nn.Linear(hidden, 1)
        self.dev = nn.Linear(device_dim, 2)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        c = latent[:, : self.hidden]
        h = latent[:, self.hidden:].reshape(latent.shape[0], self.max_devices, self.device_dim)
        d = self.dev(h)
        return torch.cat([self.cont(c), d[..., 0], d[..., 1]], -1)


class SetPointerPolicy(MaskableActorCriticPolicy):
    """MaskableActorCriticPolicy with the set extractor and the pointer action head."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("features_extractor_class", DeviceSetExtractor)
        kwargs.setdefault("net_arch", dict(pi=[], vf=[64, 64]))
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        fe = self.pi_features_extractor if not self.share_features_extractor else self.features_extractor
        assert self.mlp_extractor.latent_dim_pi == fe.features_dim, "use net_arch pi=[] with SetPointerPolicy"
        self.action_net = PointerHead(fe.hidden, fe.device_dim, fe.max_devices)
        for m in self.action_net.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gain=0.01)
                nn.init.zeros_(m.bias)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    @torch.no_grad()
    def masked_logits(self, obs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Logits with masked actions at -inf (fast path for planning)."""
        f = self.extract_features(obs, self.pi_features_extractor)
        logits = self.action_net(self.mlp_extractor.forward_actor(f))
        return logits.masked_fill(~mask, float("-inf"))


class NumpyActor:
    """The actor path of a SetPointerPolicy (extractor + pointer head) in numpy, for
    planning one observation at a time (~10x less overhead than torch on tiny batches).
    Bit-for-bit it is float64 math, so logits agree with torch to ~1e-6."""

    def __init__(self, policy: SetPointerPolicy):
        fe = policy.pi_features_extractor
        if len(policy.mlp_extractor.policy_net) != 0:
            raise ValueError("NumpyActor needs net_arch pi=[] (the pointer head reads the features directly)")

        def lin(m):
            return m.weight.detach().cpu().numpy().astype("float64").T, m.bias.detach().cpu().numpy().astype("float64")

        self.e1, self.e2 = lin(fe.enc[0]), lin(fe.enc[2])
        self.g1 = lin(fe.genc[0])
        self.c1 = lin(fe.ctx[0])
        self.d1 = lin(fe.dev_out[0])
        head = policy.action_net
        self.cont = lin(head.cont)
        self.dev = lin(head.dev)

    def logits(self, obs: dict, mask):
        """Masked logits for one observation, or for a batch (arrays with a leading axis:
        search completes many partial plans in lockstep)."""
        import numpy as np

        x = obs["devices"].astype("float64")
        dm = obs["device_mask"].astype("float64")[..., None]
        e = np.tanh(np.tanh(x @ self.e1[0] + self.e1[1]) @ self.e2[0] + self.e2[1])
        n = np.maximum(dm.sum(-2), 1.0)
        mean = (e * dm).sum(-2) / n
        mx = (e + (dm - 1.0) * 1e4).max(-2)
        g = np.tanh(obs["global"].astype("float64") @ self.g1[0] + self.g1[1])
        c = np.tanh(np.concatenate([g, mean, mx], -1) @ self.c1[0] + self.c1[1])
        cb = np.broadcast_to(c[..., None, :], e.shape[:-1] + c.shape[-1:])
        h = np.tanh(np.concatenate([e, cb], -1) @ self.d1[0] + self.d1[1])
        d = h @ self.dev[0] + self.dev[1]
        out = np.concatenate([c @ self.cont[0] + self.cont[1], d[..., 0], d[..., 1]], -1)
        return np.where(mask, out, -np.inf)
