"""SkyReels-V2 sampling math in plain PyTorch (no ComfyUI imports): the flow sigma schedule, the UniPC and Euler
solvers, and Diffusion Forcing's per-frame plan and windows. Sample Video feeds it the host's model; tests, toys."""
