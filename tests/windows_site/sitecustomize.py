"""Python imports this at start-up when this folder is on PYTHONPATH (the Windows-simulating host tests set it for
the ComfyUI they start): the host process then lacks what Windows lacks once it has imported itself."""
import windows_sim

windows_sim.apply_after_host_import()
