"""The multivae side of ``step_speed.py --multivae_python``: run inside a virtual environment holding multivae (which
imports torchvision, so it stays out of diffmvae's environment), it builds multivae's MoPoE from diffmvae's own
encoder and decoder classes with the weights and batches the benchmark wrote, then answers each line ``N`` on stdin
with the seconds ``N`` training steps (ELBO, backward, AdamW with PyTorch's defaults) took. Imports only torch,
multivae and diffmvae's ``encoders`` / ``decoders`` packages (which need nothing else); a torchvision that does not
load for the installed torch is replaced by an empty stand-in, which the MoPoE step never calls.

    python multivae_worker.py REPO_ROOT SETUP.pt
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import time
import types

import torch


class _Unavailable:
    """Stands for any torchvision name: callable (multivae evaluates ``ToTensor()`` as a default argument), never used."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, *args, **kwargs) -> "_Unavailable":
        return _Unavailable()


def _stand_in_name(attr: str) -> type[_Unavailable]:
    if attr.startswith("__"):  # __file__, __spec__ ...: what inspect and importlib look up on every module
        raise AttributeError(attr)
    return _Unavailable


class _StandIn(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``torchvision`` and its submodules as empty packages whose every name is :class:`_Unavailable`."""

    def find_spec(self, name, path=None, target=None):
        return importlib.machinery.ModuleSpec(name, self, is_package=True) if name.split(".")[0] == "torchvision" else None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _stand_in_name  # PEP 562: from torchvision.x import Anything
        return module

    def exec_module(self, module) -> None:
        pass


def stand_in_for_torchvision() -> None:
    """multivae imports torchvision at module level for its datasets, transforms and image grids, none of which the
    MoPoE step calls. Where torchvision's compiled ops do not load for the installed torch (``operator
    torchvision::nms does not exist``), a stand-in lets multivae import; the step runs the same code either way."""
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError) as err:
        for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        sys.meta_path.insert(0, _StandIn())
        print(f"torchvision does not load ({err}); multivae imports a stand-in", file=sys.stderr)


def main() -> None:
    root, setup_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, root)
    stand_in_for_torchvision()
    from multivae.data.datasets.base import MultimodalBaseDataset
    from multivae.models import MoPoE, MoPoEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder

    import decoders
    import encoders

    class Encoder(BaseEncoder):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> ModelOutput:
            mu, logvar = self.net(x)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class Decoder(BaseDecoder):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, z: torch.Tensor) -> ModelOutput:
            return ModelOutput(reconstruction=self.net.mean(z))

    setup = torch.load(setup_path, weights_only=True)
    torch.set_num_threads(setup["threads"])
    names = setup["modalities"]
    enc, dec = {}, {}
    for m in names:
        e = getattr(encoders, setup["encoder"]["class"])(**setup["encoder"]["args"])
        d = getattr(decoders, setup["decoder"]["class"])(**setup["decoder"]["args"])
        e.load_state_dict(setup["weights"][f"encoders.{m}"])
        d.load_state_dict(setup["weights"][f"decoders.{m}"])
        enc[m], dec[m] = Encoder(e), Decoder(d)
    config = MoPoEConfig(n_modalities=len(names), latent_dim=setup["latent_dim"], input_dims={m: tuple(setup["shape"]) for m in names},
                         decoders_dist={m: setup["likelihood"] for m in names},
                         decoder_dist_params={m: {"scale": setup["scale"]} for m in names}, beta=setup["beta"])
    model = MoPoE(config, encoders=enc, decoders=dec)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [MultimodalBaseDataset(data=b, labels=None) for b in setup["batches"]]
    i = 0
    print(f"ready {sum(p.numel() for p in model.parameters())}", flush=True)
    for line in sys.stdin:
        n = int(line)
        start = time.perf_counter()
        for _ in range(n):
            loss = model(batches[i % len(batches)]).loss
            i += 1
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        print(f"{time.perf_counter() - start:.6f}", flush=True)


if __name__ == "__main__":
    main()
