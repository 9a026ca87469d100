"""Diffusion machinery shared by the diffusion decoders and the latent score prior (STYLE: schedule, backbone,
loss, sampler kept apart). Backbones are ``net(x_t, t, cond)`` and never see the schedule."""

from decoders.diffusion.losses import DDPMLoss, DSMLoss, VDMLoss
from decoders.diffusion.parameterization import PREDICTIONS, Denoiser, Prediction, make_denoiser, target, to_eps, to_x0
from decoders.diffusion.processes import DDPMProcess, DiffusionProcess, ScoreSDEProcess, VDMProcess
from decoders.diffusion.samplers import ancestral_sample, ddim_sample, euler_maruyama_sample, time_grid
from decoders.diffusion.schedules import CosineSchedule, LearnedLogSNR, LinearLogSNR, Schedule, VPSchedule

__all__ = [
    "DDPMProcess", "DiffusionProcess", "ScoreSDEProcess", "VDMProcess",
    "CosineSchedule", "DDPMLoss", "DSMLoss", "VDMLoss", "ancestral_sample", "euler_maruyama_sample", "Denoiser", "LearnedLogSNR", "LinearLogSNR", "PREDICTIONS", "Prediction", "Schedule",
    "VPSchedule", "ddim_sample", "make_denoiser", "target", "time_grid", "to_eps", "to_x0",
]
