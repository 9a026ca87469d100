"""Diffusion machinery shared by the diffusion decoders and the latent score prior (STYLE: schedule, forward process,
backbone, loss and sampler kept apart). Backbones are ``net(x_t, t, cond)`` and never see the schedule."""

from decoders.diffusion.forward import ForwardProcess, Marginal
from decoders.diffusion.losses import DDPMLoss, DSMLoss, VDMLoss
from decoders.diffusion.parameterization import (
    PREDICTIONS,
    Backbone,
    Denoiser,
    Prediction,
    make_denoiser,
    target,
    to_eps,
    to_x0,
)
from decoders.diffusion.processes import DDPMProcess, DiffusionProcess, ScoreSDEProcess, VDMProcess
from decoders.diffusion.samplers import (
    DDIM,
    SAMPLERS,
    Ancestral,
    DPMSolverPP,
    EulerMaruyama,
    Sampler,
    langevin_step,
    time_grid,
)
from decoders.diffusion.schedules import CosineSchedule, LearnedLogSNR, LinearLogSNR, Schedule, ShiftedSchedule, VPSchedule

__all__ = [
    "DDIM", "PREDICTIONS", "SAMPLERS", "Ancestral", "DPMSolverPP", "Backbone", "CosineSchedule", "DDPMLoss", "DDPMProcess", "DSMLoss", "Denoiser",
    "DiffusionProcess", "EulerMaruyama", "ForwardProcess", "LearnedLogSNR", "LinearLogSNR", "Marginal", "Prediction", "Sampler",
    "Schedule", "ScoreSDEProcess", "ShiftedSchedule", "VDMLoss", "VDMProcess", "VPSchedule", "langevin_step", "make_denoiser", "target", "time_grid",
    "to_eps", "to_x0",
]
