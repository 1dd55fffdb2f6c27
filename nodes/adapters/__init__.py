"""What the node files stand on: the adapters from the host's types and hooks onto `quant/`, `attention/` and
`sampling/` (loading, the attention override, sampling jobs, TeaCache's hooks, parallel runs, the run report)."""
