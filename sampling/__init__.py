"""SkyReels-V2 sampling math in plain PyTorch (no ComfyUI imports): the flow-matching sigma schedule, the flow
UniPC and Euler solvers, and Diffusion Forcing's per-frame timestep plan and window loop. The Sample Video node
feeds it the host's model; tests feed it toy denoisers."""
