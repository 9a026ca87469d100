"""The multivae side of ``step_speed.py --multivae_python``: run inside a virtual environment holding multivae (which
imports torchvision, so it stays out of diffmvae's environment), it builds multivae's MoPoE from diffmvae's own
encoder and decoder classes with the weights and batches the benchmark wrote, then answers each line ``N`` on stdin
with the seconds ``N`` training steps (ELBO, backward, AdamW with PyTorch's defaults) took. Imports only torch,
multivae and diffmvae's ``encoders`` / ``decoders`` packages (which need nothing else).

    python multivae_worker.py REPO_ROOT SETUP.pt
"""

from __future__ import annotations

import sys
import time

import torch


def main() -> None:
    root, setup_path = sys.argv[1], sys.argv[2]
    sys.path.insert(0, root)
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
