"""The runtime: torch worker processes in one `torch.distributed` (gloo) group that
execute plans (hybrid data + pipeline parallelism) for inference and training, switch
plans at request/iteration boundaries, and, on one machine, emulate the cluster's
device speeds, link bandwidths, shared media and energy. See docs/runtime.md."""

from dora_rl.runtime.coordinator import InferenceResult, Runtime, TrainResult, moves_between

__all__ = ["Runtime", "InferenceResult", "TrainResult", "moves_between"]
