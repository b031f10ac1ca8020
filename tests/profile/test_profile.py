"""Tests of the model zoo and the profiler.

Golden numbers come from formulas (conv MACs = C_out*H_out*W_out * C_in*k*k / groups,
linear MACs = in*out, attention MACs = 2*T^2*d) or from published figures
(torchvision's model cards, BERT/GPT-2 papers and reference implementations),
never from a previous run of this code.
"""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from dora_rl.errors import ProfileError
from dora_rl.profile import Block, ModelProfile, build_model, get_profile, model_names, profile_module
from dora_rl.profile.zoo import MODELS

TOL = 0.05  # published figures are quoted to 2-3 significant digits

# name: (published GMACs per sample, published params, source)
PUBLISHED = {
    "resnet18": (1.81, 11.69e6),       # torchvision ResNet18_Weights: GFLOPS 1.81 (sic: MACs), 11,689,512
    "resnet50": (4.09, 25.56e6),       # torchvision ResNet50_Weights: 4.09, 25,557,032
    "mobilenet_v2": (0.300, 3.50e6),   # Sandler et al. 2018: 300M MAdds; torchvision 3,504,872 params
    "vgg16": (15.47, 138.36e6),        # torchvision VGG16_Weights: 15.47, 138,357,544
    "vit_b16": (17.56, 86.57e6),       # torchvision ViT_B_16_Weights: 17.56, 86,567,656
    "bert_base": (11.2, 110e6),        # Devlin et al.: 110M; MACs by formula (see test_bert_formula)
    "gpt2_small": (None, 124.4e6),     # Radford et al./HF gpt2: 124,439,808 (tied LM head)
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_totals_match_published(name):
    p = get_profile(name)
    gmacs, params = PUBLISHED[name]
    if gmacs is not None:
        assert p.total_flops / 2e9 == pytest.approx(gmacs, rel=TOL)
    assert p.meta["unique_params"] == pytest.approx(params, rel=TOL)


def test_transformer_totals_from_formula():
    """BERT-base / GPT-2 small at T=128, d=768, L=12, d_ff=3072.
    Per layer: T*(4d^2 + 2*d*d_ff) linear MACs + 2*T^2*d attention MACs."""
    T, d, L, ff = 128, 768, 12, 3072
    layer = T * (4 * d * d + 2 * d * ff) + 2 * T * T * d
    bert = get_profile("bert_base")
    assert bert.blocks[1].flops == 2 * layer                               # exact, one encoder layer
    assert bert.total_flops == 2 * (L * layer + d * d + d * 2)             # + pooler + 2-way classifier
    gpt = get_profile("gpt2_small")
    assert gpt.blocks[1].flops == 2 * layer
    assert gpt.total_flops == 2 * (L * layer + T * d * 50257)              # + LM head on all 128 positions
    # the tied embedding/LM-head matrix is held by both the first and the last block
    assert gpt.blocks[0].param_bytes >= 50257 * d * 4 and gpt.blocks[-1].param_bytes >= 50257 * d * 4


def test_vit_and_resnet_blocks_from_formula():
    vit = get_profile("vit_b16")
    T, d = 197, 768
    assert vit.blocks[0].flops == 2 * (196 * d * 3 * 16 * 16)              # patch conv
    assert vit.blocks[1].flops == 2 * (T * (4 * d * d + 2 * d * 4 * d) + 2 * T * T * d)
    r50 = get_profile("resnet50")
    assert r50.blocks[0].flops == 2 * (64 * 112 * 112 * 3 * 7 * 7)        # 7x7/2 stem conv
    assert r50.blocks[-1].flops == 2 * 2048 * 1000                          # fc
    assert r50.blocks[0].out_bytes == 64 * 56 * 56 * 4                      # after max-pool


def test_block_counts_are_natural():
    counts = {n: get_profile(n).n_blocks for n in model_names()}
    assert counts["resnet50"] == 18          # stem + 16 bottlenecks + head
    assert counts["resnet18"] == 10          # stem + 8 basic blocks + head
    assert counts["mobilenet_v2"] == 20      # stem + 17 inverted residuals + 1x1 conv + head
    assert 20 <= counts["vgg16"] <= 40
    assert counts["vit_b16"] == counts["bert_base"] == counts["gpt2_small"] == 14
    assert 6 <= counts["tiny_cnn"] <= 8


def test_hand_computed_tiny_module():
    m = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 8, 3, padding=1),      # 3x8x8 -> 8x8x8
        pool=nn.MaxPool2d(2),                    # -> 8x4x4
        flat=nn.Flatten(1),                      # -> 128
        fc=nn.Linear(128, 20),                   # -> 20
        fc2=nn.Linear(20, 10),
    ))
    p = profile_module(m, torch.zeros(1, 3, 8, 8), "hand")
    assert p.input_bytes == 3 * 8 * 8 * 4
    assert [b.name for b in p.blocks] == ["conv", "pool", "flat", "fc", "fc2"]
    assert [b.flops for b in p.blocks] == [2 * (8 * 8 * 8) * (3 * 3 * 3), 0, 0, 2 * 128 * 20, 2 * 20 * 10]
    assert [b.param_bytes for b in p.blocks] == [(8 * 27 + 8) * 4, 0, 0, (128 * 20 + 20) * 4, (200 + 10) * 4]
    assert [b.out_bytes for b in p.blocks] == [8 * 8 * 8 * 4, 128 * 4, 128 * 4, 20 * 4, 10 * 4]
    # fp16 accounting halves float bytes
    p16 = profile_module(m, torch.zeros(1, 3, 8, 8), "hand", dtype_bytes=2)
    assert p16.blocks[0].param_bytes == (8 * 27 + 8) * 2 and p16.input_bytes == 3 * 8 * 8 * 2


def test_linear_10_20_and_depthwise_conv():
    p = profile_module(nn.Sequential(nn.Linear(10, 20)), torch.zeros(1, 10), "lin")
    assert p.blocks[0].flops == 2 * 10 * 20 and p.blocks[0].param_bytes == 220 * 4 and p.blocks[0].out_bytes == 80
    dw = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False))   # 16x10x10 -> 16x5x5
    p = profile_module(dw, torch.zeros(1, 16, 10, 10), "dw")
    assert p.blocks[0].flops == 2 * (16 * 5 * 5) * (3 * 3)


def test_meta_and_cpu_profiles_agree():
    cpu = profile_module(*build_model("tiny_cnn"), "tiny_cnn")
    meta = profile_module(*build_model("tiny_cnn", device="meta"), "tiny_cnn")
    assert cpu.to_dict() == meta.to_dict() == get_profile("tiny_cnn").to_dict()


def test_fallback_when_meta_kernel_missing():
    class NoMeta(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            if x.device.type == "meta":
                raise NotImplementedError("no meta kernel")
            return self.fc(x)

    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(3, 4), NoMeta(), nn.Linear(6, 2))
    p = profile_module(m, torch.zeros(1, 3, device="meta"), "fallback")
    assert [b.flops for b in p.blocks] == [2 * 12, 2 * 24, 2 * 12]
    assert p.blocks[2].out_bytes == 8


def test_json_round_trip(tmp_path):
    for name in ("tiny_cnn", "bert_base"):
        p = get_profile(name)
        path = tmp_path / f"{name}.json"
        p.save(path)
        q = get_profile(str(path))
        assert q.to_dict() == p.to_dict()
        assert q.blocks == p.blocks and q.input_bytes == p.input_bytes and q.meta == p.meta


def test_get_profile_returns_independent_copies():
    a = get_profile("tiny_cnn")
    a.blocks.clear()
    assert get_profile("tiny_cnn").n_blocks == 7


def test_unknown_model_names_known_ones():
    with pytest.raises(ProfileError, match="resnet50") as e:
        get_profile("resnet51")
    assert "tiny_cnn" in str(e.value)
    with pytest.raises(ProfileError, match="known models"):
        build_model("alexnet")
    with pytest.raises(ProfileError, match="does not exist"):
        get_profile("no/such/profile.json")


def test_non_sequential_and_bad_blocks():
    with pytest.raises(ProfileError, match="nn.Sequential"):
        profile_module(nn.Linear(3, 3), torch.zeros(1, 3), "x")

    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(ProfileError, match="exactly one tensor"):
        profile_module(nn.Sequential(Pair()), torch.zeros(1, 3), "x")
    with pytest.raises(ProfileError, match="block '1'"):
        profile_module(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)), torch.zeros(1, 3), "x")
    with pytest.raises(ProfileError, match="batch size 1"):
        profile_module(nn.Sequential(nn.Linear(3, 4)), torch.zeros(2, 3), "x")


@pytest.mark.parametrize("name", model_names())
def test_block_chain_runs_and_matches_profile(name):
    """Block i's output feeds block i+1, one tensor each, at batch 1 (meta device);
    the profile's out_bytes are the shapes seen along the chain."""
    model, x = build_model(name, device="meta")
    assert isinstance(model, nn.Sequential) and x.shape[0] == 1
    p = get_profile(name)
    assert p.input_bytes == x.numel() * (4 if x.is_floating_point() else x.element_size())
    with torch.no_grad():
        for block, b in zip(model, p.blocks):
            x = block(x)
            assert isinstance(x, torch.Tensor) and x.shape[0] == 1
            assert b.out_bytes == x.numel() * 4
    assert len(model) == p.n_blocks


def test_cpu_build_is_seeded_and_runs():
    m1, x = build_model("tiny_cnn", seed=3)
    state = torch.random.get_rng_state()
    m2, _ = build_model("tiny_cnn", seed=3)
    assert torch.equal(state, torch.random.get_rng_state())            # global RNG untouched
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    with torch.no_grad():
        y = m1(torch.randn_like(x))
    assert y.shape == (1, 10)
    assert set(MODELS) == set(model_names())


def test_profiling_resnet50_on_meta_matches_the_store():
    """Profiling runs on the meta device (no weights) and gives the shipped profile.
    (Its speed is a bench figure: bench_cost.s profile_resnet50_warm_s.)"""
    model, x = build_model("resnet50", device="meta")
    p = profile_module(model, x, "resnet50")
    stored = get_profile("resnet50")
    assert [b.flops for b in p.blocks] == [b.flops for b in stored.blocks]
    assert [b.out_bytes for b in p.blocks] == [b.out_bytes for b in stored.blocks]


def test_profile_is_a_model_profile():
    p = get_profile("resnet18")
    assert isinstance(p, ModelProfile) and all(isinstance(b, Block) for b in p.blocks)
    assert p.boundary_bytes(0) == 3 * 224 * 224 * 4
