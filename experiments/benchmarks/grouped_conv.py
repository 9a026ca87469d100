"""Convolutions of M same-shaped experts as one grouped convolution, layer by layer, measured side by side in one run:

    python experiments/benchmarks/grouped_conv.py [--config experiments/polydigits/mopoe.yaml] [--rounds 5] [--steps 10]

Every convolution of the config's m0 encoder and decoder is found with its input shape (one forward pass on a
PolyDigits batch) and timed, forward and backward, three ways on the same inputs: M separate layers on B images each
(how the library runs its experts); one convolution with ``groups = M`` on the M inputs stacked along channels (the
grouped-convolution way to batch experts: the same weights and arithmetic); and one layer on all M x B images (the
most any batching could save). Prints milliseconds per layer (median over alternating rounds), the totals and the
ratios to the separate layers. Group norm batches the same way (``GroupNorm(M G, M C)`` over stacked channels); the
linear layers, which flatten each expert's features, would need a batched matmul and are left out.
"""

from __future__ import annotations

import argparse
import copy

import torch
from step_speed import side_by_side, timed
from step_time import build, read_config

from diffmvae.data import PolyDigits
from diffmvae.training.module import split_batch

CONVS = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)


def conv_inputs(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.nn.Module, torch.Size]]:
    """``(layer, input shape)`` of every convolution of the m0 encoder and decoder, in the order they run."""
    found: list[tuple[torch.nn.Module, torch.Size]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: found.append((mod, args[0].shape)))
             for part in (model.encoders["m0"], model.decoders["m0"]) for m in part.modules() if isinstance(m, CONVS)]
    with torch.no_grad():
        model.encoders["m0"](x)
        model.decoders["m0"].nll(torch.randn(x.shape[0], model.latent_dim), x)
    for h in hooks:
        h.remove()
    return found


def grouped(layers: list[torch.nn.Module]) -> torch.nn.Module:
    """One convolution with ``len(layers)`` times the groups holding every layer's weights: on the layers' inputs
    stacked along channels it gives their outputs stacked along channels."""
    first, m = layers[0], len(layers)
    args = dict(kernel_size=first.kernel_size, stride=first.stride, padding=first.padding, groups=m * first.groups,
                bias=first.bias is not None)
    if isinstance(first, torch.nn.ConvTranspose2d):
        args["output_padding"] = first.output_padding
    out = type(first)(m * first.in_channels, m * first.out_channels, **args)
    with torch.no_grad():  # both kinds keep their groups along the weight's first axis
        out.weight.copy_(torch.cat([layer.weight for layer in layers]))
        if out.bias is not None:
            out.bias.copy_(torch.cat([layer.bias for layer in layers]))
    return out


def layer_runs(layer: torch.nn.Module, shape: torch.Size, m: int, fmt: torch.memory_format) -> dict:
    batch, channels, height, width = shape
    separate = [copy.deepcopy(layer).to(memory_format=fmt) for _ in range(m)]
    inputs = [torch.randn(shape).contiguous(memory_format=fmt).requires_grad_() for _ in range(m)]
    group = grouped(separate).to(memory_format=fmt)
    stacked = torch.randn(batch, m * channels, height, width).contiguous(memory_format=fmt).requires_grad_()
    one = copy.deepcopy(layer).to(memory_format=fmt)
    all_images = torch.randn(m * batch, channels, height, width).contiguous(memory_format=fmt).requires_grad_()
    return {"separate": timed(lambda: sum(s(x).sum() for s, x in zip(separate, inputs))),
            "grouped": timed(lambda: group(stacked).sum()),
            "one layer on all": timed(lambda: one(all_images).sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/polydigits/mopoe.yaml")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--nchw", action="store_true", help="NCHW tensors (default: channels_last, the library's speed setting)")
    args = p.parse_args()
    config, batch_size, num = read_config(args.config)
    torch.manual_seed(0)
    model = build(config, num)
    ds = PolyDigits("train", num_modalities=num, seed=0)
    x, _ = split_batch(torch.utils.data.default_collate([ds[i] for i in range(batch_size)]), model.modalities)
    fmt = torch.contiguous_format if args.nchw else torch.channels_last
    totals = {"separate": 0.0, "grouped": 0.0, "one layer on all": 0.0}
    print(f"M = {num} experts x B = {batch_size} images, {'NCHW' if args.nchw else 'channels_last'}, forward + backward, "
          f"ms (median of {args.rounds} alternating rounds of {args.steps})", flush=True)
    for layer, shape in conv_inputs(model, x["m0"]):
        ms = side_by_side(layer_runs(layer, shape, num, fmt), args.rounds, args.steps)
        for k, v in ms.items():
            totals[k] += v
        print(f"{type(layer).__name__:16s} {layer.in_channels:3d} -> {layer.out_channels:3d} at {shape[-2]}x{shape[-1]}, "
              f"stride {layer.stride[0]}:  " + "   ".join(f"{k} {v:6.1f}" for k, v in ms.items())
              + f"   grouped / separate {ms['grouped'] / ms['separate']:.2f}", flush=True)
    print("total:  " + "   ".join(f"{k} {v:6.1f}" for k, v in totals.items()))
    print(f"grouped / separate = {totals['grouped'] / totals['separate']:.2f}   "
          f"one layer on all / separate = {totals['one layer on all'] / totals['separate']:.2f}")


if __name__ == "__main__":
    main()
