"""SkyReels-V2 sampling math in plain PyTorch (no ComfyUI imports): the flow sigma schedule, UniPC and Euler, and
Diffusion Forcing's per-frame plan and windows. Sample Video feeds it the host's model; tests, toy denoisers."""
