"""`BuildEnv`: the step / observe / mask protocol the plan-building environments share.

Why: PartitionEnv (a block at a time) and StageEnv (a stage at a time) differ in their
actions and observations, but not in how a step is taken: `advance` applies one action
(without building the observation, so planning can skip it on forced moves), `step`
adds the observation, and an action the mask forbids (a sampler that ignores
`action_masks()`) is replaced by the first allowed one and reported in `info`.
A subclass provides `_mask`, `done`, `n_actions`, `_obs()` and `advance(action)`."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from dora_rl.errors import DoraError


class BuildEnv(gym.Env):
    """Base of the environments that build a plan decision by decision."""

    def action_masks(self) -> np.ndarray:
        return self._mask.copy()

    def step(self, action):
        reward, terminated, info = self.advance(action)
        return self._obs(), reward, terminated, False, info

    def allows(self, a: int) -> bool:
        """Whether action `a` (in range) is allowed now."""
        return bool(self._mask[a])

    def observe(self) -> dict:
        """The current observation (planning skips it on forced moves)."""
        return self._obs()

    def _allowed(self, action) -> tuple[int, bool]:
        """(the action to apply, whether it was substituted): a masked or out-of-range
        action becomes the first allowed one. Stepping an ended episode is an error."""
        a = int(action)
        if self.done:
            raise DoraError(f"{type(self).__name__}.step called after the episode ended; call reset()")
        if not (0 <= a < self.n_actions) or not self.allows(a):
            return int(np.flatnonzero(self._mask)[0]), True
        return a, False
