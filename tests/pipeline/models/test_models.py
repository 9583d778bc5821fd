"""The model zoo against the paper: Table 6 parameter counts, Table 1 multiply-adds, shapes, shortcuts."""

import json
import os
import subprocess
import sys

import pytest
import torch

from pipeline.config import load_config
from pipeline.models import build, build_model, get_spec, list_models
from pipeline.models.blocks import BasicBlock, Bottleneck, Projection
from pipeline.models.complexity import count_params, measure

# Table 6, as the paper rounds them.
TABLE6_PARAMS_M = {20: "0.27", 32: "0.46", 44: "0.66", 56: "0.85", 110: "1.7", 1202: "19.4"}
# Table 1: multiply-adds of one 224x224 forward pass.
TABLE1_MACS = {"resnet18": 1.8e9, "resnet34": 3.6e9, "resnet50": 3.8e9, "resnet101": 7.6e9, "resnet152": 11.3e9}


def rounded_like_paper(params: int, digits_after_point: int) -> str:
    return f"{params / 1e6:.{digits_after_point}f}"


@pytest.mark.parametrize("depth, paper", TABLE6_PARAMS_M.items())
def test_cifar_params_match_table6(depth, paper):
    params = measure(get_spec(f"cifar_resnet{depth}")).params
    assert rounded_like_paper(params, len(paper.split(".")[1])) == paper


def test_resnet152_has_60_2m_params():
    assert rounded_like_paper(measure(get_spec("resnet152")).params, 1) == "60.2"


@pytest.mark.parametrize("name, paper", TABLE1_MACS.items())
def test_imagenet_macs_match_table1(name, paper):
    macs = measure(get_spec(name)).macs
    assert abs(macs - paper) / paper < 0.03, f"{name}: {macs / 1e9:.3f}G vs the paper's {paper / 1e9}G"


def test_v15_bottleneck_costs_more_than_the_paper_one():
    # Moving the stride to the 3x3 makes that conv run at full resolution: ~4.1 vs ~3.9 GMACs.
    from torch.utils.flop_counter import FlopCounterMode

    def macs(stride_on):
        with torch.device("meta"):
            net = build("resnet50", bottleneck_stride=stride_on)
            x = torch.empty(1, 3, 224, 224)
        with FlopCounterMode(display=False) as counter:
            net(x)
        return counter.get_total_flops() // 2

    assert macs("3x3") > macs("1x1") * 1.04


@pytest.mark.parametrize("spec", list_models(), ids=lambda s: s.name)
def test_forward_backward_on_cpu(spec):
    torch.manual_seed(0)
    net = build(spec.name)
    side = 64 if spec.family == "imagenet" else 32  # ImageNet nets are fully convolutional: 64 px is enough
    batch = 2
    x = torch.randn(batch, 3, side, side)
    out = net(x)
    assert out.shape == (batch, spec.num_classes)
    out.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert net.stages[0][0].conv1.weight.grad.abs().sum() > 0  # gradient reached the first block


@pytest.mark.parametrize("name", ["plain18", "plain34", "cifar_plain20", "cifar_plain56"])
def test_plain_nets_have_no_shortcut(name):
    blocks = list(build(name).blocks())
    assert blocks and all(b.shortcut is None for b in blocks)


def test_plain_forward_is_the_stack_without_addition():
    # A plain block's output must not depend on a shortcut path: zeroing its convs gives zero output.
    block = BasicBlock(16, 16, 1, shortcut=None).eval()
    torch.nn.init.zeros_(block.conv2.weight)
    assert block(torch.randn(1, 16, 8, 8)).abs().max() == 0
    residual = BasicBlock(16, 16, 1, shortcut="A").eval()
    torch.nn.init.zeros_(residual.conv2.weight)
    x = torch.randn(1, 16, 8, 8)
    assert torch.equal(residual(x), torch.relu(x))  # identity shortcut carries the input


@pytest.mark.parametrize("residual, plain", [("resnet18", "plain18"), ("resnet34", "plain34"),
                                             ("cifar_resnet20", "cifar_plain20"), ("cifar_resnet56", "cifar_plain56")])
def test_option_a_adds_no_parameters(residual, plain):
    assert count_params(build(residual, shortcut="A")) == count_params(build(plain))


def test_shortcut_options_b_and_c():
    a = count_params(build("resnet34", shortcut="A"))
    b_net, c_net = build("resnet34", shortcut="B"), build("resnet34", shortcut="C")
    b, c = count_params(b_net), count_params(c_net)
    assert a < b < c
    # B projects only where dimensions increase (3 stage transitions); C projects all 16 shortcuts.
    assert sum(isinstance(blk.shortcut, Projection) for blk in b_net.blocks()) == 3
    assert sum(isinstance(blk.shortcut, Projection) for blk in c_net.blocks()) == 16


def test_bottleneck_stride_placement():
    paper = next(b for b in build("resnet50").blocks() if b.conv1.stride == (2, 2))
    assert isinstance(paper, Bottleneck) and paper.conv2.stride == (1, 1)
    v15 = [b for b in build("resnet50", bottleneck_stride="3x3").blocks()]
    assert all(b.conv1.stride == (1, 1) for b in v15) and sum(b.conv2.stride == (2, 2) for b in v15) == 3


def test_zero_init_residual():
    net = build("resnet50", zero_init_residual=True)
    assert all(b.bn3.weight.abs().sum() == 0 for b in net.blocks())
    assert all(b.bn3.weight.abs().sum() > 0 for b in build("resnet50").blocks())


def test_he_init_std():
    conv = build("cifar_resnet20").stages[2][1].conv1  # 64 -> 64, 3x3: fan_out = 576
    assert abs(conv.weight.std().item() - (2 / 576) ** 0.5) < 0.004


def test_any_cifar_depth_builds_and_bad_depths_fail():
    assert len(list(build("cifar_resnet14").blocks())) == 6
    with pytest.raises(ValueError, match="6n\\+2"):
        build("cifar_resnet21")
    with pytest.raises(KeyError, match="unknown model"):
        build("resnet19")
    with pytest.raises(ValueError, match="plain net"):
        build("plain34", shortcut="B")


def test_resnet1202_runs_forward_backward_on_tiny_batch():
    net = build("cifar_resnet1202")
    assert len(list(net.blocks())) == 600
    out = net(torch.randn(1, 3, 32, 32))
    out.sum().backward()
    assert out.shape == (1, 10) and net.fc.weight.grad is not None


def test_build_from_config_section():
    cfg = load_config(None, ["model.name=resnet34", "model.shortcut=C", "model.num_classes=100"])
    net = build_model(cfg.model)
    assert net.fc.out_features == 100
    assert all(isinstance(b.shortcut, Projection) for b in net.blocks())


def test_cli_table_and_json(capsys, monkeypatch):
    # One compute thread: a pass of one image gains nothing from two, and two spin against a busy machine's load.
    run = lambda *a: subprocess.run([sys.executable, "-m", "pipeline.models", *a], capture_output=True, text=True,
                                    check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
    rows = json.loads(run("--json"))
    assert {r["name"] for r in rows} == {s.name for s in list_models()}
    assert all(set(r) == {"name", "depth", "params", "macs"} for r in rows)
    by_name = {r["name"]: r for r in rows}
    assert by_name["cifar_resnet1202"]["depth"] == 1202 and by_name["resnet152"]["params"] > 60e6
    # The table prints the same rows (counted once above: counting every model's mult-adds takes seconds). The
    # command's own name for model_table is replaced: it imported the function itself.
    import pipeline.models.__main__ as command

    monkeypatch.setattr(command, "model_table", lambda: rows)
    assert command.main([]) == 0
    table = capsys.readouterr().out
    assert "resnet152" in table and "60.19M" in table and "mult-adds" in table
